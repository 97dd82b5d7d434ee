# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""
Which of the expert's rules label the states a learner reaches on its own (as in DAgger).

    python bench/expert_labels.py --checkpoint vlit_ros/checkpoints/default --episodes 64

Rolls the checkpoint out alone on generated goto episodes (scene seeds SEED, SEED + 1, ...)
while the expert labels every frame, as a DAgger round with no expert steps would, and counts
which of the expert's rules (`ExpertPolicy.last_rule`) gave each label, over the episodes the
learner solved and over those it failed. `ground_truth` labels steer toward a target out of
view by what only the simulator knows: a learner that sees only the camera cannot copy them.
"""

import argparse
from collections import Counter
import json
import sys

from vlit_ros.core.policy import ModelPolicy
from vlit_ros.sim.episode import make_episode, run_episode
from vlit_ros.sim.expert import RULES
from vlit_ros.sim.world import World
from vlit_ros.training.recording import FrameBuffer, RecordingDriver


class _LearnerChooser:
    """Executes the learner's action and notes the rule behind the expert's label."""

    def __init__(self, policy: ModelPolicy):
        self.policy = policy
        self.driver = None
        self.rules = Counter()

    def reset(self, instruction: str) -> None:
        self.policy.reset(instruction)
        self.rules = Counter()

    def __call__(self, obs, label: str) -> str:
        self.rules[self.driver.expert.last_rule] += 1
        return self.policy.act(obs)


def _shares(counts: Counter) -> dict:
    total = sum(counts.values())
    return {'labels': total, **{rule: round(counts[rule] / total, 3) if total else 0.0
                                for rule in RULES if rule != 'not_goto'}}


def label_statistics(policy: ModelPolicy, episodes: int, seed: int) -> dict:
    """Roll `policy` out on `episodes` goto episodes; return the label shares by outcome."""
    if episodes < 1:
        raise ValueError(f'--episodes must be at least 1, got {episodes}')
    chooser = _LearnerChooser(policy)
    solved, failed, successes = Counter(), Counter(), 0
    with World() as world:
        for index in range(episodes):
            spec = make_episode(index, seed, families=('goto',))
            chooser.driver = RecordingDriver(FrameBuffer(), index, chooser)
            result = run_episode(world, chooser.driver, spec)
            successes += int(result.success)
            (solved if result.success else failed).update(chooser.rules)
    return {'episodes': episodes, 'seed': seed, 'success': successes,
            'solved': _shares(solved), 'failed': _shares(failed),
            'all': _shares(solved + failed)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--checkpoint', default='vlit_ros/checkpoints/default')
    parser.add_argument('--episodes', type=int, default=64)
    parser.add_argument('--seed', type=int, default=7000)
    args = parser.parse_args(argv)
    try:
        figures = label_statistics(ModelPolicy.from_checkpoint(args.checkpoint),
                                   args.episodes, args.seed)
    except ValueError as exc:
        print(f'expert_labels: error: {exc}', file=sys.stderr)
        return 2
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
