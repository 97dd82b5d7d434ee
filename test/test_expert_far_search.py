# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""The expert's far search: labels a learner whose map finds targets only up to 3.5 m can copy."""

import math

import pytest

from vlit_ros.sim.episode import EpisodeSpec, run_episode
from vlit_ros.sim.expert import ExpertPolicy, RULES
from vlit_ros.sim.scene import ObjectSpec, Scene
from vlit_ros.sim.tasks import GotoTask, Instruction
from vlit_ros.sim.world import World


class _Recorder:
    """Drive with an expert and keep every action with the rule that gave it."""

    privileged = True

    def __init__(self, expert: ExpertPolicy):
        self.expert = expert
        self.steps = []

    def reset(self, instruction, task=None, world=None):
        self.expert.reset(instruction, task=task, world=world)

    def act(self, obs):
        action = self.expert.act(obs)
        self.steps.append((action, self.expert.last_rule))
        return action


def _run(distance_m, bearing_deg=0.0, far_search=True):
    """Run the expert to a red cube `distance_m` from the robot at (-1.5, 0) facing +x."""
    bearing = math.radians(bearing_deg)
    scene = Scene(seed=0, objects=(
        ObjectSpec('cube', 'red', round(-1.5 + distance_m * math.cos(bearing), 4),
                   round(distance_m * math.sin(bearing), 4), 0.2),
        ObjectSpec('sphere', 'blue', -2.5, 2.5, 0.2)), robot_x=-1.5)
    spec = EpisodeSpec(0, 0, 'goto', Instruction('go to the red cube', GotoTask('red', 'cube')),
                       scene)
    recorder = _Recorder(ExpertPolicy(far_search=far_search))
    with World() as world:
        result = run_episode(world, recorder, spec)
    return result, recorder.steps


def test_a_far_target_in_view_is_searched_for_by_sweeping_and_driving_ahead():
    # 4.5 m straight ahead: in view from the start, beyond what the learner's map finds.
    result, steps = _run(4.5)
    assert result.success
    rules = [rule for _, rule in steps]
    assert steps[0] == ('turn_left', 'sweep')
    # Sweep, turn back and drive ahead, then steer at the target once it is near enough; the
    # expert never falls back on ground truth (it needed no second sweep here).
    first = {rule: rules.index(rule) for rule in ('sweep', 'advance', 'in_view')}
    assert first['sweep'] < first['advance'] < first['in_view']
    assert 'ground_truth' not in rules
    assert set(rules) <= set(RULES)
    drive = [action for action, rule in steps if rule == 'advance']
    assert drive.count('turn_left') > 10  # back from the sweep's right end
    assert drive.count('forward') > 10  # then ahead
    # The default expert steers at it at once.
    result, steps = _run(4.5, far_search=False)
    assert result.success and steps[0] == ('forward', 'in_view')


def test_a_target_within_range_is_steered_at_at_once():
    result, steps = _run(3.0, bearing_deg=10.0)
    assert result.success
    assert steps[0][1] == 'in_view' and steps[0][0] in ('forward', 'forward_left')


def test_far_search_needs_the_observable_search_and_positive_distances():
    with pytest.raises(ValueError, match='observable_search'):
        ExpertPolicy(observable_search=False, far_search=True)
    for bad in (0.0, -1.0, float('nan')):
        with pytest.raises(ValueError, match='see_range_m must be a positive number'):
            ExpertPolicy(far_search=True, see_range_m=bad)
        with pytest.raises(ValueError, match='advance_m must be a positive number'):
            ExpertPolicy(far_search=True, advance_m=bad)
    # Any distance: only the drive ahead between two sweeps is left of the far search.
    assert ExpertPolicy(far_search=True, see_range_m=math.inf).see_range_m == math.inf
