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

    python bench/goto_breakdown.py RUN1.json RUN2.json [...] --by-scene

With `--by-scene`, the files are runs of different policies (or training runs) on the same
scenes: each scene is counted by how many runs solve it, and the scenes every run solves,
some runs solve and no run solves are split by the same factors, which tells scenes the
recipe cannot do from scenes it does by luck.
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


def by_scene(runs: List[List[dict]]) -> dict:
    """
    Count the goto scenes of several runs by how many runs solve them.

    Every run must hold the same goto episodes (same seeds and instructions). Returns the
    number of scenes per count of runs solving them, the mean and best-of-runs success, and
    per group ('every run', 'some runs', 'no run') its scenes and factor values.
    """
    if len(runs) < 2:
        raise ValueError('--by-scene needs two or more runs on the same scenes')
    keyed = []
    for run in runs:
        goto = {(e['seed'], e['text']): e for e in run if e.get('family') == 'goto'}
        if not goto:
            raise ValueError('no goto episodes in the input')
        keyed.append(goto)
    if any(set(goto) != set(keyed[0]) for goto in keyed[1:]):
        raise ValueError('--by-scene needs runs of the same goto episodes '
                         '(same --seed, --episodes and instructions)')
    solved = {key: sum(bool(goto[key]['success']) for goto in keyed) for key in keyed[0]}
    count = len(runs)
    groups: Dict[str, List[tuple]] = {'every run': [], 'some runs': [], 'no run': []}
    for key, wins in solved.items():
        groups['every run' if wins == count else 'no run' if wins == 0 else
               'some runs'].append(key)
    factors = {}
    for name, keys in groups.items():
        shares = Counter()
        for key in keys:
            shares.update(episode_factors(keyed[0][key]).items())
        factors[name] = {f'{factor}: {value}': shares[(factor, value)]
                         for factor, values in FACTORS.items() for value in values}
    scenes = len(solved)
    return {'runs': count, 'scenes': scenes,
            'solved_by': {str(k): sum(1 for wins in solved.values() if wins == k)
                          for k in range(count + 1)},
            'mean_success_rate': sum(solved.values()) / (scenes * count),
            'best_of_runs_success_rate': sum(1 for wins in solved.values() if wins) / scenes,
            'groups': {name: len(keys) for name, keys in groups.items()},
            'factors': factors}


def format_by_scene(result: dict) -> str:
    scenes, groups = result['scenes'], result['groups']
    counts = ', '.join(f'{k}: {v}' for k, v in result['solved_by'].items())
    lines = [f'{scenes} scenes, {result["runs"]} runs; scenes solved by k runs: {counts}',
             f'mean success {100.0 * result["mean_success_rate"]:.1f}%, solved by at least '
             f'one run {100.0 * result["best_of_runs_success_rate"]:.1f}%',
             f'{"factor: value":44s}' + ''.join(f'{f"{name} ({groups[name]})":>18s}'
                                                for name in groups)]
    for label in result['factors']['every run']:
        cells = ''.join(f'{_share(result["factors"][name][label], groups[name]):>18s}'
                        for name in groups)
        lines.append(f'{label:44s}{cells}')
    return '\n'.join(lines)


def _share(part: int, whole: int) -> str:
    return f'{part} ({100.0 * part / whole:.0f}%)' if whole else '-'


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
    parser.add_argument('--by-scene', action='store_true',
                        help='the files are runs on the same scenes: also count each scene '
                             'by how many runs solve it')
    parser.add_argument('--json', default=None, metavar='OUT.json', help='also write the rows')
    args = parser.parse_args(argv)
    runs = []
    try:
        for path in args.results:
            runs.append(json.loads(Path(path).read_text())['episodes'])
        rows = breakdown([episode for run in runs for episode in run])
        scenes = by_scene(runs) if args.by_scene else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f'goto_breakdown: {exc}', file=sys.stderr)
        return 2
    print(format_rows(rows))
    if scenes is not None:
        print()
        print(format_by_scene(scenes))
    if args.json:
        out = rows if scenes is None else {'rows': rows, 'by_scene': scenes}
        Path(args.json).write_text(json.dumps(out, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
