"""
The built-in simulator node: the MuJoCo task world (`vlit_ros.sim.world.World`) over ROS 2.

A steady-clock timer steps the world one control period at a time, at `control_rate_hz` x
`real_time_factor` steps per wall second (0: as fast as the machine allows), and after each
step publishes the simulated clock, a camera frame and the odometry, all stamped with the
same simulated time. Simulated time never jumps back: a reset or a new scene continues the
clock where it was, so nodes with `use_sim_time` need no special handling.

Topics and services (relative names, DESIGN.md §2; QoS from `vlit_ros.qos`):

| direction | name | type | QoS |
| --- | --- | --- | --- |
| out | `/clock` | rosgraph_msgs/Clock | best effort, depth 1 (as rclcpp's ClockQoS) |
| out | `camera/image_raw` | sensor_msgs/Image, rgb8, frame `camera` | IMAGE_QOS |
| out | `camera/camera_info` | sensor_msgs/CameraInfo, K from the field of view | IMAGE_QOS |
| out | `odom` | nav_msgs/Odometry, `odom` -> `base_link`, zero at each reset | STREAM_QOS |
| out | `sim/ground_truth` | nav_msgs/Odometry, `world` -> `base_link` | STREAM_QOS |
| out | `sim/top_view` | sensor_msgs/Image rgb8 from above (`publish_top_view`) | IMAGE_QOS |
| out | `sim/status` | std_msgs/String JSON (layout below), at resets and pauses | LATCHED_QOS |
| out | `/diagnostics` | diagnostic_msgs/DiagnosticArray, 1 Hz | STREAM_QOS |
| in | `cmd_vel` | geometry_msgs/Twist (TwistStamped with `use_twist_stamped`) | COMMAND_QOS |
| in | `sim/scene` | std_msgs/String: a scene to load (layout below) | LATCHED_QOS |
| service | `sim/reset` | std_srvs/Trigger: restart the current scene | |
| service | `sim/pause` | std_srvs/SetBool: true pauses stepping, false resumes | |

Twist lengths in both odometry messages are in the body frame (x ahead, yaw rate about z).
The node holds the last `cmd_vel`; with none for `cmd_timeout_s` of wall time (a dead
controller) it drives a zero command, and it ignores commands with non-finite values.

`sim/scene` carries YAML or JSON (JSON is YAML): either a bare scene (`Scene.to_yaml()`) or
the mapping

    {"scene": "<Scene.to_yaml() text>",   # required
     "initial_twist": [0.4, 0.0],         # (v m/s, w rad/s) at the start; default [0, 0]
     "paused": true,                      # stay paused after loading; default false
     "id": "episode-3"}                   # echoed in sim/status; default ""

Loading resets the world to the scene's start pose, with `initial_twist` also held as the
command until a controller sends one, and publishes the state at the reset time at once
(also when paused), so subscribers see the new start before the first step.

`sim/status` JSON layout, version `vlit_ros/sim_status/1`:

    {"layout": "vlit_ros/sim_status/1",
     "scene_id": "episode-3",    # id of the last scene message ("" for the start-up scene)
     "scene_seed": 3, "resets": 4,
     "reset_time": 12.3,         # simulated time (s) of the last reset
     "time": 12.3,               # simulated time (s) now
     "paused": true, "shifted": false}
"""

import json
import math
import sys
import time
from typing import Optional, Tuple

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Twist, TwistStamped
from nav_msgs.msg import Odometry
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from vlit_ros.nodes.images import rgb_to_image
from vlit_ros.nodes.lifecycle import run_node, StartupError
from vlit_ros.nodes.params import declare_parameters, ParameterError, ParameterSpec
from vlit_ros.qos import CLOCK_QOS, COMMAND_QOS, IMAGE_QOS, LATCHED_QOS, STREAM_QOS
from vlit_ros.sim.scene import RobotSpec, Scene, SHIFT_DESCRIPTION
from vlit_ros.sim.world import World
import yaml

NODE_NAME = 'sim'
STATUS_LAYOUT = 'vlit_ros/sim_status/1'
CAMERA_FRAME = 'camera'
ODOM_FRAME = 'odom'
WORLD_FRAME = 'world'
BASE_FRAME = 'base_link'
DIAGNOSTICS_PERIOD_S = 1.0
LOG_THROTTLE_S = 5.0

