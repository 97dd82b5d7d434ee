# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""The expert's turns a camera-only learner can copy: they follow its last command."""

import pytest

from vlit_ros.sim.episode import make_episode, Observation, run_episode
from vlit_ros.sim.expert import ExpertPolicy, ExpertRules, RULES
from vlit_ros.sim.scene import ObjectSpec, Scene
from vlit_ros.sim.tasks import GotoTask
from vlit_ros.sim.world import World


def _drive(target_x, target_y, actions, **rules):
    """
    Drive `actions` from the origin toward a red cube; return the last state's label and rule.

    The robot starts facing +x; the expert (with `rules`) labels every state on the way.
    """
    scene = Scene(seed=0, objects=(ObjectSpec('cube', 'red', target_x, target_y, 0.2),
                                   ObjectSpec('sphere', 'blue', -2.5, 2.5, 0.2)))
    expert = ExpertPolicy(**rules)
    with World() as world:
        world.reset(scene=scene)
        expert.reset('go to the red cube', task=GotoTask('red', 'cube'), world=world)
        t0 = world.time
        for action in actions + [None]:
            label = expert.act(Observation(world, world.odometry().as_tuple(), world.time - t0))
            if action is not None:
                world.step(action)
        return label, expert.last_rule


def test_the_sweep_goes_on_the_way_the_last_command_turned():
    # The target is behind the robot: the sweep begins. The learner turned right for a while
    # and then back left: the measured yaw rate still turns right (the drive ramps), so the
    # yaw-rate rule labels this state "right", the opposite of the learner's last action,
    # which is all the learner can see of its motion.
    actions = ['turn_right'] * 6 + ['turn_left']
    assert _drive(-2.0, 0.0, actions, sweep_by_command=True) == ('turn_left', 'sweep')
    assert _drive(-2.0, 0.0, actions) == ('turn_right', 'sweep')
    # Still turning right: go on.
    assert _drive(-2.0, 0.0, ['turn_right'] * 6, sweep_by_command=True) == ('turn_right', 'sweep')
    assert _drive(-2.0, 0.0, ['turn_right'] * 6) == \
        ('turn_right', 'sweep')


@pytest.mark.parametrize('last, label', [('turn_left', 'turn_left'),
                                         ('forward_left', 'turn_left'),
                                         ('forward', 'turn_right'),
                                         ('stop', 'turn_right')])
def test_a_target_lost_on_the_way_is_turned_back_to_the_way_the_last_command_turned(
        last, label):
    # Drive 0.6 m toward a cube 2.5 m ahead, then turn left until it has left the camera's
    # 90 degrees: ground truth says turn right; the learner cannot see which way it is.
    actions = ['forward'] * 15 + ['turn_left'] * 14 + [last]
    assert _drive(2.5, 0.0, actions, reacquire_by_command=True) == (label, 'reacquire')
    assert _drive(2.5, 0.0, actions) == \
        ('turn_right', 'ground_truth')
    assert set(RULES) >= {'reacquire', 'ground_truth'}


def test_expert_rules_build_the_expert_they_name():
    # The default is the expert the shipped checkpoint was trained with.
    default = ExpertRules().policy()
    assert not (default.sweep_by_command or default.reacquire_by_command or default.far_search)
    turns = ExpertRules(far_search=True, observable_turns=True).policy()
    assert turns.far_search and turns.sweep_by_command and turns.reacquire_by_command
    assert ExpertRules() != ExpertRules(observable_turns=True)


def test_the_expert_with_observable_turns_still_solves_goto():
    solved = 0
    with World() as world:
        for index in range(12):
            spec = make_episode(index, 7, families=('goto',))
            expert = ExpertPolicy(sweep_by_command=True, reacquire_by_command=True)
            solved += run_episode(world, expert, spec).success
    assert solved == 12
