"""The expert's camera-only search for a goto target hidden behind another object."""

import math

from vlit_ros.sim.episode import EpisodeSpec, run_episode
from vlit_ros.sim.expert import ExpertPolicy, EXPLORE, RESWEEP, SWEEP
from vlit_ros.sim.scene import ObjectSpec, Scene
from vlit_ros.sim.tasks import GotoTask, Instruction
from vlit_ros.sim.world import World


def _polar(distance, bearing_deg, shape, color, size=0.2):
    bearing = math.radians(bearing_deg)
    return ObjectSpec(shape, color, round(distance * math.cos(bearing), 4),
                      round(distance * math.sin(bearing), 4), size)


# The robot at the origin facing +x. A green cylinder 1.5 m ahead hides the red cube behind
# it, a yellow one at 30 degrees hides the blue sphere: neither target is in view from the
# start pose, from any heading.
HIDDEN = Scene(seed=0, objects=(
    _polar(1.5, 0.0, 'cylinder', 'green', 0.24), _polar(3.2, 0.0, 'cube', 'red'),
    _polar(1.6, 30.0, 'cylinder', 'yellow', 0.24), _polar(3.5, 30.0, 'sphere', 'blue')))


class _Recorder:
    """Wrap the expert to record, per step, its action, search phase and odometry."""

    privileged = True

    def __init__(self, expert):
        self.expert = expert
        self.steps = []

    def reset(self, instruction, task=None, world=None):
        self.expert.reset(instruction, task=task, world=world)
        assert not self.expert.target_in_view()  # hidden from the start pose

    def act(self, obs):
        action = self.expert.act(obs)
        self.steps.append((action, self.expert.search_phase, self.expert.seen, obs.odom))
        return action


def _run(color, shape, scene=HIDDEN, observable_search=True):
    task = GotoTask(color, shape)
    spec = EpisodeSpec(0, 0, 'goto', Instruction(f'go to the {color} {shape}', task), scene)
    recorder = _Recorder(ExpertPolicy(observable_search=observable_search))
    with World() as world:
        result = run_episode(world, recorder, spec)
    return result, recorder.steps


def _first_sight(steps):
    return next(i for i, (_, _, seen, _) in enumerate(steps) if seen)


def test_a_hidden_target_is_found_by_sweeping_then_driving_ahead():
    result, steps = _run('red', 'cube')
    assert result.success
    first = _first_sight(steps)
    actions = [step[0] for step in steps[:first]]
    phases = [step[1] for step in steps[:first]]
    # Phase 1: the sweep left, then right, in place.
    sweep = actions[:phases.index(EXPLORE)]
    assert sweep[0] == 'turn_left' and sweep[-1] == 'turn_right'
    assert set(sweep) == {'turn_left', 'turn_right'}
    # Phase 2: back toward the start heading and ahead, around the cylinder, until the cube
    # comes out from behind it.
    assert steps[first][1] == EXPLORE
    assert 'forward' in actions[phases.index(EXPLORE):]
    odom = steps[first][3]
    assert math.hypot(odom[0], odom[1]) > 0.5 and abs(odom[2]) < math.radians(60.0)


def test_the_search_does_not_depend_on_where_the_hidden_target_is():
    red, red_steps = _run('red', 'cube')
    blue, blue_steps = _run('blue', 'sphere')
    assert red.success and blue.success
    # The blue sphere stays hidden through phase 2 and turns up in the second sweep.
    assert blue_steps[_first_sight(blue_steps)][1] == RESWEEP
    # Until the first of the two targets comes into view, the expert does the same thing
    # whichever object it is looking for: it cannot know before it has seen it.
    first = min(_first_sight(red_steps), _first_sight(blue_steps))
    assert [s[0] for s in red_steps[:first]] == [s[0] for s in blue_steps[:first]]


def test_without_observable_search_the_expert_heads_straight_for_the_target():
    result, steps = _run('red', 'cube', observable_search=False)
    assert result.success
    # No sweep: it arcs around the cylinder toward the cube from the first step.
    assert steps[0][0] in ('forward_left', 'forward_right')
    assert all(phase == SWEEP and not seen for _, phase, seen, _ in steps)
    # A target out of view to the right: turned toward at once, where the search sweeps
    # left first.
    scene = Scene(seed=0, objects=(_polar(3.0, -70.0, 'cube', 'red'),))
    assert _run('red', 'cube', scene, observable_search=False)[1][0][0] == 'turn_right'
    assert _run('red', 'cube', scene)[1][0][0] == 'turn_left'


def test_reset_clears_the_search_state():
    expert = ExpertPolicy()
    recorder = _Recorder(expert)
    task = GotoTask('blue', 'sphere')
    spec = EpisodeSpec(0, 0, 'goto', Instruction('go to the blue sphere', task), HIDDEN)
    with World() as world:
        run_episode(world, recorder, spec)
        assert expert.search_phase == RESWEEP and expert.seen
        expert.reset('go to the red cube', task=GotoTask('red', 'cube'), world=world)
        assert expert.search_phase == SWEEP and not expert.seen
        # The same search again from the start: the state of the last episode is gone.
        replay = _Recorder(expert)
        again = run_episode(world, replay, spec)
    assert expert.search_phase == RESWEEP
    assert again.actions == [step[0] for step in recorder.steps]
    assert replay.steps[0][1:3] == (SWEEP, False)
