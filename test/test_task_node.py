"""
The task node over real rclpy: it plays a scenario against the sim node and a follower.

The graph is the bring-up description of `sim:=mujoco`, started by `vlit-ros run`'s
GraphRunner with a deterministic plug-in policy, on a ROS_DOMAIN_ID of its own. The episodes
must be the ones `vlit-ros eval` plays for the same seed and instructions.
"""

import json
from pathlib import Path
import subprocess
import sys
import time

import pytest
from std_msgs.msg import Float32, String
from test_sim_node import new_domain, Probe, ros_env

from vlit_ros import bringup
from vlit_ros.evaluation import evaluate
from vlit_ros.policies import load_plugin
from vlit_ros.qos import STREAM_QOS
from vlit_ros.run import GraphRunner
from vlit_ros.sim.episode import make_episode
from vlit_ros.sim.tasks import load_instructions

FIXTURES = Path(__file__).resolve().parent / 'fixtures'
POLICY = f'{FIXTURES / "follower_policies.py"}:ForwardHalfMetre'
# Start-up, two short episodes and shutdown; generous for a loaded 2-core machine.
SCENARIO_S = 120.0


def _play(tmp_path, episodes, seed, **parameters):
    """Run sim, task and follower until the task exits; return (codes, results, probe)."""
    config = bringup.BringupConfig(policy=POLICY, seed=seed, episodes=episodes,
                                   real_time_factor=3.0,
                                   results_path=str(tmp_path / 'results.json'),
                                   scenario=parameters.pop('scenario', ''))
    # The probe below listens to vlit/episode: the task waits for it before starting.
    graph = bringup.describe(config).with_parameters('task', min_episode_listeners=1,
                                                     **parameters)
    domain = new_domain()
    probe = Probe(domain, {'vlit/episode': (String, STREAM_QOS),
                           'reward': (Float32, STREAM_QOS)})
    runner = GraphRunner(graph, [bringup.default_params_file()], env=ros_env(domain),
                         log_dir=tmp_path / 'logs', echo=False)
    runner.start()
    try:
        ended = _wait_for_task(runner)
    finally:
        codes = runner.shutdown()
    logs = {p.stem: p.read_text() for p in (tmp_path / 'logs').iterdir()}
    assert ended, f'the task did not finish in {SCENARIO_S:g} s: {logs}'
    assert codes['task'] == 0, logs['task']
    return codes, json.loads((tmp_path / 'results.json').read_text()), probe, logs


def _wait_for_task(runner):
    deadline = time.monotonic() + SCENARIO_S
    runner.wait(lambda: 'task' in runner.exited() or time.monotonic() > deadline)
    return 'task' in runner.exited()


@pytest.fixture
def scenario_file(tmp_path):
    path = tmp_path / 'scenario.jsonl'
    path.write_text('{"text": "go forward half a meter", "task": {"type": "move", '
                    '"distance_m": 0.5}}\n'
                    '{"text": "turn around", "task": {"type": "turn", "angle_deg": 180}}\n')
    return path


def test_plays_a_scenario_judges_it_and_writes_results(tmp_path, scenario_file):
    codes, results, probe, logs = _play(tmp_path, 2, 7, scenario=str(scenario_file))
    try:
        instructions = load_instructions(scenario_file)
        # The episodes `vlit-ros eval` plays for this seed and file, and its schema.
        offline = evaluate(load_plugin(POLICY), 2, 7, instructions, progress=False)
        assert set(offline) <= set(results)
        expected = [make_episode(i, 7, instructions) for i in range(2)]
        episodes = results['episodes']
        assert [(e['index'], e['seed'], e['text'], e['task']) for e in episodes] == \
            [(s.index, s.seed, s.instruction.text, s.instruction.task.to_dict())
             for s in expected]
        # Half a metre forward, then stop: the move succeeds, the turn cannot.
        assert [(e['success'], e['reason']) for e in episodes] == \
            [(True, 'success'), (False, 'wrong_heading')]
        assert [(e['success'], e['reason']) for e in offline['episodes']] == \
            [(True, 'success'), (False, 'wrong_heading')]
        assert results['success_rate'] == 0.5 and results['episodes_total'] == 2
        assert results['per_family']['move']['success_rate'] == 1.0
        assert results['policy'] == POLICY and results['completed'] is True
        assert results['instructions'] == str(scenario_file)
        assert 'SUCCESS (success)' in logs['task'] and 'wrote' in logs['task']

        assert probe.wait_for(lambda: len(probe.messages['vlit/episode']) == 4)
        events = [json.loads(m.data) for _, m in probe.messages['vlit/episode']]
        assert [(e['event'], e['index']) for e in events] == \
            [('start', 0), ('end', 0), ('start', 1), ('end', 1)]
        assert all(e['layout'] == 'vlit_ros/episode/1' and e['episodes'] == 2 for e in events)
        assert events[0]['success'] is None and events[1]['success'] is True
        assert events[1]['duration'] == pytest.approx(episodes[0]['duration_s'], abs=1e-3)
        assert events[1]['time'] > events[0]['time']
        rewards = [m.data for _, m in probe.messages['reward']]
        assert len(rewards) == sum(e['steps'] for e in episodes)
        assert sum(rewards) == pytest.approx(sum(e['total_reward'] for e in episodes),
                                             abs=1e-3)
        assert all(code == 0 for code in codes.values()), codes
    finally:
        probe.close()


def test_plays_in_the_simulators_one_scene_without_resets(tmp_path):
    codes, results, probe, logs = _play(tmp_path, 2, 3, reset_scenes=False)
    probe.close()
    episodes = results['episodes']
    assert [e['seed'] for e in episodes] == [3, 3]
    assert [e['family'] for e in episodes] == ['goto', 'turn']
    assert 'loaded scene' not in logs['sim']


def test_a_bad_scenario_stops_the_node_at_start_up(tmp_path):
    bad = tmp_path / 'bad.jsonl'
    bad.write_text('{"text": "go to the pink cube", "task": {"type": "goto", '
                   '"color": "pink"}}\n')
    result = subprocess.run(
        [sys.executable, '-m', 'vlit_ros.nodes.task_node', '--ros-args', '-p',
         f'scenario:={bad}'], env=ros_env(new_domain()), capture_output=True, text=True,
        timeout=60)
    assert result.returncode == 2
    assert 'unknown colour' in result.stderr and 'bad.jsonl:1' in result.stderr


def test_families_choose_the_generated_instructions(tmp_path):
    codes, results, probe, logs = _play(tmp_path, 2, 11, families='move,turn')
    probe.close()
    episodes = results['episodes']
    expected = [make_episode(i, 11, families=('move', 'turn')) for i in range(2)]
    assert [e['family'] for e in episodes] == ['move', 'turn']
    assert [e['text'] for e in episodes] == [s.instruction.text for s in expected]


@pytest.mark.parametrize('parameter, message', [
    ('families:=goto,fly', "unknown families ['fly']"),
    ('families:=goto', 'families chooses generated instructions'),
])
def test_bad_families_stop_the_node_at_start_up(tmp_path, scenario_file, parameter, message):
    scenario = [] if 'fly' in parameter else ['-p', f'scenario:={scenario_file}']
    result = subprocess.run(
        [sys.executable, '-m', 'vlit_ros.nodes.task_node', '--ros-args', '-p', parameter]
        + scenario,
        env=ros_env(new_domain()), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr, result.stderr
