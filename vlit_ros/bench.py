"""
`vlit-ros bench`: latency of each model stage at batch 1 and a larger batch.

Stages: image preprocessing (uint8 -> normalised float), vision (ViT or tower), fusion
(projector + cross-attention), executor (MLP + softmax), and the whole per-frame model as
the follower runs it (`ModelPolicy.act_batch` with the instruction cached: numpy frames
and odometry in, action names out). Instruction encoding is timed separately, once per
instruction with the cache cleared, since it runs once per instruction and not per frame.

Figures are the median and 95th percentile over warm iterations (the device synchronised
around each). Each stage row times that stage alone in a loop, with only its own weights
going through the caches; the whole frame streams every weight once per frame, so on a CPU
whose cache other processes share it takes longer than the sum of the stage rows.

Without `--checkpoint` the default config is randomly initialised (latency does not depend
on the weights). On CUDA, `--compile` and `--cuda-graph` apply to the whole-frame path;
the stage rows are eager (with bf16 autocast unless `--precision fp32`).

CPU threads: one intra-op thread by default (`--threads N` for more). At batch 1 the tensors
are too small for a second thread to pay off, and whenever another process runs on the
cores, each parallel region waits for a descheduled thread: on the shared 2-core machine,
two threads made batch 32 seven times slower than one.

Peak memory: on CUDA, `torch.cuda.max_memory_allocated` during the whole-frame loop (model
weights included); on CPU, the resident-set growth during that loop over the RSS before it.
"""

import argparse
import itertools
import json
import os
from pathlib import Path
import platform
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

# Instructions of every family, for the text-encoding figure and for batched frames.
INSTRUCTIONS = (
    'go to the red cube',
    'head over to the small blue sphere next to the wall',
    'turn left ninety degrees',
    'spin around',
    'move forward two meters',
    'back up half a meter please',
    'stop',
    'drive to the yellow cylinder and stop in front of it',
)
STAGES = ('preprocess', 'vision', 'fusion', 'executor', 'frame')
STAGE_HELP = {
    'preprocess': 'image preprocessing',
    'vision': 'vision encoder',
    'fusion': 'projector + fusion',
    'executor': 'executor + softmax',
    'frame': 'whole per-frame model',
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--checkpoint', default=None, metavar='DIR',
                        help='model checkpoint (default: randomly initialised default model)')
    parser.add_argument('--device', default='cpu',
                        help='torch device: cpu, cuda or cuda:N (default: cpu)')
    parser.add_argument('--batch', type=int, default=32,
                        help='the larger batch size, besides batch 1 (default: 32)')
    parser.add_argument('--iterations', type=int, default=200,
                        help='timed iterations per stage (default: 200)')
    parser.add_argument('--warmup', type=int, default=100,
                        help='untimed iterations before timing (default: 100; on CPU the '
                             'first ~100 calls were measurably slower than later ones)')
    parser.add_argument('--threads', type=int, default=1,
                        help='CPU intra-op threads (default: 1)')
    parser.add_argument('--precision', choices=('auto', 'fp32', 'bf16'), default='auto',
                        help='auto: bf16 autocast on CUDA, fp32 on CPU (default: auto)')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the per-frame path (CUDA only)')
    parser.add_argument('--cuda-graph', action='store_true',
                        help='replay the per-frame path as a CUDA graph (CUDA only)')
    parser.add_argument('--seed', type=int, default=0, help='seed of weights and inputs')
    parser.add_argument('--json', default=None, metavar='OUT.json', help='write results here')


def _percentiles(samples: List[float]) -> Dict[str, float]:
    values = np.asarray(samples) * 1e3
    return {'median_ms': round(float(np.median(values)), 4),
            'p95_ms': round(float(np.percentile(values, 95)), 4),
            'mean_ms': round(float(values.mean()), 4)}


def _time(fn: Callable[[], object], warmup: int, iterations: int,
          synchronize: Callable[[], None]) -> Dict[str, float]:
    for _ in range(warmup):
        fn()
    synchronize()
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        fn()
        synchronize()
        samples.append(time.perf_counter() - started)
    return _percentiles(samples)


