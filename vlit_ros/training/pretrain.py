"""
`vlit-ros pretrain`: vision-language alignment, L = L_MLM + L_ITM + L_VLM.

Stage 1 of training (DESIGN.md §4). Image-caption pairs come from gen-data's caption shards
(simulator views) and/or Visual Genome converted by `gen-data --visual-genome`; each pair
has a hard negative caption for image-text matching. MiniLM, the default text encoder,
stays frozen; the built-in encoder (`--text-encoder builtin`, which the shipped checkpoint
uses) starts from random weights and trains here too. The vision encoder, projector, fusion
and pretraining heads learn. A slice of the views is held out and scored at the end:
image-text matching accuracy, caption-vs-hard-negative preference, retrieval and
masked-word accuracy, drawn next to the loss curves in `report.png`.

Runs under `torchrun` with DDP (gloo on CPU, NCCL on CUDA); resumes from
`OUT/training_state/`.
"""

import argparse
from pathlib import Path
import time
from typing import Dict

import numpy as np
import torch

from vlit_ros.core.model import load_weights_from_bytes, PretrainingModel, save_checkpoint
from vlit_ros.core.model.checkpoint import WEIGHTS_FILE
from vlit_ros.training import loop
from vlit_ros.training.datasets import CaptionSet
from vlit_ros.training.presets import (add_conv_stem_argument, model_config, PRESETS,
                                       TEXT_ENCODERS)
from vlit_ros.training.report import write_report
from vlit_ros.training.shards import write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--data', action='append', required=True, metavar='DIR',
                        help='dataset directory with caption shards: gen-data output or '
                             'converted Visual Genome (repeatable)')
    parser.add_argument('--preset', choices=PRESETS, default='cpu',
                        help='model size (default: cpu)')
    parser.add_argument('--text-encoder', choices=TEXT_ENCODERS, default='minilm',
                        help='text encoder (default: minilm, frozen)')
    add_conv_stem_argument(parser)
    loop.add_common_arguments(parser, steps=600, batch_size=48, lr=5e-4)
    parser.add_argument('--warmup', type=int, default=50, help='warm-up steps (default: 50)')
    parser.add_argument('--held-out', type=int, default=256,
                        help='views held out for the closing evaluation (default: 256)')


def evaluate_alignment(model: PretrainingModel, images: np.ndarray, captions, negatives,
                       batch_size: int = 64) -> Dict[str, float]:
    """
    Score held-out pairs: matching accuracy, caption-over-negative preference, retrieval.

    Retrieval counts an image's best caption in its batch as right when it is the image's
    own caption text (synthetic captions repeat).
    """
    model.eval()
    totals = {'ITM accuracy': 0.0, 'caption > hard negative': 0.0, 'retrieval R@1': 0.0,
              'masked words': 0.0}
    count = 0
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        for start in range(0, len(captions), batch_size):
            rows = slice(start, start + batch_size)
            batch_captions = list(captions[rows])
            output, _ = model({'image': images[rows], 'text': batch_captions,
                               'negative_text': list(negatives[rows])})
            vlm = model.vlm
            tokens = vlm.image_tokens(vlm.preprocess(torch.from_numpy(images[rows])))
            positive = model.itm_logits(tokens, vlm.encode_text(batch_captions))
            negative = model.itm_logits(tokens, vlm.encode_text(list(negatives[rows])))
            best = output.similarity.argmax(1).tolist()
            size = len(batch_captions)
            totals['ITM accuracy'] += size * float(
                ((output.itm_logits > 0).float() == output.itm_labels).float().mean())
            totals['caption > hard negative'] += float((positive > negative).float().sum())
            totals['retrieval R@1'] += sum(batch_captions[j] == batch_captions[i]
                                           for i, j in enumerate(best))
            totals['masked words'] += size * float(output.mlm_accuracy)
            count += size
    model.train()
    return {name: value / count for name, value in totals.items()}


def run(args: argparse.Namespace) -> int:
    return loop.run_stage('pretrain', args, _run)


def _run(args, context: loop.DistributedContext) -> int:
    out = Path(args.out)
    started = time.perf_counter()
    model = PretrainingModel(model_config(args.preset, args.text_encoder,
                                          args.conv_stem)).to(context.device)
    size = (model.config.vision.image_height, model.config.vision.image_width)
    data = CaptionSet.load([Path(d) for d in args.data], size=size)
    held_out = min(args.held_out, len(data) // 5)
    train_count = len(data) - held_out
    if context.is_main:
        print(f'pretraining data: {train_count} pairs for training, {held_out} held out')

    def loss_fn(m, step):
        rows = loop.batch_indices(train_count, args.batch_size, step, args.seed,
                                  context).numpy()
        output, loss = m({'image': data.images[rows],
                          'text': [data.captions[i] for i in rows],
                          'negative_text': [data.negatives[i] for i in rows]})
        return {'loss': loss, 'loss_mlm': output.mlm_loss.detach(),
                'loss_itm': output.itm_loss.detach(), 'loss_itc': output.itc_loss.detach(),
                'mlm_accuracy': output.mlm_accuracy}

    trainer = loop.Trainer(model, loss_fn, lambda d: save_checkpoint(model, d), out, context,
                           'pretrain', progress=not args.quiet)
    if trainer.resume():
        load_weights_from_bytes(model, (out / WEIGHTS_FILE).read_bytes(), str(out))
        if context.is_main:
            print(f'resuming {out} at step {trainer.step}')
    trainer.train(loop.LoopConfig(args.steps, args.lr, args.warmup, 0, args.steps,
                                  log_every=args.log_every,
                                  checkpoint_every=args.checkpoint_every))
    trainer.checkpoint()
    trainer.close()
    if context.is_main and held_out:
        scores = evaluate_alignment(model, data.images[train_count:],
                                    data.captions[train_count:], data.negatives[train_count:])
        seconds = time.perf_counter() - started
        write_report(out / 'report.png', trainer.history, f'pretrain: {out.name}', scores,
                     f'held-out pairs: {held_out}')
        write_json(out / 'training.json', {
            'stage': 'pretrain', 'steps': trainer.step, 'seconds_this_run': round(seconds, 1),
            'pairs': train_count, 'held_out': held_out, 'evaluation': scores,
            'args': vars(args)})
        print('held-out: ' + ', '.join(f'{k} {100 * v:.1f}%' for k, v in scores.items()))
        print(f'wrote {out} (checkpoint, report.png, training.json) in {seconds / 60:.1f} min')
    return 0