PARAMETERS = (
    ParameterSpec('seed', 0, 'seed of the scene at start-up, until one arrives on sim/scene',
                  0, 2 ** 31 - 1),
    ParameterSpec('control_rate_hz', 10.0,
                  'world steps per simulated second; each step publishes one camera frame',
                  1.0, 100.0),
    ParameterSpec('real_time_factor', 1.0,
                  'simulated seconds per wall second (2.0: twice as fast as real time; '
                  '0: as fast as the machine allows)', 0.0, 1000.0),
    ParameterSpec('shifted', False,
                  'use the domain-shifted robot in every scene: ' + SHIFT_DESCRIPTION),
    ParameterSpec('cmd_timeout_s', 0.5,
                  'drive a zero command when no cmd_vel arrived for this long (wall seconds)',
                  0.01, 60.0),
    ParameterSpec('use_twist_stamped', False,
                  'subscribe cmd_vel as geometry_msgs/TwistStamped instead of Twist'),
    ParameterSpec('publish_top_view', False,
                  'also render and publish a top-down view of the arena on sim/top_view'),
    ParameterSpec('top_view_size', 256, 'side of the square top-down view (pixels)', 64, 1024),
    ParameterSpec('start_paused', False, 'wait for sim/pause (false) before the first step'),
)