def _cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as stream:
            for line in stream:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def _rss_mb() -> Optional[float]:
    try:
        with open('/proc/self/statm') as stream:
            pages = int(stream.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf('SC_PAGE_SIZE') / 1e6


def _reset_peak_rss() -> bool:
    # Writing 5 to clear_refs resets the kernel's peak-RSS mark (VmHWM) for this process.
    try:
        with open('/proc/self/clear_refs', 'w') as stream:
            stream.write('5')
        return True
    except OSError:
        return False


def _peak_rss_mb() -> Optional[float]:
    try:
        with open('/proc/self/status') as stream:
            for line in stream:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1e3 / 1e6
    except (OSError, ValueError):
        return None
    return None


class _Observation:
    """The follower's observation layout: image, odom (x, y, yaw, v, w), t."""

    __slots__ = ('image', 'odom', 't')

    def __init__(self, image, odom, t):
        self.image = image
        self.odom = odom
        self.t = t


def _parameter_counts(model) -> Dict[str, int]:
    vlm = model.vlm
    parts = {'vision': vlm.vision, 'text': vlm.text, 'projector': vlm.projector,
             'fusion': vlm.fusion, 'image_alignment': vlm.image_alignment,
             'executor': model.executor}
    return {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}


def _time_frame(policy, frames: np.ndarray, instructions: List[str],
                args: argparse.Namespace, synchronize: Callable[[], None]):
    """Time `act_batch` as the follower calls it; return (figures, peak memory MB or None)."""
    import torch
    device = policy.runner.device
    observations = [_Observation(frame, (0.5, 0.1, 0.2, 0.3, 0.1), 1.5) for frame in frames]
    policy.reset_batch(instructions)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _rss_mb()
    peak_reset = _reset_peak_rss()
    figures = _time(lambda: policy.act_batch(observations), args.warmup, args.iterations,
                    synchronize)
    if device.type == 'cuda':
        return figures, torch.cuda.max_memory_allocated(device) / 1e6
    peak = _peak_rss_mb() if peak_reset else None
    if peak is None or rss_before is None:
        return figures, None
    return figures, max(0.0, peak - rss_before)


def _time_stages(policy, frames: np.ndarray, instructions: List[str],
                 args: argparse.Namespace, synchronize: Callable[[], None]) -> Dict[str, dict]:
    """Time each stage on its own, on inputs the previous stage produced."""
    import torch
    model, runner = policy.model, policy.runner
    device = runner.device
    text = model.vlm.encode_instructions(instructions, pad_to=runner.text_length)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=runner.precision == 'bf16')
    with torch.inference_mode(), autocast:
        images = torch.from_numpy(frames).to(device)
        pixels = model.vlm.preprocess(images)
        vision_tokens = model.vlm.vision(pixels)
        fused = model.vlm.fuse(model.vlm.projector(vision_tokens), text)
        odometry = torch.zeros((len(frames), model.executor.odometry_width), device=device)
        prev = torch.zeros(len(frames), dtype=torch.long, device=device)

        def executor():
            return torch.softmax(model.executor(fused, odometry, prev)[0].logits.float(), -1)

        timed = {
            'preprocess': lambda: model.vlm.preprocess(images),
            'vision': lambda: model.vlm.vision(pixels),
            'fusion': lambda: model.vlm.fuse(model.vlm.projector(vision_tokens), text),
            'executor': executor,
        }
        return {name: _time(fn, args.warmup, args.iterations, synchronize)
                for name, fn in timed.items()}


