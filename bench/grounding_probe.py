# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""
How well the grounding map is learnt, with and without relabelled queries: a probe.

    python bench/grounding_probe.py --data runs/data --test-data runs/heldout \
        --relabel off on --steps 1500 --checkpoint vlit_ros/checkpoints/default

Trains a fresh `cpu`-preset vision encoder, projector and grounding head (nothing else) on
the grounding loss of expert goto frames alone, without (`off`) and with (`on`) the loss of
each frame's relabelled query (`datasets.grounding_queries`), with the same data, seed,
steps and batch; also scores existing checkpoints. Scores on held-out frames (the goto
frames of `--test-data`, scenes the training data does not have, or else the last
`--held-out` share): on frames where the named object covers a patch, how often the map's
highest patch is on it (`top1`); on frames where it covers none, how often some patch is
above 0.5 (`false_alarm`); and the same for every held-out frame's relabelled query, which
asks about any object of the scene, near or far. Prints a table; `--json` writes it.
"""

import argparse
import json
from pathlib import Path
import time

import numpy as np
import torch
import torch.nn.functional as F

from vlit_ros.core.model.checkpoint import load_checkpoint
from vlit_ros.core.model.fusion import VisionLanguageModel
from vlit_ros.sim.tasks import FAMILIES
from vlit_ros.training.datasets import grounding_labels, TrajectorySet
from vlit_ros.training.presets import model_config
from vlit_ros.training.shards import iter_shards

# Share of a patch the target must cover for a frame to count as showing it.
COVERED = 0.3


def queries(data, rows, relabelled: bool):
    """Return the texts and boxes of frames `rows`: their instructions' or relabelled."""
    if relabelled:
        return [data.query_texts[i] for i in data.query_text_index[rows]], data.query_box[rows]
    return [data.texts[i] for i in data.text_index[rows]], data.target_box[rows]


def score(vlm, data, rows, relabelled: bool = False, batch: int = 256) -> dict:
    """Return top-1 hit rate and false-alarm rate of the grounding map on frames `rows`."""
    hits = shown = alarms = empty = 0
    vlm.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            texts, boxes = queries(data, chunk, relabelled)
            probabilities = torch.sigmoid(
                vlm.grounding_logits(torch.from_numpy(data.arrays['image'][chunk]), texts)).numpy()
            labels = grounding_labels(boxes, vlm.vision.grid)
            visible = labels.max(1) >= COVERED
            best = probabilities.argmax(1)
            hits += int((labels[np.arange(len(chunk)), best] > 0)[visible].sum())
            shown += int(visible.sum())
            none = labels.max(1) == 0
            alarms += int((probabilities.max(1) > 0.5)[none].sum())
            empty += int(none.sum())
    vlm.train()
    return {'top1': hits / max(shown, 1), 'false_alarm': alarms / max(empty, 1),
            'frames_shown': shown, 'frames_empty': empty}


def scores(vlm, data, rows) -> dict:
    """Return the scores on goto frames' instructions and on all frames' relabelled queries."""
    result = score(vlm, data, rows['goto'])
    result.update({f'query_{k}': v for k, v in score(vlm, data, rows['all'], True).items()})
    return result


def grounding_loss(vlm, images, texts, boxes) -> torch.Tensor:
    """Return the grounding loss (BCE summed over patches, mean over frames)."""
    logits = vlm.grounding_logits(torch.from_numpy(images), texts)
    labels = torch.from_numpy(grounding_labels(boxes, vlm.vision.grid))
    return F.binary_cross_entropy_with_logits(logits, labels, reduction='sum') / len(images)


