# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""Expert labels a camera-only learner can copy: turns by its last command, the short sweep."""

import pytest

from vlit_ros.sim.episode import make_episode, Observation, run_episode
from vlit_ros.sim.expert import ExpertPolicy, ExpertRules, RULES
from vlit_ros.sim.scene import ObjectSpec, Scene
from vlit_ros.sim.tasks import GotoTask
from vlit_ros.sim.world import World


def _drive(target_x, target_y, actions, others=(), **rules):
    """
    Drive `actions` from the origin toward a red cube; return the last state's label and rule.

    The robot starts facing +x; the expert (with `rules`) labels every state on the way.
    `others`: more objects in the scene.
    """
    scene = Scene(seed=0, objects=(ObjectSpec('cube', 'red', target_x, target_y, 0.2),
                                   ObjectSpec('sphere', 'blue', -2.5, 2.5, 0.2)) +
                  tuple(others))
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


def test_the_short_sweep_is_done_once_both_sides_are_nearly_reached():
    # A learner that turns 50 degrees left, then right to about -55 degrees and back left:
    # the default expert (sweep to -95) labels this a new sweep, left again, which is how a
    # learner came to sweep on the spot for 40 s; the short sweep's search is over.
    actions = ['turn_left'] * 12 + ['turn_right'] * 26 + ['turn_left'] * 2
    assert _drive(-2.0, 0.0, actions) == ('turn_left', 'sweep')
    label, rule = _drive(-2.0, 0.0, actions, short_sweep=True)
    assert rule == 'ground_truth' and label in ('turn_left', 'turn_right')
    # One side only: still sweeping, to 60 degrees and not 95.
    assert _drive(-2.0, 0.0, ['turn_left'] * 12, short_sweep=True) == ('turn_left', 'sweep')
    assert _drive(-2.0, 0.0, ['turn_left'] * 20, short_sweep=True) == ('turn_right', 'sweep')
    assert _drive(-2.0, 0.0, ['turn_left'] * 20) == ('turn_left', 'sweep')


def test_after_the_short_sweep_a_far_target_is_closed_in_on_in_arcs():
    sweep = ['turn_left'] * 12 + ['turn_right'] * 26 + ['turn_left'] * 2
    # 3.2 m behind: beyond 3 m, so an arc instead of a turn on the spot.
    label, rule = _drive(-3.2, 0.3, sweep, short_sweep=True, far_arcs=True)
    assert rule == 'ground_truth' and label in ('forward_left', 'forward_right')
    # Without the arcs, the turn on the spot.
    assert _drive(-3.2, 0.3, sweep, short_sweep=True)[0] in ('turn_left', 'turn_right')
    # 2 m behind: near enough for the map, so the turn on the spot stays.
    assert _drive(-2.0, 0.0, sweep, short_sweep=True, far_arcs=True)[0] in \
        ('turn_left', 'turn_right')
    # Before the search and without having driven, a far target in view is turned to as
    # before (3.8 m away, 32 degrees left).
    assert _drive(3.2, 2.0, [], short_sweep=True, far_arcs=True) == ('turn_left', 'in_view')
    assert _drive(3.2, 2.0, []) == ('turn_left', 'in_view')


def test_clear_arcs_turn_on_the_spot_next_to_an_object():
    # Driven 0.5 m ahead, the target 3.7 m behind: the search is over, an arc closes in.
    ahead = ['forward'] * 14
    label, rule = _drive(-3.2, 0.3, ahead, far_arcs=True, clear_arcs=True)
    assert rule == 'ground_truth' and label in ('forward_left', 'forward_right')
    # A cylinder 0.8 m ahead: an arc would drive at it, so the clear arcs turn on the spot;
    # the far arcs alone still arc.
    block = [ObjectSpec('cylinder', 'green', 1.3, 0.0, 0.2)]
    label, rule = _drive(-3.2, 0.3, ahead, block, far_arcs=True, clear_arcs=True)
    assert rule == 'ground_truth' and label in ('turn_left', 'turn_right')
    arcs = ('forward_left', 'forward_right')
    assert _drive(-3.2, 0.3, ahead, block, far_arcs=True)[0] in arcs
    # The same cylinder 0.8 m ahead, 1 m to the right: the way to the left is clear.
    aside = [ObjectSpec('cylinder', 'green', 1.3, -1.0, 0.2)]
    assert _drive(-3.2, 0.3, ahead, aside, far_arcs=True, clear_arcs=True)[0] == \
        'forward_left'
    with pytest.raises(ValueError, match='needs far_arcs'):
        ExpertRules(clear_arcs=True)


def test_the_short_sweep_and_the_far_search_are_not_combined():
    for rules in ({'short_sweep': True}, {'far_arcs': True}):
        with pytest.raises(ValueError, match='search of its own'):
            ExpertRules(far_search=True, **rules)
        with pytest.raises(ValueError, match='search of its own'):
            ExpertPolicy(far_search=True, **rules)
        with pytest.raises(ValueError, match='observable_search'):
            ExpertPolicy(observable_search=False, **rules)
    expert = ExpertRules(short_sweep=True).policy()
    assert expert.short_sweep and expert.sweep_deg == 60.0 and expert.far_arcs_m is None
    assert ExpertRules(far_arcs=True).policy().far_arcs_m == 3.0
    default = ExpertRules().policy()
    assert not default.short_sweep and default.sweep_deg == 95.0 and default.far_arcs_m is None


def test_the_expert_with_the_short_sweep_still_solves_goto():
    solved = 0
    with World() as world:
        for index in range(12):
            spec = make_episode(index, 7, families=('goto',))
            solved += run_episode(world, ExpertPolicy(short_sweep=True), spec).success
    assert solved == 12