def _fail(message: str) -> int:
    print(f'vlit-ros bench: {message}', file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    import torch
    threads = torch.get_num_threads()
    try:
        return _bench(args)
    finally:
        # The thread count is process-wide; callers in the same process get theirs back.
        torch.set_num_threads(threads)


def _bench(args: argparse.Namespace) -> int:
    import torch

    from vlit_ros.core.model import (load_checkpoint, ModelConfig, shipped_parameter_count,
                                     VLITModel, weights_to_bytes)
    from vlit_ros.core.policy import ModelPolicy

    for name in ('batch', 'iterations'):
        if getattr(args, name) < 1:
            return _fail(f'--{name} must be at least 1')
    if args.warmup < 0:
        return _fail('--warmup must not be negative')
    if args.threads < 1:
        return _fail('--threads must be at least 1')
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        return _fail(f'bad --device {args.device!r}: {exc}')
    if device.type not in ('cpu', 'cuda'):
        return _fail(f'--device must be cpu or cuda, got {args.device!r}')
    if device.type == 'cuda' and not torch.cuda.is_available():
        return _fail('--device cuda, but CUDA is not available (no GPU, or a CPU build of '
                     'torch)')

    torch.manual_seed(args.seed)
    rss_before_model = _rss_mb()
    if args.checkpoint:
        try:
            model = load_checkpoint(args.checkpoint)
        except ValueError as exc:
            return _fail(str(exc))
        if not isinstance(model, VLITModel):
            return _fail(f'{args.checkpoint} holds a {model.architecture}; bench times the '
                         f'instruction-following model ({VLITModel.architecture})')
    else:
        model = VLITModel(ModelConfig())
    try:
        policy = ModelPolicy(model, device, precision=args.precision,
                             compile_model=args.compile, cuda_graph=args.cuda_graph)
    except ValueError as exc:
        return _fail(str(exc))
    model = policy.model
    runner = policy.runner
    rss_after_model = _rss_mb()
    on_cuda = device.type == 'cuda'

    def synchronize():
        if on_cuda:
            torch.cuda.synchronize(device)

    counts = _parameter_counts(model)
    weights_mb = len(weights_to_bytes(model)) / 1e6
    result = {
        'command': 'bench',
        'device': str(device),
        'device_name': torch.cuda.get_device_name(device) if on_cuda else _cpu_name(),
        'cpu_cores': os.cpu_count(),
        'torch_version': torch.__version__,
        'precision': runner.precision,
        'compile': args.compile,
        'cuda_graph': args.cuda_graph,
        'checkpoint': args.checkpoint,
        'iterations': args.iterations,
        'warmup': args.warmup,
        'config': model.config.to_dict(),
        'parameters': counts,
        'shipped_parameters': shipped_parameter_count(model),
        'shipped_weights_mb': round(weights_mb, 3),
        'text_frozen_not_shipped': model.vlm.text.weights_referenced,
        'model_rss_mb': None if rss_before_model is None or rss_after_model is None
        else round(rss_after_model - rss_before_model, 1),
        'memory_kind': 'cuda max_memory_allocated' if on_cuda else 'cpu rss growth',
        'batches': [],
    }

    if not on_cuda:
        torch.set_num_threads(args.threads)
    # Instruction encoding, once per instruction: the cache is cleared before each.
    rotation = itertools.cycle(INSTRUCTIONS)

    def encode_one():
        model.vlm.clear_text_cache()
        model.vlm.encode_instructions([next(rotation)], pad_to=runner.text_length)

    result['text_encoding'] = _time(encode_one, args.warmup, args.iterations, synchronize)
    result['text_encoding']['threads'] = torch.get_num_threads()

    rng = np.random.default_rng(args.seed)
    vision_config = model.config.vision
    for batch in sorted({1, args.batch}):
        frames = rng.integers(0, 256, (batch, vision_config.image_height,
                                       vision_config.image_width, 3), dtype=np.uint8)
        instructions = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(batch)]
        # The whole frame first: the stage loops would leave their memory in the heap.
        frame, peak_mb = _time_frame(policy, frames, instructions, args, synchronize)
        stages = _time_stages(policy, frames, instructions, args, synchronize)
        stages['frame'] = frame
        result['batches'].append({
            'batch': batch,
            'threads': torch.get_num_threads(),
            'stages': stages,
            'frame_per_item_ms': round(frame['median_ms'] / batch, 4),
            'peak_memory_mb': None if peak_mb is None else round(peak_mb, 2),
        })

    _print_table(result)
    if args.json:
        path = Path(args.json)
        if path.parent != Path(''):
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + '\n')
        print(f'wrote {path}')
    return 0


def _print_table(result: dict) -> None:
    mode = ', '.join([result['precision']] + (['torch.compile'] if result['compile'] else []) +
                     (['CUDA graph'] if result['cuda_graph'] else []))
    print(f'vlit-ros bench: {result["device"]} ({result["device_name"]}), '
          f'torch {result["torch_version"]}, {mode}')
    frozen = ' (the frozen text encoder is referenced, not shipped)' \
        if result['text_frozen_not_shipped'] else ''
    total = sum(result['parameters'].values())
    print(f'parameters: {total / 1e6:.2f} M in all, {result["shipped_parameters"] / 1e6:.2f} M '
          f'shipped = {result["shipped_weights_mb"]:.1f} MB{frozen}')
    text = result['text_encoding']
    print(f'instruction encoding (once per instruction, {text["threads"]} thread(s)): '
          f'median {text["median_ms"]:.2f} ms, p95 {text["p95_ms"]:.2f} ms\n')
    header = f'{"stage":<24}' + ''.join(
        f'{"batch " + str(b["batch"]) + " (" + str(b["threads"]) + " thr)":>26}'
        for b in result['batches'])
    print(header)
    print(f'{"":<24}' + ''.join(f'{"median / p95 ms":>26}' for _ in result['batches']))
    for stage in STAGES:
        cells = ''.join(f'{b["stages"][stage]["median_ms"]:>14.2f} / '
                        f'{b["stages"][stage]["p95_ms"]:<9.2f}' for b in result['batches'])
        print(f'{STAGE_HELP[stage]:<24}{cells}')
    print(f'{"per item (frame)":<24}' +
          ''.join(f'{b["frame_per_item_ms"]:>14.3f}{"":<12}' for b in result['batches']))
    print(f'{"peak memory (MB)":<24}' + ''.join(
        f'{"n/a" if b["peak_memory_mb"] is None else format(b["peak_memory_mb"], ".1f"):>14}'
        f'{"":<12}' for b in result['batches']) + f'  ({result["memory_kind"]})')
