# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""
How well the task head reads the requested angle and distance from turn and move instructions.

    python bench/task_readings.py --checkpoint vlit_ros/checkpoints/default

Every turn and move instruction the task generator can produce (all training templates with
every angle, distance word and direction) is read by the checkpoint's task head, and compared
with the number it asks for. Prints the mean and largest error per family, how many readings
are off by more than the success tolerance (20 degrees for turn, 0.25 m for move), and the
worst readings. Text only: no simulator, a few seconds.
"""

import argparse
import json
import math
import sys
from typing import List, Tuple

import torch

from vlit_ros.checkpoints import DEFAULT_CHECKPOINT
from vlit_ros.core.model import load_checkpoint
from vlit_ros.core.task_parameters import MOVE_DISTANCE_SCALE_M, TURN_ANGLE_SCALE_RAD
from vlit_ros.sim import tasks

# Readings further off than this would fail the episode even if driven perfectly.
TOLERANCE = {'turn': tasks.TURN_TOLERANCE_DEG, 'move': tasks.MOVE_TOLERANCE_M}


def instructions() -> List[Tuple[str, str, float]]:
    """Return (family, text, requested number) for every generable turn and move instruction."""
    rows = [('turn', text, float(angle)) for text, angle in tasks.TURN_NAMED]
    for template in tasks.TURN_DEGREE_TEMPLATES:
        for degrees in tasks.TURN_DEGREES:
            for direction, sign in (('left', 1), ('right', -1)):
                rows.append(('turn', template.format(dir=direction, n=degrees),
                             float(sign * degrees)))
    for distance, words in tasks.DISTANCE_WORDS.items():
        for word in words:
            rows += [('move', template.format(d=word), distance)
                     for template in tasks.MOVE_FORWARD_TEMPLATES]
            if distance <= tasks.MAX_BACKWARD_M:
                rows += [('move', template.format(d=word), -distance)
                         for template in tasks.MOVE_BACKWARD_TEMPLATES]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--checkpoint', default=str(DEFAULT_CHECKPOINT),
                        help='checkpoint directory (default: the shipped one)')
    parser.add_argument('--worst', type=int, default=8, help='worst readings to list')
    parser.add_argument('--json', default=None, metavar='OUT.json')
    args = parser.parse_args(argv)
    model = load_checkpoint(args.checkpoint)
    fusion = model.vlm.fusion
    if fusion.task_head is None:
        print('this checkpoint has no task head', file=sys.stderr)
        return 2
    rows = instructions()
    model.eval()
    with torch.no_grad():
        read = fusion.task_parameters(model.vlm.encode_text([text for _, text, _ in rows]))
    # Outputs are scaled (fusion.TASK_PARAMETERS): back to degrees and metres.
    readings = [(family, text, wanted,
                 math.degrees(float(read[i, 0]) * TURN_ANGLE_SCALE_RAD) if family == 'turn'
                 else float(read[i, 1]) * MOVE_DISTANCE_SCALE_M)
                for i, (family, text, wanted) in enumerate(rows)]
    summary = {}
    for family, unit in (('turn', 'deg'), ('move', 'm')):
        errors = [abs(got - wanted) for f, _, wanted, got in readings if f == family]
        summary[family] = {'instructions': len(errors), 'unit': unit,
                           'mean_error': sum(errors) / len(errors), 'max_error': max(errors),
                           'beyond_tolerance': sum(e > TOLERANCE[family] for e in errors)}
        print(f'{family}: {len(errors)} instructions, mean error '
              f'{summary[family]["mean_error"]:.3g} {unit}, max {max(errors):.3g} {unit}, '
              f'{summary[family]["beyond_tolerance"]} beyond {TOLERANCE[family]:g} {unit}')
    worst = sorted(readings, key=lambda r: -abs(r[3] - r[2]) / TOLERANCE[r[0]])[:args.worst]
    print('worst readings (relative to the tolerance):')
    for family, text, wanted, got in worst:
        print(f'  {text!r}: asked {wanted:g}, read {got:.2f}')
    if args.json:
        with open(args.json, 'w') as stream:
            json.dump({'checkpoint': args.checkpoint, 'summary': summary,
                       'worst': [dict(zip(('family', 'text', 'wanted', 'read'), r))
                                 for r in worst]}, stream, indent=2)
    return 0 if all(math.isfinite(s['mean_error']) for s in summary.values()) else 1


if __name__ == '__main__':
    sys.exit(main())
