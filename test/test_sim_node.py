"""
The sim node over real rclpy: its topics, its clock, commands, resets, scenes and pauses.

Each test starts the node as its own process and talks to it from a fresh rclpy Context in
the test process, on a ROS_DOMAIN_ID of its own with localhost-only discovery, so parallel
runs do not cross-talk. `Probe` and `ros_env` are shared with the other bring-up tests.
"""

import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import NodeNameNonExistentError
from rclpy.signals import SignalHandlerOptions
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from vlit_ros.core.follower_logic import yaw_from_quaternion
from vlit_ros.nodes.sim_node import camera_info, decode_scene_message, encode_scene_message
from vlit_ros.qos import COMMAND_QOS, IMAGE_QOS, LATCHED_QOS, STREAM_QOS
from vlit_ros.sim.scene import RobotSpec, Scene

# Process start-up and discovery on a loaded 2-core machine take seconds.
STARTUP_S = 30.0
EVENT_S = 5.0


def ros_env(domain):
    """Return the environment of a process on `domain` with localhost-only discovery."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED='1',
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', MUJOCO_GL='egl')
    env.pop('ROS_LOCALHOST_ONLY', None)
    return env


def new_domain():
    return random.SystemRandom().randint(1, 100)


class Probe:
    """A test node on a domain of its own that records what arrives on given topics."""

    def __init__(self, domain, topics, namespace=''):
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node('probe', context=self.context,
                                      namespace=namespace or None)
        self.lock = threading.RLock()
        self.messages = {}
        self.subscriptions = {}
        for name, (msg_type, qos) in topics.items():
            self.subscribe(name, msg_type, qos)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    def subscribe(self, name, msg_type, qos):
        """Record `name` from now on too (a subscription added after the others)."""
        with self.lock:
            self.messages[name] = []
        self.subscriptions[name] = self.node.create_subscription(
            msg_type, name, lambda msg, name=name: self._store(name, msg), qos)

    def _store(self, name, msg):
        with self.lock:
            self.messages[name].append((time.monotonic(), msg))

    def latest(self, name):
        with self.lock:
            return self.messages[name][-1][1] if self.messages[name] else None

    def since(self, name, since):
        with self.lock:
            return [m for t, m in self.messages[name] if t >= since]

    def wait_for(self, predicate, timeout=EVENT_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate():
                    return True
            time.sleep(0.02)
        with self.lock:
            return bool(predicate())

    def call(self, service_type, name, request, timeout=STARTUP_S):
        client = self.node.create_client(service_type, name)
        assert client.wait_for_service(timeout_sec=timeout), name
        future = client.call_async(request)
        assert self.wait_for(future.done), name
        self.node.destroy_client(client)
        return future.result()

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.spinner.join(timeout=5)


class NodeProcess:
    """A node started as `python -m MODULE --ros-args ...`, its output in a temporary file."""

    def __init__(self, module, domain, ros_args=()):
        self.log = tempfile.NamedTemporaryFile('w+', suffix='.log')
        self.proc = subprocess.Popen([sys.executable, '-m', module, '--ros-args', *ros_args],
                                     env=ros_env(domain), stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def output(self):
        self.log.flush()
        with open(self.log.name) as log:
            return log.read()

    def stop(self, sig=subprocess.signal.SIGINT, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def seconds(stamp):
    return stamp.sec + stamp.nanosec * 1e-9


def pose_of(odometry):
    p, q = odometry.pose.pose.position, odometry.pose.pose.orientation
    return p.x, p.y, yaw_from_quaternion(q.x, q.y, q.z, q.w)


SIM_TOPICS = {
    '/clock': (Clock, IMAGE_QOS),
    'camera/image_raw': (Image, IMAGE_QOS),
    'camera/camera_info': (CameraInfo, IMAGE_QOS),
    'odom': (Odometry, STREAM_QOS),
    'sim/ground_truth': (Odometry, STREAM_QOS),
    'sim/status': (String, LATCHED_QOS),
}


@pytest.fixture
def sim_graph():
    """Start a sim node with extra `-p` parameters; return (process, probe)."""
    started = []

    def start(*params, topics=SIM_TOPICS):
        domain = new_domain()
        ros_args = [arg for param in params for arg in ('-p', param)]
        process = NodeProcess('vlit_ros.nodes.sim_node', domain, ros_args)
        probe = Probe(domain, topics)
        started.append((process, probe))
        assert probe.wait_for(lambda: probe.messages['sim/status'], STARTUP_S), \
            process.output()
        return process, probe
    yield start
    for process, probe in started:
        probe.close()
        assert process.stop() == 0, process.output()


def test_publishes_the_sensors_with_sim_time_and_advances_the_clock(sim_graph):
    process, probe = sim_graph('seed:=3', 'real_time_factor:=2.0')
    node = probe.node
    expected = {
        '/clock': ['rosgraph_msgs/msg/Clock'],
        '/camera/image_raw': ['sensor_msgs/msg/Image'],
        '/camera/camera_info': ['sensor_msgs/msg/CameraInfo'],
        '/odom': ['nav_msgs/msg/Odometry'],
        '/sim/ground_truth': ['nav_msgs/msg/Odometry'],
        '/sim/status': ['std_msgs/msg/String'],
        '/diagnostics': ['diagnostic_msgs/msg/DiagnosticArray'],
    }

    def graph_matches():
        try:
            publishers = dict(node.get_publisher_names_and_types_by_node('sim', '/'))
            subscriptions = dict(node.get_subscriber_names_and_types_by_node('sim', '/'))
            services = dict(node.get_service_names_and_types_by_node('sim', '/'))
        except NodeNameNonExistentError:
            return False  # not discovered yet
        return all(publishers.get(k) == v for k, v in expected.items()) and \
            subscriptions.get('/cmd_vel') == ['geometry_msgs/msg/Twist'] and \
            subscriptions.get('/sim/scene') == ['std_msgs/msg/String'] and \
            services.get('/sim/reset') == ['std_srvs/srv/Trigger'] and \
            services.get('/sim/pause') == ['std_srvs/srv/SetBool']
    assert probe.wait_for(graph_matches, STARTUP_S)
    assert probe.wait_for(lambda: all(probe.messages[t] for t in SIM_TOPICS), EVENT_S)
    first = seconds(probe.latest('/clock').clock)
    time.sleep(1.0)
    advanced = seconds(probe.latest('/clock').clock) - first
    # 2x real time asked; a loaded machine may lag, but simulated time must move on.
    assert 0.3 < advanced < 3.0, advanced

    image = probe.latest('camera/image_raw')
    assert (image.width, image.height, image.encoding, image.header.frame_id) == \
        (128, 96, 'rgb8', 'camera')
    stamps = {seconds(m.clock) for m in probe.since('/clock', 0.0)}
    assert seconds(image.header.stamp) in stamps
    info = probe.latest('camera/camera_info')
    assert list(info.k) == pytest.approx([64.0, 0, 64.0, 0, 64.0, 48.0, 0, 0, 1])
    odom, truth = probe.latest('odom'), probe.latest('sim/ground_truth')
    assert (odom.header.frame_id, odom.child_frame_id) == ('odom', 'base_link')
    assert (truth.header.frame_id, truth.child_frame_id) == ('world', 'base_link')
    scene = Scene.generate(3)
    # No command: the robot stands at the scene's start pose.
    assert pose_of(truth) == pytest.approx((scene.robot_x, scene.robot_y, scene.robot_yaw),
                                           abs=1e-3)
    assert pose_of(odom) == pytest.approx((0.0, 0.0, 0.0), abs=1e-3)
    status = json.loads(probe.latest('sim/status').data)
    assert status['layout'] == 'vlit_ros/sim_status/1'
    assert (status['scene_seed'], status['paused'], status['shifted']) == (3, False, False)


def test_commands_drive_time_out_and_reset_restarts(sim_graph):
    process, probe = sim_graph('seed:=2', 'real_time_factor:=2.0')
    commands = probe.node.create_publisher(Twist, 'cmd_vel', COMMAND_QOS)
    forward = Twist()
    forward.linear.x = 0.4
    bad = Twist()
    bad.linear.x = math.nan
    for _ in range(15):
        commands.publish(forward)
        time.sleep(0.1)
    commands.publish(bad)
    assert probe.wait_for(lambda: pose_of(probe.latest('odom'))[0] > 0.3), process.output()
    truth = probe.latest('sim/ground_truth')
    assert truth.twist.twist.linear.x > 0.3
    # No more commands: after cmd_timeout_s the robot brakes to a halt.
    assert probe.wait_for(lambda: abs(probe.latest('odom').twist.twist.linear.x) < 1e-3,
                          EVENT_S), process.output()
    output = process.output()
    assert 'ignored non-finite cmd_vel' in output and 'no cmd_vel for 0.5 s' in output

    response = probe.call(Trigger, 'sim/reset', Trigger.Request())
    assert response.success and 'scene 2 restarted' in response.message
    scene = Scene.generate(2)
    assert probe.wait_for(lambda: pose_of(probe.latest('odom'))[0] < 1e-3)
    assert pose_of(probe.latest('sim/ground_truth')) == pytest.approx(
        (scene.robot_x, scene.robot_y, scene.robot_yaw), abs=1e-3)
    assert json.loads(probe.latest('sim/status').data)['resets'] == 1


def test_a_scene_message_loads_paused_and_the_pause_service_resumes(sim_graph):
    process, probe = sim_graph('real_time_factor:=2.0', 'shifted:=true')
    scenes = probe.node.create_publisher(String, 'sim/scene', LATCHED_QOS)
    scenes.publish(String(data='objects: [not, a, scene]'))
    assert probe.wait_for(lambda: 'rejected scene on sim/scene' in process.output())
    scene = Scene.generate(5)
    scenes.publish(String(data=encode_scene_message(scene, (0.3, 0.0), paused=True,
                                                    scene_id='test-5')))

    def loaded():
        status = json.loads(probe.latest('sim/status').data)
        return status['scene_id'] == 'test-5'
    assert probe.wait_for(loaded), process.output()
    status = json.loads(probe.latest('sim/status').data)
    assert (status['scene_seed'], status['paused'], status['shifted']) == (5, True, True)
    start = (scene.robot_x, scene.robot_y, scene.robot_yaw)
    assert probe.wait_for(lambda: pose_of(probe.latest('sim/ground_truth')) ==
                          pytest.approx(start, abs=1e-3))
    clock = seconds(probe.latest('/clock').clock)
    assert clock == pytest.approx(status['reset_time'], abs=1e-6)
    time.sleep(0.5)
    assert seconds(probe.latest('/clock').clock) == clock, 'the clock ran while paused'

    response = probe.call(SetBool, 'sim/pause', SetBool.Request(data=False))
    assert response.success and response.message.startswith('running')
    assert probe.wait_for(lambda: seconds(probe.latest('/clock').clock) > clock + 0.3)
    # The initial twist carries the robot forward until the command times out (about 2 cm in
    # the shifted world, whose left wheel is 55% weaker).
    moved = probe.latest('sim/ground_truth').pose.pose.position
    assert math.hypot(moved.x - scene.robot_x, moved.y - scene.robot_y) > 0.01
    assert not json.loads(probe.latest('sim/status').data)['paused']


def test_invalid_parameters_exit_with_a_message():
    process = NodeProcess('vlit_ros.nodes.sim_node', new_domain(),
                          ['-p', 'real_time_factor:=-1.0'])
    assert process.proc.wait(timeout=60) == 2
    assert 'parameter real_time_factor must lie in' in process.output()


def test_scene_messages_round_trip_and_reject_nonsense():
    scene = Scene.generate(9)
    text = encode_scene_message(scene, (0.4, -0.2), paused=True, scene_id='a')
    assert decode_scene_message(text) == (scene, (0.4, -0.2), True, 'a')
    # A bare scene is a message too.
    assert decode_scene_message(scene.to_yaml()) == (scene, (0.0, 0.0), False, '')
    for bad, message in [
            ('[1, 2]', 'expected a mapping'),
            ('{"scene": "x", "foo": 1}', 'unexpected key'),
            (json.dumps({'scene': scene.to_yaml(), 'initial_twist': [1]}), 'initial_twist'),
            (json.dumps({'scene': scene.to_yaml(), 'paused': 'yes'}), 'paused'),
            ('{unclosed', 'not YAML')]:
        with pytest.raises(ValueError, match=message):
            decode_scene_message(bad)


def test_camera_info_follows_the_field_of_view():
    info = camera_info(RobotSpec(camera_hfov_deg=60.0, image_width=160, image_height=120))
    focal = 80.0 / math.tan(math.radians(30.0))
    assert (info.width, info.height) == (160, 120)
    assert list(info.k) == pytest.approx([focal, 0, 80.0, 0, focal, 60.0, 0, 0, 1])
    assert list(info.p)[:3] == pytest.approx([focal, 0, 80.0])
