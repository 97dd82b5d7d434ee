"""Instruction families, instruction files, and the success rules at their edges."""

import json
import math
import random

import pytest

from vlit_ros.sim.scene import ObjectSpec, Scene
from vlit_ros.sim.tasks import (EpisodeJudge, FAMILIES, generate_instruction, GotoTask,
                                load_instructions, MoveTask, StopTask, task_from_dict,
                                TurnTask)

TARGET = ObjectSpec('cube', 'red', 2.0, 0.0, 0.2)
OTHER = ObjectSpec('sphere', 'blue', 0.0, 1.5, 0.2)
SCENE = Scene(seed=0, objects=(TARGET, OTHER))
START = (0.0, 0.0, 0.0)
STILL = (0.0, 0.0)


def _end(task, pose, t=5.0, velocity=STILL, action='stop', start=START):
    judge = EpisodeJudge(task, SCENE, start)
    judge.update(t, pose, velocity, action)
    return judge


@pytest.mark.parametrize('distance, success', [(0.69, True), (0.71, False)])
def test_goto_success_radius_edge(distance, success):
    judge = _end(GotoTask('red', 'cube'), (2.0 - distance, 0.0, 0.0))
    assert judge.done and judge.outcome.success is success


def test_goto_fails_on_touching_another_object_but_not_the_target():
    touch_other = (0.0, 1.5 - 0.2 - 0.2 + 0.005, 0.0)
    judge = _end(GotoTask('red', 'cube'), touch_other, action='forward', velocity=(0.4, 0))
    assert judge.done and not judge.outcome.success
    assert judge.outcome.reason == 'touched_blue_sphere'
    touch_target = (2.0 - 0.2 - 0.2 + 0.005, 0.0, 0.0)
    judge = _end(GotoTask('red', 'cube'), touch_target, action='forward', velocity=(0.4, 0))
    assert not judge.done


def test_goto_must_end_stopped_and_times_out():
    moving = _end(GotoTask('red', 'cube'), (1.6, 0, 0), velocity=(0.3, 0), action='forward')
    assert not moving.done
    late = _end(GotoTask('red', 'cube'), (1.6, 0, 0), t=40.0, velocity=(0.3, 0),
                action='forward')
    assert late.done and late.outcome.reason == 'timeout'


@pytest.mark.parametrize('final_deg, success', [(90 - 19.5, True), (90 + 19.5, True),
                                                (90 - 20.5, False), (90 + 20.5, False)])
def test_turn_tolerance_edge(final_deg, success):
    judge = _end(TurnTask(90.0), (0.0, 0.0, math.radians(final_deg)))
    assert judge.outcome.success is success


def test_turn_around_accepts_either_direction_and_frames_are_relative():
    assert _end(TurnTask(180.0), (0, 0, math.radians(-175))).outcome.success
    start = (1.0, 1.0, 1.0)
    pose = (1.0, 1.0, 1.0 - math.pi / 2)
    assert _end(TurnTask(-90.0), pose, start=start).outcome.success


@pytest.mark.parametrize('x, y, success', [(1.24, 0.0, True), (0.76, 0.0, True),
                                           (1.26, 0.0, False), (1.0, 0.26, False)])
def test_move_tolerance_edge(x, y, success):
    assert _end(MoveTask(1.0), (x, y, 0.0)).outcome.success is success


def test_move_backward_is_measured_along_the_start_heading():
    start = (0.0, 0.0, math.pi / 2)
    assert _end(MoveTask(-1.0), (0.0, -1.0, math.pi / 2), start=start).outcome.success


def test_stop_deadline_edge():
    def run(stop_time):
        judge = EpisodeJudge(StopTask(), SCENE, START)
        t = 0.1
        while t < stop_time - 1e-9:
            judge.update(t, START, (0.3, 0.0), 'stop')
            t += 0.1
        judge.update(t, START, STILL, 'stop')
        return judge.outcome
    assert run(1.0).success
    assert not run(1.1).success and run(1.1).reason == 'stopped_too_late'


