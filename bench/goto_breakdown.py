# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""
Which goto episodes fail: success by how the target is named and where it starts.

    vlit-ros eval --checkpoint DIR --families goto --episodes 200 --seed 101 --json E.json
    python bench/goto_breakdown.py E.json [MORE.json ...] [--json OUT.json]

Reads the episodes of `vlit-ros eval --json` files (any policy), rebuilds each goto
episode's scene from its seed (scenes are deterministic) and splits success by what the
robot had to do: how the instruction names the target (colour and shape, colour only, shape
only), whether another object shares the target's colour, whether the target starts in the
camera's view or out of it to the left or right, and whether it starts more than 3 m away.
The table also gives each group's failure reasons. Nothing is simulated: it takes a second.
"""

import argparse
from collections import Counter, defaultdict
import json
import math
from pathlib import Path
import sys
from typing import Dict, Iterable, List

from vlit_ros.core.geometry import to_frame
from vlit_ros.sim.scene import Scene
from vlit_ros.sim.tasks import GotoTask

# Beyond this start distance (m) a target counts as far: the grounding map finds targets
# there rarely (docs/TRAINING.md, "The map is blind beyond 2 m").
FAR_M = 3.0
# Factors of an episode and the order their values are printed in.
FACTORS = {
    'named by': ('colour and shape', 'colour', 'shape'),
    'same colour nearby': ('another of its colour', 'only one of its colour'),
    'starts': ('in view', 'out of view, left', 'out of view, right'),
    'distance': (f'up to {FAR_M:g} m', f'beyond {FAR_M:g} m'),
}


def episode_factors(episode: dict) -> Dict[str, str]:
    """Return the factor values of one goto episode of `vlit-ros eval --json`."""
    task = GotoTask(episode['task'].get('color'), episode['task'].get('shape'))
    scene = Scene.generate(int(episode['seed']))
    target = task.target(scene)
    ahead, left = to_frame((scene.robot_x, scene.robot_y, scene.robot_yaw), target.x, target.y)
    bearing = math.degrees(math.atan2(left, ahead))
    if abs(bearing) <= scene.robot.camera_hfov_deg / 2.0:
        start = 'in view'
    else:
        start = 'out of view, left' if bearing > 0 else 'out of view, right'
    same_colour = any(o.color == target.color and o is not target for o in scene.objects)
    named = 'colour and shape' if task.color and task.shape else \
        ('colour' if task.color else 'shape')
    return {'named by': named,
            'same colour nearby': 'another of its colour' if same_colour else
            'only one of its colour',
            'starts': start,
            'distance': f'beyond {FAR_M:g} m' if math.hypot(ahead, left) > FAR_M else
            f'up to {FAR_M:g} m'}


def breakdown(episodes: Iterable[dict]) -> List[dict]:
    """Return one row per factor value: episodes, successes, rate and failure reasons."""
    groups: Dict[tuple, List[dict]] = defaultdict(list)
    for episode in episodes:
        if episode.get('family') != 'goto':
            continue
        factors = episode_factors(episode)
        groups[('all', 'all')].append(episode)
        for factor, value in factors.items():
            groups[(factor, value)].append(episode)
    if not groups:
        raise ValueError('no goto episodes in the input')
    rows = []
    order = [('all', 'all')] + [(f, v) for f, values in FACTORS.items() for v in values]
    for key in order:
        members = groups.get(key, [])
        if not members:
            continue
        successes = sum(bool(e['success']) for e in members)
        reasons = Counter(_reason(e['reason']) for e in members if not e['success'])
        rows.append({'factor': key[0], 'value': key[1], 'episodes': len(members),
                     'successes': successes, 'success_rate': successes / len(members),
                     'failures': dict(reasons.most_common())})
    return rows


def _reason(reason: str) -> str:
    return 'touched' if reason.startswith('touched_') else reason


def format_rows(rows: List[dict]) -> str:
    lines = [f'{"factor":20s} {"value":24s} {"episodes":>8s} {"success":>8s}  failures']
    for row in rows:
        failures = ', '.join(f'{k} {v}' for k, v in row['failures'].items())
        lines.append(f'{row["factor"]:20s} {row["value"]:24s} {row["episodes"]:8d} '
                     f'{100.0 * row["success_rate"]:7.1f}%  {failures}')
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('results', nargs='+', metavar='EVAL.json',
                        help='outputs of vlit-ros eval --json (their goto episodes are pooled)')
    parser.add_argument('--json', default=None, metavar='OUT.json', help='also write the rows')
    args = parser.parse_args(argv)
    episodes = []
    try:
        for path in args.results:
            episodes += json.loads(Path(path).read_text())['episodes']
        rows = breakdown(episodes)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f'goto_breakdown: {exc}', file=sys.stderr)
        return 2
    print(format_rows(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
