# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""
How the expert searches for goto targets: success, ground-truth fallbacks, length, dithering.

    python bench/expert_search.py --episodes 200 --seed 1
    python bench/expert_search.py --episodes 200 --seed 1 --far-search

Runs the expert on generated goto episodes (scene seeds SEED, SEED + 1, ...) and prints its
success, in how many episodes its camera-only search ran out and it fell back on ground truth
(`ExpertPolicy.search_exhausted`), the median and mean episode length in steps, and how often
per episode it changed turning direction (left to right or back): what a learner copying it
has to get right. `--far-search` measures the expert of `--expert-far-search` instead, and
`--short-sweep` and `--far-arcs` those of `--expert-short-sweep` and `--expert-far-arcs`.
"""

import argparse
import inspect
import json
import statistics
import sys

from vlit_ros.sim.episode import make_episode, run_episode
from vlit_ros.sim.expert import ExpertPolicy
from vlit_ros.sim.world import World

_TURNS = ('turn_left', 'turn_right')
# The far search's settings as the expert has them by default.
_DEFAULTS = inspect.signature(ExpertPolicy).parameters
DEFAULT_SEE_RANGE_M = _DEFAULTS['see_range_m'].default
DEFAULT_ADVANCE_M = _DEFAULTS['advance_m'].default


def search_statistics(episodes: int, seed: int, far_search: bool = False,
                      see_range_m: float = DEFAULT_SEE_RANGE_M,
                      advance_m: float = DEFAULT_ADVANCE_M,
                      sweep_by_command: bool = False,
                      reacquire_by_command: bool = False, short_sweep: bool = False,
                      far_arcs: bool = False, clear_arcs: bool = False) -> dict:
    """Run the expert on `episodes` goto episodes from scene seed `seed`; return the figures."""
    if episodes < 1:
        raise ValueError(f'--episodes must be at least 1, got {episodes}')
    successes, fallbacks, lengths, flips = 0, 0, [], []
    with World() as world:
        for index in range(episodes):
            spec = make_episode(index, seed, families=('goto',))
            expert = ExpertPolicy(far_search=far_search, see_range_m=see_range_m,
                                  advance_m=advance_m, sweep_by_command=sweep_by_command,
                                  reacquire_by_command=reacquire_by_command,
                                  short_sweep=short_sweep, far_arcs=far_arcs,
                                  clear_arcs=clear_arcs)
            result = run_episode(world, expert, spec)
            turns = [a for a in result.actions if a in _TURNS]
            successes += int(result.success)
            # Once run out, the search stays run out for the rest of the episode.
            fallbacks += int(expert.search_exhausted)
            lengths.append(len(result.actions))
            flips.append(sum(a != b for a, b in zip(turns, turns[1:])))
    far = {'see_range_m': see_range_m, 'advance_m': advance_m} if far_search else {}
    return {'episodes': episodes, 'seed': seed, 'far_search': far_search, **far,
            'short_sweep': short_sweep, 'far_arcs': far_arcs, 'clear_arcs': clear_arcs,
            'sweep_rule': 'command' if sweep_by_command else 'yaw_rate',
            'reacquire': 'command' if reacquire_by_command else 'ground_truth',
            'success': successes,
            'ground_truth_fallbacks': fallbacks, 'median_steps': statistics.median(lengths),
            'mean_steps': round(statistics.mean(lengths), 1),
            'turn_direction_changes_per_episode': round(statistics.mean(flips), 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--episodes', type=int, default=200)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--far-search', action='store_true',
                        help='the far search of gen-data / train-all --expert-far-search')
    parser.add_argument('--see-range', type=float, default=DEFAULT_SEE_RANGE_M,
                        help='with --far-search: metres within which the target counts as '
                             f'seen (default: {DEFAULT_SEE_RANGE_M:g}; inf: any distance)')
    parser.add_argument('--advance', type=float, default=DEFAULT_ADVANCE_M,
                        help='with --far-search: metres driven ahead between the two sweeps '
                             f'(default: {DEFAULT_ADVANCE_M:g})')
    parser.add_argument('--sweep-by-command', action='store_true',
                        help='the sweep keeps turning right while the last command turns '
                             'right, not while the measured yaw rate does')
    parser.add_argument('--reacquire-by-command', action='store_true',
                        help='with the target out of view after the search, turn the way the '
                             'last command turned, not toward it by ground truth')
    parser.add_argument('--short-sweep', action='store_true',
                        help='the short sweep of gen-data / train-all --expert-short-sweep')
    parser.add_argument('--far-arcs', action='store_true',
                        help='the arcs of gen-data / train-all --expert-far-arcs')
    parser.add_argument('--clear-arcs', action='store_true',
                        help='with --far-arcs: arcs only where the way is clear '
                             '(--expert-clear-arcs)')
    args = parser.parse_args(argv)
    try:
        figures = search_statistics(args.episodes, args.seed, args.far_search,
                                    args.see_range, args.advance,
                                    args.sweep_by_command, args.reacquire_by_command,
                                    args.short_sweep, args.far_arcs, args.clear_arcs)
    except ValueError as exc:
        print(f'expert_search: error: {exc}', file=sys.stderr)
        return 2
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
