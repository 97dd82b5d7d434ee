"""
The sim node with the instruction follower: losing the simulator stops the robot.

Sim and follower come from the bring-up description and run as separate processes on a
ROS_DOMAIN_ID of their own; the test speaks the instruction and watches `cmd_vel`.
"""

import os
from pathlib import Path
import signal
import time

from geometry_msgs.msg import Twist
from std_msgs.msg import String
from test_sim_node import new_domain, Probe, ros_env

from vlit_ros import bringup
from vlit_ros.qos import COMMAND_QOS
from vlit_ros.run import GraphRunner

POLICY = f'{Path(__file__).resolve().parent / "fixtures" / "forward_policy.py"}:AlwaysForward'
STARTUP_S = 30.0


def test_killing_the_sim_leaves_the_follower_publishing_zeros(tmp_path):
    graph = bringup.describe(bringup.BringupConfig(policy=POLICY))
    graph = bringup.Graph(graph.config, (graph.node('sim'), graph.node('instruction_follower')))
    domain = new_domain()
    probe = Probe(domain, {'cmd_vel': (Twist, COMMAND_QOS)})
    speech = probe.node.create_publisher(String, 'speech/text', COMMAND_QOS)
    runner = GraphRunner(graph, [bringup.default_params_file()], env=ros_env(domain),
                         log_dir=tmp_path, echo=False)
    runner.start()
    try:
        assert probe.wait_for(lambda: speech.get_subscription_count() > 0, STARTUP_S)
        speech.publish(String(data='go forward'))
        assert probe.wait_for(lambda: probe.latest('cmd_vel') is not None and
                              probe.latest('cmd_vel').linear.x > 0.3, STARTUP_S), \
            (tmp_path / 'instruction_follower.log').read_text()
        os.kill(runner.processes['sim'].pid, signal.SIGKILL)
        killed = time.monotonic()
        # No frames: the follower's watchdog stops the robot (image_timeout_s 0.25 s).
        assert probe.wait_for(lambda: probe.latest('cmd_vel').linear.x == 0.0, 2.0)
        assert time.monotonic() - killed < 1.5
        time.sleep(1.0)
        after = probe.since('cmd_vel', time.monotonic() - 1.0)
        assert len(after) >= 5 and all(m.linear.x == 0.0 and m.angular.z == 0.0
                                       for m in after)
        assert runner.processes['instruction_follower'].poll() is None
    finally:
        codes = runner.shutdown()
        probe.close()
    assert codes['sim'] == -signal.SIGKILL
    assert codes['instruction_follower'] == 0
    assert 'safety stop: image stale' in (tmp_path / 'instruction_follower.log').read_text()
