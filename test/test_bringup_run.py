"""
`vlit-ros run` over real rclpy: two robots side by side in their own namespaces.

Each robot is a whole `vlit-ros run sim:=mujoco` graph (sim, task, follower) with its own
plug-in policy and a one-episode scenario that only that policy solves; both share one
ROS_DOMAIN_ID, so only the namespaces keep them apart.
"""

import json
from pathlib import Path
import signal
import subprocess
import sys
import time

from geometry_msgs.msg import Twist
from std_msgs.msg import String
from test_sim_node import new_domain, Probe, ros_env

from vlit_ros import bringup
from vlit_ros.qos import COMMAND_QOS, STREAM_QOS
import yaml

FIXTURES = Path(__file__).resolve().parent / 'fixtures'
SCENARIO_S = 120.0
GRAPH_S = 20.0
ROBOTS = {
    'robot1': (f'{FIXTURES / "bringup_policies.py"}:QuarterTurnLeft',
               '{"text": "turn left", "task": {"type": "turn", "angle_deg": 90}}'),
    'robot2': (f'{FIXTURES / "follower_policies.py"}:ForwardHalfMetre',
               '{"text": "go forward half a meter", "task": {"type": "move", '
               '"distance_m": 0.5}}'),
}


def _subscribers(probe, robot):
    return {(s.node_name, s.node_namespace) for s in
            probe.node.get_subscriptions_info_by_topic(f'/{robot}/cmd_vel')}


def test_two_namespaced_robots_do_not_interfere(tmp_path):
    domain = new_domain()
    topics = {}
    for robot in ROBOTS:
        topics[f'/{robot}/vlit/action'] = (String, STREAM_QOS)
        topics[f'/{robot}/cmd_vel'] = (Twist, COMMAND_QOS)
    probe = Probe(domain, topics)
    # Each task waits for a listener on its vlit/episode before the first episode; the probe
    # subscribes there only once it is matched with both followers' vlit/action, so no report
    # of the short episodes goes out before the probe can hear it (discovery lags under load).
    params = tmp_path / 'params.yaml'
    values = yaml.safe_load(bringup.default_params_file().read_text())
    values['/**/task']['ros__parameters']['min_episode_listeners'] = 1
    params.write_text(yaml.safe_dump(values))
    runs = {}
    # Real time, not faster: under load a lagging frame or odometry message at 2x let the
    # half-metre robot overshoot its goal (one CI run in three, twentieth session).
    try:
        for robot, (policy, line) in ROBOTS.items():
            scenario = tmp_path / f'{robot}.jsonl'
            scenario.write_text(line + '\n')
            log = open(tmp_path / f'{robot}.log', 'w')
            runs[robot] = (subprocess.Popen(
                [sys.executable, '-m', 'vlit_ros.cli', 'run', 'sim:=mujoco',
                 f'namespace:={robot}', f'policy:={policy}', f'scenario:={scenario}',
                 f'params_file:={params}',
                 'episodes:=1', 'real_time_factor:=1.0',
                 f'results_path:={tmp_path / robot}.json'],
                env=ros_env(domain), stdout=log, stderr=subprocess.STDOUT), log)
        assert probe.wait_for(lambda: all(
            probe.subscriptions[f'/{robot}/vlit/action'].get_publisher_count() >= 1
            for robot in ROBOTS), timeout=GRAPH_S)
        for robot in ROBOTS:
            probe.subscribe(f'/{robot}/vlit/episode', String, STREAM_QOS)
        deadline = time.monotonic() + SCENARIO_S
        while time.monotonic() < deadline and \
                not all((tmp_path / f'{robot}.json').exists() for robot in ROBOTS):
            assert all(p.poll() is None for p, _ in runs.values())
            time.sleep(0.2)
        for robot, (policy, _) in ROBOTS.items():
            output = (tmp_path / f'{robot}.log').read_text()
            results = json.loads((tmp_path / f'{robot}.json').read_text())
            # Each policy solves only its own robot's task: any crossed command fails it.
            assert results['success_rate'] == 1.0, output
            assert results['policy'] == policy
            reports = [json.loads(m.data) for _, m in probe.messages[f'/{robot}/vlit/action']]
            assert reports and {r['policy'] for r in reports} == {policy}
            # The probe's graph cache fills in by discovery, which lags on a loaded machine:
            # wait for the sim's subscription rather than read the graph once.
            assert probe.wait_for(lambda: ('sim', f'/{robot}') in _subscribers(probe, robot),
                                  timeout=GRAPH_S), _subscribers(probe, robot)
            publishers = probe.node.get_publishers_info_by_topic(f'/{robot}/cmd_vel')
            assert [(p.node_name, p.node_namespace) for p in publishers] == \
                [('instruction_follower', f'/{robot}')]
            subscribers = _subscribers(probe, robot)
            assert not any(ns == f'/{other}' for _, ns in subscribers for other in ROBOTS
                           if other != robot)
    finally:
        for process, log in runs.values():
            process.send_signal(signal.SIGINT)
        codes = {robot: p.wait(timeout=60) for robot, (p, _) in runs.items()}
        for _, log in runs.values():
            log.close()
        probe.close()
    for robot in ROBOTS:
        output = (tmp_path / f'{robot}.log').read_text()
        assert codes[robot] == 0, output
        assert 'sim exited with 0, task exited with 0, instruction_follower exited with 0' \
            in output
        # Each follower stopped its own robot on the way out.
        last = probe.messages[f'/{robot}/cmd_vel'][-1][1]
        assert (last.linear.x, last.angular.z) == (0.0, 0.0)
