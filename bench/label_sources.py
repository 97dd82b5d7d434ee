"""
Which expert rule labels the states a checkpoint visits, as DAgger would label them.

    python bench/label_sources.py --episodes 48 --seed 101          # the shipped checkpoint
    python bench/label_sources.py --checkpoint runs/x/polish --observable-turns

Rolls the checkpoint out greedily on goto episodes, with DAgger's rollout code and no expert
mixing (`dagger.collect`, beta 0), and counts, over every visited frame, the rule that gave
the expert's label (`ExpertPolicy.last_rule`): the camera-only sweep, the target in view
(and how many of those with the target beyond 3 m, where the map rarely finds it), ground
truth with the target out of view (lost on the way, or after the sweep ran out; a camera-only
learner cannot copy these), the observable turn back (`reacquire`), at the target. It also
labels the same frames with the other turn rules (`--observable-turns` toggled) and counts
the labels that differ, which is how much of the DAgger data the choice changes.
"""

import argparse
from collections import Counter
import json
import math
from pathlib import Path
import sys

from vlit_ros.checkpoints import DEFAULT_CHECKPOINT
from vlit_ros.core.policy import ModelPolicy
from vlit_ros.sim.episode import make_episode
from vlit_ros.sim.expert import ExpertRules
from vlit_ros.training import dagger

# Beyond this distance (m) the shipped map finds a target on few frames (docs/TRAINING.md).
FAR_M = 3.0


class _CountingExpert:
    """The labelling expert, with the other turn rules beside it on the same states."""

    def __init__(self, rules: ExpertRules, counts: Counter):
        self.expert = rules.policy()
        self.other = ExpertRules(rules.far_search, not rules.observable_turns).policy()
        self.counts = counts
        self._world = None

    def reset(self, instruction, task=None, world=None):
        self.expert.reset(instruction, task=task, world=world)
        self.other.reset(instruction, task=task, world=world)
        self._world = world

    def act(self, obs) -> str:
        label = self.expert.act(obs)
        other = self.other.act(obs)
        rule = self.expert.last_rule
        counts = self.counts
        counts['frames'] += 1
        counts[rule] += 1
        counts['differ_with_other_turns'] += label != other
        if rule == 'ground_truth':
            counts['ground_truth_after_sweep' if self.expert.search_exhausted else
                   'ground_truth_lost_on_the_way'] += 1
        elif rule == 'in_view':
            target, pose = self.expert._target, self._world.pose()
            counts['in_view_beyond_3m'] += math.hypot(target.x - pose[0],
                                                      target.y - pose[1]) > FAR_M
        return label


class _CountingRules:
    """What `dagger.collect` asks of its rules: a fresh labelling expert per episode."""

    def __init__(self, rules: ExpertRules):
        self.rules = rules
        self.counts = Counter()

    def policy(self) -> _CountingExpert:
        return _CountingExpert(self.rules, self.counts)


def label_sources(checkpoint, episodes: int, seed: int, observable_turns: bool) -> dict:
    """Roll out `checkpoint` on `episodes` goto episodes; return the label counts."""
    if episodes < 1:
        raise ValueError(f'--episodes must be at least 1, got {episodes}')
    specs = [make_episode(index, seed, families=('goto',)) for index in range(episodes)]
    rules = _CountingRules(ExpertRules(observable_turns=observable_turns))
    policy = ModelPolicy.from_checkpoint(checkpoint)
    buffer = dagger.collect(policy, specs, list(range(episodes)), beta=0.0, seed=seed,
                            progress=False, rules=rules)
    counts = rules.counts
    return {'checkpoint': str(checkpoint), 'episodes': episodes, 'seed': seed,
            'observable_turns': observable_turns,
            'solved': sum(bool(e['success']) for e in buffer.episodes),
            'frames': counts['frames'],
            'rules': {rule: counts[rule] for rule in
                      ('sweep', 'in_view', 'ground_truth', 'reacquire', 'advance', 'at_target')},
            'in_view_beyond_3m': counts['in_view_beyond_3m'],
            'ground_truth_lost_on_the_way': counts['ground_truth_lost_on_the_way'],
            'ground_truth_after_sweep': counts['ground_truth_after_sweep'],
            'labels_that_differ_with_the_other_turns': counts['differ_with_other_turns']}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--checkpoint', default=str(DEFAULT_CHECKPOINT),
                        help='instruction-following checkpoint (default: the shipped one)')
    parser.add_argument('--episodes', type=int, default=48)
    parser.add_argument('--seed', type=int, default=101, help='first scene seed (default: 101)')
    parser.add_argument('--observable-turns', action='store_true',
                        help='label with ExpertRules(observable_turns=True) and compare with '
                             'the default turns (default: the other way round)')
    parser.add_argument('--json', default=None, metavar='OUT.json', help='also write here')
    args = parser.parse_args(argv)
    try:
        figures = label_sources(args.checkpoint, args.episodes, args.seed, args.observable_turns)
    except ValueError as exc:
        print(f'label_sources: error: {exc}', file=sys.stderr)
        return 2
    text = json.dumps(figures, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