def train_probe(relabel: bool, data, train_rows, test_rows, args) -> dict:
    """Train a fresh encoder on the grounding loss (and the queries'); return its scores."""
    torch.manual_seed(args.seed)
    vlm = VisionLanguageModel(model_config('cpu'))
    parameters = [p for module in (vlm.vision, vlm.projector, vlm.fusion.context_norm,
                                   vlm.fusion.grounding) for p in module.parameters()
                  if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.01)
    rng = np.random.default_rng(args.seed)
    losses, started = [], time.perf_counter()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group['lr'] = args.lr * min(1.0, (step + 1) / 50)
        rows = np.sort(rng.choice(train_rows, args.batch_size, replace=False))
        texts, boxes = queries(data, rows, False)
        images = data.arrays['image'][rows]
        loss = grounding_loss(vlm, images, texts, boxes)
        if relabel:
            loss = loss + grounding_loss(vlm, images, *queries(data, rows, True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 100 == 0:
            which = 'with' if relabel else 'without'
            print(f'{which} queries: step {step + 1} loss {np.mean(losses[-100:]):.3f} '
                  f'({time.perf_counter() - started:.0f} s)', flush=True)
    seconds = time.perf_counter() - started
    result = scores(vlm, data, test_rows)
    result.update(name='trained ' + ('with' if relabel else 'without') + ' relabelled queries',
                  seconds=round(seconds, 1), final_loss=float(np.mean(losses[-100:])),
                  vision_parameters=sum(p.numel() for p in vlm.vision.parameters()))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--data', required=True, help='gen-data directory')
    parser.add_argument('--relabel', nargs='*', choices=('off', 'on'), default=['off', 'on'],
                        help='train without (off) and / or with (on) the relabelled '
                             'grounding queries (default: both; none: only --checkpoint)')
    parser.add_argument('--steps', type=int, default=600)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--held-out', type=float, default=0.2,
                        help='share of the goto frames (the last) held out for scoring, '
                             'without --test-data')
    parser.add_argument('--test-data', default=None, metavar='DIR',
                        help='score on the goto frames of this gen-data directory instead '
                             '(scenes no checkpoint trained on)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--checkpoint', action='append', default=[], metavar='DIR',
                        help='also score the grounding map of the checkpoint in DIR on the '
                             'held-out frames (repeatable)')
    parser.add_argument('--json', default=None, metavar='OUT.json')
    args = parser.parse_args(argv)
    training_frames = 0

    def shards():
        # The training directory first, counting its frames; the test directory's come last.
        nonlocal training_frames
        for arrays, meta in iter_shards(Path(args.data), 'trajectories'):
            training_frames += arrays['step'].shape[0]
            yield arrays, meta
        if args.test_data:
            yield from iter_shards(Path(args.test_data), 'trajectories')
    data = TrajectorySet.from_shards(shards(), FAMILIES, start_action=0)
    frames = np.arange(len(data))
    split = training_frames if args.test_data else int(len(data) * (1.0 - args.held_out))
    goto = data.family == data.families.index('goto')
    train_rows = frames[:split][goto[:split]]
    test_rows = {'goto': frames[split:][goto[split:]], 'all': frames[split:]}
    print(f"{len(train_rows)} training goto frames; {len(test_rows['goto'])} held-out goto "
          f"frames, {len(test_rows['all'])} held-out frames of all families")
    results = []
    for path in args.checkpoint:
        vlm = load_checkpoint(path).vlm
        result = scores(vlm, data, test_rows)
        result.update(name=f'checkpoint {path}', seconds=float('nan'),
                      final_loss=float('nan'))
        results.append(result)
    results += [train_probe(relabel, data, train_rows, test_rows, args)
                for relabel in (value == 'on' for value in args.relabel)]
    print('| grounding map | top-1 on target | false alarms | relabelled queries: top-1 | '
          'false alarms | training s | final loss |')
    print('| --- | --- | --- | --- | --- | --- | --- |')
    for r in results:
        print(f"| {r['name']} | {100 * r['top1']:.1f}% of {r['frames_shown']} | "
              f"{100 * r['false_alarm']:.1f}% of {r['frames_empty']} | "
              f"{100 * r['query_top1']:.1f}% of {r['query_frames_shown']} | "
              f"{100 * r['query_false_alarm']:.1f}% of {r['query_frames_empty']} | "
              f"{r['seconds']:.0f} | {r['final_loss']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
