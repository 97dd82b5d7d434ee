# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""
The grounding map by target distance: how far away does it still find the named object.

    python bench/grounding_by_distance.py --data runs/data --frames 3000
    python bench/grounding_by_distance.py --data runs/data --checkpoint runs/x/polish
    python bench/grounding_by_distance.py --data runs/data --zoom-map   # + a 2x centre zoom
    python bench/grounding_by_distance.py --data runs/dagger_data --actions   # + the executor

Draws goto frames of the expert trajectories in a gen-data directory (seeded), runs the
checkpoint's grounding map on each with its instruction, and reports per distance band of
the target: how often the map's highest probability on a patch the target touches is 0.5 or
more ("found"), its median there, how often that is the highest probability of the whole
map ("highest on it": the map points at the target, however unsure), and how often a patch
the target does not touch is at 0.5 or more ("false alarm"); then, on frames without the
target in view, the false alarms and the median of the map's highest probability. The
goto diagnostics (`goto_diagnostics.py`) judge whole rollouts; this tells whether a failure
to go for a far target starts in the map. `--zoom-map` scores the map merged with a 2x
zoom of the image centre, as `vlit-ros eval --zoom-map` acts on it (`core.model.zoom`).
`--actions` also runs the whole policy on the same frames and reports how often its greedy
action is the expert's label, by target distance and, with the target out of view, by the
time since the instruction (on a DAgger round's frames: the learner's own states).
"""

import argparse
import json
from pathlib import Path
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from vlit_ros.core.model import VLITModel
from vlit_ros.policies import load_grounding_model
from vlit_ros.sim.tasks import FAMILIES
from vlit_ros.training.datasets import AUXILIARY_TARGETS, grounding_labels, TrajectorySet

# Time bands since the instruction (s) for frames without the target in view: [low, high).
TIME_BANDS = ((0.0, 3.0), (3.0, 8.0), (8.0, 15.0), (15.0, 41.0))
# Distance bands of the target (m): [low, high).
BANDS = ((0.0, 1.0), (1.0, 1.5), (1.5, 2.0), (2.0, 2.5), (2.5, 3.0), (3.0, 4.0), (4.0, 10.0))
FOUND = 0.5
BATCH = 100


def map_probabilities(model: VLITModel, data: TrajectorySet, rows: np.ndarray,
                      progress: bool = True, zoom_map: bool = False, actions: bool = False
                      ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """
    Return the grounding map's probabilities (frames, patches) of rows of `data`, and None.

    With `actions`, the whole policy runs on each frame as it acts (`frame_forward`, which
    gives the map too), and the second value is its greedy action index per frame.
    """
    arrays = data.arrays
    maps, chosen = [], []
    with torch.no_grad():
        for start in tqdm(range(0, len(rows), BATCH), desc='frames', unit='batch',
                          disable=not progress, dynamic_ncols=True):
            batch = rows[start:start + BATCH]
            images = torch.from_numpy(arrays['image'][batch])
            texts = [data.texts[i] for i in data.text_index[batch]]
            if not actions:
                logits = model.vlm.grounding_logits(images, texts, zoom=zoom_map)
                maps.append(torch.sigmoid(logits.float()).numpy())
                continue
            odometry = model.batch_odometry({'odom': arrays['odom'][batch],
                                             't': arrays['t'][batch],
                                             'yaw_total': arrays['yaw_total'][batch]})
            output, probabilities = model.frame_forward(
                images, model.vlm.encode_instructions(texts), odometry,
                torch.from_numpy(data.prev_action[batch]).long(), zoom=zoom_map)
            maps.append(probabilities.float().numpy())
            chosen.append(output.logits.argmax(-1).numpy())
    return np.concatenate(maps), np.concatenate(chosen) if actions else None


def agreement(actions: np.ndarray, labels: np.ndarray, distances: np.ndarray,
              times: np.ndarray) -> Dict:
    """Share of frames whose action is the label: per target distance, and out of view per time."""
    same = actions == labels
    shown = np.isfinite(distances)

    def share(rows):
        count = int(rows.sum())
        return {'frames': count, 'agreement': _share(same[rows]) if count else None}

    return {'all': share(np.ones(len(same), bool)),
            'by_distance': [{'from_m': low, 'to_m': high,
                             **share(shown & (distances >= low) & (distances < high))}
                            for low, high in BANDS],
            'out_of_view_by_time': [{'from_s': low, 'to_s': high,
                                     **share(~shown & (times >= low) & (times < high))}
                                    for low, high in TIME_BANDS]}


def format_agreement(summary: Dict) -> str:
    def cell(part: Dict) -> str:
        value = part['agreement']
        return f'{part["frames"]} | ' + ('-' if value is None else f'{100.0 * value:.0f}%')

    lines = ['', "greedy action = the expert's label", '', '| frames of | frames | agreement |',
             '| --- | --- | --- |', f'| all | {cell(summary["all"])} |']
    lines += [f'| target {b["from_m"]:g}-{b["to_m"]:g} m | {cell(b)} |'
              for b in summary['by_distance']]
    lines += [f'| out of view, {b["from_s"]:g}-{b["to_s"]:g} s | {cell(b)} |'
              for b in summary['out_of_view_by_time']]
    return '\n'.join(lines)


def by_distance(probabilities: np.ndarray, boxes: np.ndarray, distances: np.ndarray,
                grid) -> Dict:
    """Summarise map probabilities against target boxes and distances (NaN: not in view)."""
    touched = grounding_labels(boxes, grid, 'presence') > 0.0
    shown = touched.any(-1) & np.isfinite(distances)
    on = np.where(touched, probabilities, 0.0).max(-1)
    off = np.where(touched, 0.0, probabilities).max(-1)
    bands: List[Dict] = []
    for low, high in BANDS:
        rows = shown & (distances >= low) & (distances < high)
        count = int(rows.sum())
        bands.append({'from_m': low, 'to_m': high, 'frames': count,
                      'found': _share(on[rows] >= FOUND) if count else None,
                      'median_on_target': float(np.median(on[rows])) if count else None,
                      'ranked_first': _share(on[rows] > off[rows]) if count else None,
                      'false_alarm': _share(off[rows] >= FOUND) if count else None})
    empty = ~touched.any(-1)
    return {'frames': int(len(boxes)), 'frames_target_shown': int(shown.sum()),
            'bands': bands, 'frames_target_absent': int(empty.sum()),
            'false_alarm_target_absent': _share(off[empty] >= FOUND) if empty.any() else None,
            'median_max_target_absent': float(np.median(off[empty])) if empty.any() else None}


def _share(flags: np.ndarray) -> float:
    return round(float(np.mean(flags)), 4)


def format_table(summary: Dict, title: str) -> str:
    lines = [title, '', '| target distance | frames | found (map >= 0.5 on it) | median on it '
             '| highest on it | false alarm elsewhere |', '| --- | --- | --- | --- | --- | --- |']

    def percent(value: Optional[float]) -> str:
        return '-' if value is None else f'{100.0 * value:.0f}%'

    for band in summary['bands']:
        median = '-' if band['median_on_target'] is None else f'{band["median_on_target"]:.2f}'
        lines.append(f'| {band["from_m"]:g}-{band["to_m"]:g} m | {band["frames"]} | '
                     f'{percent(band["found"])} | {median} | {percent(band["ranked_first"])} | '
                     f'{percent(band["false_alarm"])} |')
    absent = summary['median_max_target_absent']
    absent = '-' if absent is None else f'highest {absent:.2f}'
    lines.append(f'| target not in view | {summary["frames_target_absent"]} | | {absent} | | '
                 f'{percent(summary["false_alarm_target_absent"])} |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[1].strip())
    parser.add_argument('--data', required=True, help='gen-data directory (trajectories)')
    parser.add_argument('--checkpoint', default=None,
                        help='VLITModel checkpoint (default: the shipped one)')
    parser.add_argument('--frames', type=int, default=3000,
                        help='goto frames drawn (default: 3000)')
    parser.add_argument('--seed', type=int, default=0, help='frame draw seed (default: 0)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default: 1)')
    parser.add_argument('--zoom-map', action='store_true',
                        help='merge the map with that of a 2x zoom of the image centre')
    parser.add_argument('--actions', action='store_true',
                        help="also the policy's greedy action against the expert's label")
    parser.add_argument('--json', default=None, metavar='OUT.json')
    parser.add_argument('--quiet', action='store_true')
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error(f'--frames must be at least 1, got {args.frames}')
    torch.set_num_threads(args.threads)
    try:
        model, checkpoint = load_grounding_model(args.checkpoint)
    except ValueError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    height, width = model.config.vision.image_height, model.config.vision.image_width
    data = TrajectorySet.load([Path(args.data)], FAMILIES, model.start_action,
                              size=(height, width))
    goto = np.flatnonzero(data.family == FAMILIES.index('goto'))
    if not len(goto):
        print(f'error: {args.data} has no goto frames', file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    rows = np.sort(rng.choice(goto, min(args.frames, len(goto)), replace=False))
    probabilities, actions = map_probabilities(model, data, rows, not args.quiet,
                                               args.zoom_map, args.actions)
    visible = AUXILIARY_TARGETS.index('goto_visible')
    log_distance = AUXILIARY_TARGETS.index('goto_log_distance')
    distances = np.where(data.auxiliary[rows, visible] > 0.5,
                         np.exp(data.auxiliary[rows, log_distance]), np.nan)
    summary = by_distance(probabilities, data.target_box[rows], distances,
                          model.vlm.vision.grid)
    summary.update({'checkpoint': str(checkpoint), 'data': args.data, 'seed': args.seed,
                    'zoom_map': args.zoom_map})
    print(format_table(summary, f'grounding map of {checkpoint} on {len(rows)} goto frames of '
                                f'{args.data}'))
    if actions is not None:
        summary['actions'] = agreement(actions, data.arrays['expert_action'][rows], distances,
                                       data.arrays['t'][rows])
        print(format_agreement(summary['actions']))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