def decode_scene_message(text: str) -> Tuple[Scene, Tuple[float, float], bool, str]:
    """Return (scene, initial_twist, paused, id) from a sim/scene payload; ValueError if bad."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f'not YAML or JSON: {exc}') from exc
    if not isinstance(data, dict):
        raise ValueError(f'expected a mapping, got {type(data).__name__}')
    if 'scene' not in data:
        return Scene.from_dict(data), (0.0, 0.0), False, ''
    unknown = set(data) - {'scene', 'initial_twist', 'paused', 'id'}
    if unknown:
        raise ValueError(f'unexpected key(s) {", ".join(sorted(unknown))}')
    scene_text = data['scene']
    scene = Scene.from_yaml(scene_text) if isinstance(scene_text, str) else \
        Scene.from_dict(scene_text)
    twist = data.get('initial_twist', (0.0, 0.0))
    if not isinstance(twist, (list, tuple)) or len(twist) != 2 or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) and
                    math.isfinite(v) for v in twist):
        raise ValueError(f'initial_twist must be two finite numbers [v, w], got {twist!r}')
    paused = data.get('paused', False)
    if not isinstance(paused, bool):
        raise ValueError(f'paused must be true or false, got {paused!r}')
    return scene, (float(twist[0]), float(twist[1])), paused, str(data.get('id', ''))


def encode_scene_message(scene: Scene, initial_twist: Tuple[float, float] = (0.0, 0.0),
                         paused: bool = False, scene_id: str = '') -> str:
    """Return the sim/scene payload that loads `scene`."""
    return json.dumps({'scene': scene.to_yaml(), 'initial_twist': list(initial_twist),
                       'paused': paused, 'id': scene_id})


def camera_info(robot: RobotSpec) -> CameraInfo:
    """Return the pinhole model of the robot's camera (no distortion, square pixels)."""
    width, height = robot.image_width, robot.image_height
    focal = (width / 2.0) / math.tan(math.radians(robot.camera_hfov_deg) / 2.0)
    cx, cy = width / 2.0, height / 2.0
    info = CameraInfo(width=width, height=height, distortion_model='plumb_bob')
    info.header.frame_id = CAMERA_FRAME
    info.d = [0.0] * 5
    info.k = [focal, 0.0, cx, 0.0, focal, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [focal, 0.0, cx, 0.0, 0.0, focal, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def _time_msg(seconds: float) -> Time:
    nanoseconds = int(round(seconds * 1e9))
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def _odometry_msg(stamp: Time, frame: str, pose, twist) -> Odometry:
    msg = Odometry()
    msg.header.stamp = stamp
    msg.header.frame_id = frame
    msg.child_frame_id = BASE_FRAME
    msg.pose.pose.position.x, msg.pose.pose.position.y = float(pose[0]), float(pose[1])
    msg.pose.pose.orientation.z = math.sin(pose[2] / 2.0)
    msg.pose.pose.orientation.w = math.cos(pose[2] / 2.0)
    msg.twist.twist.linear.x, msg.twist.twist.angular.z = float(twist[0]), float(twist[1])
    return msg


class SimNode(Node):
    """Step the MuJoCo world on a wall timer and publish what the robot senses."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        try:
            values = declare_parameters(self, PARAMETERS)
        except ParameterError as exc:
            raise StartupError(f'invalid parameters: {exc}') from exc
        self._values = values
        self._robot = RobotSpec().shifted() if values['shifted'] else None
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._world = World(Scene.generate(values['seed'], robot=self._robot),
                            control_rate_hz=values['control_rate_hz'])
        self._camera_info = camera_info(self._world.scene.robot)
        # Simulated time before the current episode: World.time restarts at each reset.
        self._time_offset = 0.0
        self._reset_time = 0.0
        self._resets = 0
        self._scene_id = ''
        self._initial_twist = (0.0, 0.0)
        self._paused = values['start_paused']
        self._command = (0.0, 0.0)
        self._command_time: Optional[float] = None
        self._command_timed_out = False
        self._steps = 0
        self._rate_window = (self._now_steady(), 0.0)  # (wall, simulated) at the last report

        self._clock_pub = self.create_publisher(ClockMsg, '/clock', CLOCK_QOS)
        self._image_pub = self.create_publisher(Image, 'camera/image_raw', IMAGE_QOS)
        self._info_pub = self.create_publisher(CameraInfo, 'camera/camera_info', IMAGE_QOS)
        self._odom_pub = self.create_publisher(Odometry, 'odom', STREAM_QOS)
        self._truth_pub = self.create_publisher(Odometry, 'sim/ground_truth', STREAM_QOS)
        self._status_pub = self.create_publisher(String, 'sim/status', LATCHED_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', STREAM_QOS)
        self._top_pub = self.create_publisher(Image, 'sim/top_view', IMAGE_QOS) \
            if values['publish_top_view'] else None
        command_type = TwistStamped if values['use_twist_stamped'] else Twist
        self.create_subscription(command_type, 'cmd_vel', self._on_command, COMMAND_QOS)
        self.create_subscription(String, 'sim/scene', self._on_scene, LATCHED_QOS)
        self.create_service(Trigger, 'sim/reset', self._on_reset)
        self.create_service(SetBool, 'sim/pause', self._on_pause)
        rate = values['control_rate_hz'] * values['real_time_factor']
        self.create_timer(1.0 / rate if rate > 0 else 0.0, self._on_step, clock=self._steady)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._on_diagnostics, clock=self._steady)
        self._publish_state()
        self._publish_status()
        speed = f'{values["real_time_factor"]:g}x real time' if rate > 0 else \
            'as fast as possible'
        self.get_logger().info(
            f'simulating scene {values["seed"]} at {values["control_rate_hz"]:g} Hz, {speed}'
            f'{", shifted robot" if self._robot else ""}'
            f'{", paused" if self._paused else ""}; cmd_vel as {command_type.__name__}')

    # -- time -----------------------------------------------------------------------------

    def _now_steady(self) -> float:
        return self._steady.now().nanoseconds * 1e-9

    @property
    def sim_time(self) -> float:
        """Return the simulated seconds since the node started; never goes back."""
        return self._time_offset + self._world.time

    # -- inputs ---------------------------------------------------------------------------

    def _on_command(self, msg) -> None:
        twist = msg.twist if isinstance(msg, TwistStamped) else msg
        command = (twist.linear.x, twist.angular.z)
        if not all(math.isfinite(v) for v in command):
            self.get_logger().warning(f'ignored non-finite cmd_vel {command}',
                                      throttle_duration_sec=LOG_THROTTLE_S)
            return
        self._command = command
        self._command_time = self._now_steady()
        if self._command_timed_out:
            self._command_timed_out = False
            self.get_logger().info('cmd_vel is back')

    def _on_scene(self, msg: String) -> None:
        try:
            scene, twist, paused, scene_id = decode_scene_message(msg.data)
            if self._robot is not None:
                scene = scene.with_robot(self._robot)
        except ValueError as exc:
            self.get_logger().error(f'rejected scene on sim/scene: {exc}')
            return
        self._paused = paused
        self._scene_id = scene_id
        self._reset(scene, twist)
        self.get_logger().info(f'loaded scene {scene.seed}'
                               f'{f" ({scene_id})" if scene_id else ""}'
                               f'{", paused" if paused else ""}')

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response):
        self._reset(self._world.scene, self._initial_twist)
        response.success = True
        response.message = f'scene {self._world.scene.seed} restarted at t={self.sim_time:.3f}'
        return response

    def _on_pause(self, request: SetBool.Request, response: SetBool.Response):
        if request.data != self._paused:
            self._paused = request.data
            self._publish_status()
        response.success = True
        response.message = f'{"paused" if self._paused else "running"} at ' \
                           f't={self.sim_time:.3f}'
        return response

    def _reset(self, scene: Scene, initial_twist: Tuple[float, float]) -> None:
        self._time_offset += self._world.time
        self._world.reset(scene=scene, initial_twist=initial_twist)
        self._camera_info = camera_info(scene.robot)
        self._initial_twist = initial_twist
        # The robot keeps the initial motion until a controller says otherwise.
        self._command = initial_twist
        self._command_time = self._now_steady()
        self._reset_time = self.sim_time
        self._resets += 1
        self._publish_state()
        self._publish_status()

    # -- stepping -------------------------------------------------------------------------

    def _on_step(self) -> None:
        if self._paused:
            return
        command = self._command
        if self._command_stale():
            if not self._command_timed_out and command != (0.0, 0.0):
                self._command_timed_out = True
                self.get_logger().warning(f'no cmd_vel for {self._values["cmd_timeout_s"]:g} '
                                          's: stopping the robot')
            command = (0.0, 0.0)
        self._world.step(command)
        self._steps += 1
        self._publish_state()

    def _command_stale(self) -> bool:
        return self._command_time is None or \
            self._now_steady() - self._command_time > self._values['cmd_timeout_s']

    def _publish_state(self) -> None:
        """Publish the clock, the sensors and the ground truth at the current simulated time."""
        stamp = _time_msg(self.sim_time)
        self._clock_pub.publish(ClockMsg(clock=stamp))
        world = self._world
        self._image_pub.publish(rgb_to_image(world.render(), stamp, CAMERA_FRAME))
        self._camera_info.header.stamp = stamp
        self._info_pub.publish(self._camera_info)
        odometry = world.odometry()
        self._odom_pub.publish(_odometry_msg(stamp, ODOM_FRAME, odometry.as_tuple()[:3],
                                             (odometry.v, odometry.w)))
        self._truth_pub.publish(_odometry_msg(stamp, WORLD_FRAME, world.pose(),
                                              world.body_velocity()))
        if self._top_pub is not None:
            self._top_pub.publish(rgb_to_image(world.render_top(self._values['top_view_size']),
                                               stamp, WORLD_FRAME))

    def _publish_status(self) -> None:
        status = {'layout': STATUS_LAYOUT, 'scene_id': self._scene_id,
                  'scene_seed': self._world.scene.seed, 'resets': self._resets,
                  'reset_time': round(self._reset_time, 6), 'time': round(self.sim_time, 6),
                  'paused': self._paused,
                  'shifted': self._world.scene.robot == RobotSpec().shifted()}
        self._status_pub.publish(String(data=json.dumps(status)))

    def _on_diagnostics(self) -> None:
        now = self._now_steady()
        wall_before, sim_before = self._rate_window
        self._rate_window = (now, self.sim_time)
        # Resets move the offset, not the total, so the difference is the time stepped.
        factor = (self.sim_time - sim_before) / max(now - wall_before, 1e-9)
        status = DiagnosticStatus(name=f'{self.get_name()}: simulation', hardware_id='mujoco',
                                  level=DiagnosticStatus.OK)
        status.message = 'paused' if self._paused else f'running at {factor:.1f}x real time'
        if self._command_stale() and not self._paused:
            status.level = DiagnosticStatus.WARN
            status.message = 'no cmd_vel: robot stopped'
        age = 'none' if self._command_time is None else f'{now - self._command_time:.3f}'
        values = {
            'sim_time_s': f'{self.sim_time:.3f}',
            'real_time_factor': f'{factor:.2f}',
            'real_time_factor_requested': f'{self._values["real_time_factor"]:g}',
            'steps': str(self._steps),
            'scene_seed': str(self._world.scene.seed),
            'scene_id': self._scene_id,
            'paused': str(self._paused),
            'command': f'{self._command[0]:.3f} {self._command[1]:.3f}',
            'command_age_s': age,
        }
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = _time_msg(self.sim_time)
        self._diag_pub.publish(array)

    def close(self) -> None:
        """Release the renderers."""
        self._world.close()


def main(args=None) -> int:
    """Run the node; return non-zero when it cannot start."""
    started = time.monotonic()

    def stop(node):
        node.get_logger().info(f'stopping after {node.sim_time:.1f} s simulated in '
                               f'{time.monotonic() - started:.1f} s')
        node.close()
    return run_node(SimNode, NODE_NAME, args, stop=stop)


if __name__ == '__main__':
    sys.exit(main())