def test_rewards_favour_progress_and_success():
    judge = EpisodeJudge(GotoTask('red', 'cube'), SCENE, START)
    toward = judge.update(0.1, (0.3, 0, 0), (0.3, 0), 'forward')
    away = EpisodeJudge(GotoTask('red', 'cube'), SCENE, START).update(
        0.1, (-0.3, 0, 0), (-0.3, 0), 'backward')
    assert toward > 0 > away
    assert _end(GotoTask('red', 'cube'), (1.5, 0, 0)).done
    final = EpisodeJudge(GotoTask('red', 'cube'), SCENE, (1.5, 0, 0)).update(
        1.0, (1.5, 0, 0), STILL, 'stop')
    assert final >= EpisodeJudge.SUCCESS_BONUS - 0.1


def test_goto_target_must_exist_and_be_unambiguous():
    with pytest.raises(ValueError, match='has no green'):
        GotoTask(color='green').target(SCENE)
    two_cubes = Scene(seed=0, objects=(TARGET, ObjectSpec('cube', 'blue', -2.0, 0.0, 0.2)))
    with pytest.raises(ValueError, match='ambiguous'):
        GotoTask(shape='cube').target(two_cubes)


def test_instruction_file_round_trip(tmp_path):
    path = tmp_path / 'ok.jsonl'
    lines = [
        {'text': 'head to the red cube', 'task': {'type': 'goto', 'color': 'red',
                                                  'shape': 'cube'}},
        {'text': 'spin around', 'task': {'type': 'turn', 'angle_deg': 180}},
        {'text': 'back up a meter', 'task': {'type': 'move', 'distance_m': -1.0}},
        {'text': 'halt', 'task': {'type': 'stop'}},
    ]
    path.write_text('\n'.join(json.dumps(line) for line in lines) + '\n\n')
    loaded = load_instructions(path)
    assert [i.to_dict() for i in loaded] == [
        {**lines[0]}, {'text': 'spin around', 'task': {'type': 'turn', 'angle_deg': 180.0}},
        lines[2], lines[3]]


@pytest.mark.parametrize('bad, message', [
    ('not json', 'ok.jsonl:2:'),
    ('{"text": "go", "task": {"type": "goto", "color": "pink"}}', "unknown colour 'pink'"),
    ('{"text": "go", "task": {"type": "goto", "shape": "cone"}}', "unknown shape 'cone'"),
    ('{"text": "", "task": {"type": "stop"}}', 'non-empty'),
    ('{"text": "x", "task": {"type": "dance"}}', "unknown task type 'dance'"),
    ('{"text": "x", "task": {"type": "turn"}}', 'needs a number "angle_deg"'),
    ('{"text": "x", "task": {"type": "move", "distance_m": 0}}', 'non-zero'),
    ('{"text": "x", "task": {"type": "stop", "speed": 1}}', 'unexpected field'),
    ('[1, 2]', 'JSON object'),
])
def test_a_bad_line_gets_an_error_naming_the_line(tmp_path, bad, message):
    path = tmp_path / 'ok.jsonl'
    path.write_text('{"text": "halt", "task": {"type": "stop"}}\n' + bad + '\n')
    with pytest.raises(ValueError, match=message) as info:
        load_instructions(path)
    assert 'ok.jsonl:2:' in str(info.value)


def test_empty_instruction_file_is_an_error(tmp_path):
    path = tmp_path / 'empty.jsonl'
    path.write_text('\n')
    with pytest.raises(ValueError, match='no instructions'):
        load_instructions(path)


def test_generated_instructions_are_valid_varied_and_deterministic():
    texts = {f: set() for f in FAMILIES}
    for seed in range(200):
        scene = Scene.generate(seed)
        for family in FAMILIES:
            instruction = generate_instruction(scene, family, random.Random(seed))
            assert instruction.task.family == family
            if family == 'goto':
                instruction.task.target(scene)
            texts[family].add(instruction.text)
            again = generate_instruction(scene, family, random.Random(seed))
            assert again == instruction
    assert all(len(t) >= 15 for t in texts.values()), {f: len(t) for f, t in texts.items()}


def test_held_out_phrasings_are_disjoint_from_training_ones():
    scene = Scene.generate(1)
    train = {generate_instruction(scene, 'goto', random.Random(s)).text for s in range(300)}
    held = {generate_instruction(scene, 'goto', random.Random(s), held_out=True).text
            for s in range(300)}
    assert not train & held


def test_task_from_dict_rejects_non_objects():
    with pytest.raises(ValueError, match='must be an object'):
        task_from_dict('goto')
