"""
The MuJoCo task world: a differential-drive robot with a camera in a seeded arena.

`World` is pure Python (no ROS). One `step` is one control period (0.1 s at 10 Hz): the
commanded twist goes through the drive model (acceleration limits, per-wheel gains) and
drives velocity servos on the planar base joints; MuJoCo resolves contacts with walls and
objects. Rendering is off-screen (set MUJOCO_GL=egl on a headless machine) and only happens
when an image is asked for, so policies that do not look cost no rendering time.
"""

from dataclasses import dataclass
import math
import os
from typing import Optional, Sequence, Set, Tuple, Union

import numpy as np

from vlit_ros.core.actions import ActionParams, CONTROL_RATE_HZ
from vlit_ros.core.geometry import Pose2D, relative_pose, wrap_angle
from vlit_ros.sim import mjcf
from vlit_ros.sim.scene import RobotSpec, Scene

# Headless machines have no display: EGL renders off-screen. Respect an explicit choice.
os.environ.setdefault('MUJOCO_GL', 'egl')
import mujoco  # noqa: E402,I100  (must follow the MUJOCO_GL default above)

from vlit_ros.sim.rendering import CameraRenderer  # noqa: E402,I100

Command = Union[str, Tuple[float, float], Sequence[float]]


@dataclass(frozen=True)
class Odometry:
    """Wheel odometry in the odometry frame (the robot's pose at reset)."""

    x: float
    y: float
    yaw: float
    # body-frame forward speed (m/s) and yaw rate (rad/s)
    v: float
    w: float

    def as_tuple(self) -> Tuple[float, float, float, float, float]:
        return (self.x, self.y, self.yaw, self.v, self.w)


class World:
    """A simulated arena with one robot; deterministic for a scene and command sequence."""

    def __init__(self, scene: Optional[Scene] = None, robot: Optional[RobotSpec] = None,
                 action_params: Optional[ActionParams] = None,
                 control_rate_hz: float = CONTROL_RATE_HZ):
        if not 1.0 <= control_rate_hz <= 100.0:
            raise ValueError(f'control_rate_hz must be in [1, 100], got {control_rate_hz}')
        self.action_params = action_params or ActionParams()
        self.control_period = 1.0 / control_rate_hz
        self._substeps = max(1, int(round(self.control_period / mjcf.PHYSICS_TIMESTEP)))
        self._model = None
        self._data = None
        self._renderers = {}
        self._scene = None
        self.reset(scene=scene or Scene.generate(0, robot=robot))

    # -- set-up ---------------------------------------------------------------------------

    def reset(self, seed: Optional[int] = None, scene: Optional[Scene] = None,
              robot: Optional[RobotSpec] = None,
              initial_twist: Tuple[float, float] = (0.0, 0.0)) -> Scene:
        """
        Start a new episode in a scene (built from `seed` when no scene is given).

        `initial_twist` starts the robot already moving (v m/s, w rad/s), e.g. for `stop`.
        """
        if scene is None:
            scene = Scene.generate(seed if seed is not None else self._scene.seed,
                                   robot=robot or (self._scene.robot if self._scene else None))
        elif robot is not None:
            scene = scene.with_robot(robot)
        if scene != self._scene:
            self._build(scene)
        mujoco.mj_resetData(self._model, self._data)
        self._data.qpos[self._qadr] = (scene.robot_x, scene.robot_y, scene.robot_yaw)
        v0, w0 = (float(initial_twist[0]), float(initial_twist[1]))
        self._cmd = (v0, w0)
        self._drive = (v0, w0)
        self._set_servo_targets()
        self._data.qvel[:] = self._world_velocity()
        mujoco.mj_forward(self._model, self._data)
        self._touched: Set[str] = set()
        self._odom_origin = self.pose()
        return scene

    def _build(self, scene: Scene) -> None:
        self._close_renderers()
        self._model = mujoco.MjModel.from_xml_string(mjcf.build_mjcf(scene))
        self._data = mujoco.MjData(self._model)
        self._scene = scene
        self._robot_geom = mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_GEOM,
                                             mjcf.ROBOT_GEOM)
        self._object_geoms = {
            mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_GEOM,
                              mjcf.object_geom_name(o)): o.name
            for o in scene.objects}
        self._qadr = [self._model.jnt_qposadr[mujoco.mj_name2id(
            self._model, mujoco.mjtObj.mjOBJ_JOINT, name)] for name in
            ('base_x', 'base_y', 'base_yaw')]

    @property
    def scene(self) -> Scene:
        return self._scene

    @property
    def time(self) -> float:
        """Return simulated seconds since reset."""
        return float(self._data.time)

    # -- stepping -------------------------------------------------------------------------

    def step(self, command: Command) -> None:
        """Advance one control period with an action name or a (v, w) twist."""
        if isinstance(command, str):
            v, w = self.action_params.twist(command)
        else:
            if len(command) != 2:
                raise ValueError(f'a twist command is (v, w), got {command!r}')
            v, w = float(command[0]), float(command[1])
            if not (math.isfinite(v) and math.isfinite(w)):
                raise ValueError(f'twist command must be finite, got ({v}, {w})')
        self._cmd = (v, w)
        for _ in range(self._substeps):
            self._advance_drive(mjcf.PHYSICS_TIMESTEP)
            self._set_servo_targets()
            mujoco.mj_step(self._model, self._data)
            self._record_contacts()

    def _advance_drive(self, dt: float) -> None:
        """Rate-limit the body twist toward the command, as motor controllers do."""
        robot = self._scene.robot
        v, w = self._drive
        dv = np.clip(self._cmd[0] - v, -robot.max_linear_accel * dt, robot.max_linear_accel * dt)
        dw = np.clip(self._cmd[1] - w, -robot.max_angular_accel * dt,
                     robot.max_angular_accel * dt)
        self._drive = (float(v + dv), float(w + dw))

    def _wheel_twist(self) -> Tuple[float, float]:
        """Body twist the wheels actually produce, after per-wheel gains."""
        robot = self._scene.robot
        v, w = self._drive
        half_base = robot.wheel_base / 2.0
        left = (v - w * half_base) * robot.left_wheel_gain
        right = (v + w * half_base) * robot.right_wheel_gain
        return (left + right) / 2.0, (right - left) / robot.wheel_base

    def _world_velocity(self) -> np.ndarray:
        v, w = self._wheel_twist()
        yaw = self._data.qpos[self._qadr[2]]
        return np.array([v * math.cos(yaw), v * math.sin(yaw), w])

    def _set_servo_targets(self) -> None:
        self._data.ctrl[:] = self._world_velocity()

    def _record_contacts(self) -> None:
        for i in range(self._data.ncon):
            contact = self._data.contact[i]
            for a, b in ((contact.geom1, contact.geom2), (contact.geom2, contact.geom1)):
                if a == self._robot_geom and b in self._object_geoms:
                    self._touched.add(self._object_geoms[b])

    # -- state ----------------------------------------------------------------------------

    def pose(self) -> Pose2D:
        """Ground-truth robot pose in the world frame (x, y, yaw)."""
        qpos = self._data.qpos
        return (float(qpos[self._qadr[0]]), float(qpos[self._qadr[1]]),
                wrap_angle(float(qpos[self._qadr[2]])))

    @property
    def command(self) -> Tuple[float, float]:
        """Return the (v, w) twist last commanded (what the previous action asked for)."""
        return self._cmd

    def body_velocity(self) -> Tuple[float, float]:
        """Ground-truth forward speed (m/s) and yaw rate (rad/s) in the body frame."""
        qvel = self._data.qvel
        yaw = self.pose()[2]
        vx, vy = float(qvel[0]), float(qvel[1])
        return (vx * math.cos(yaw) + vy * math.sin(yaw), float(qvel[2]))

    def odometry(self) -> Odometry:
        """Wheel odometry: pose relative to the pose at reset, and body velocity."""
        x, y, yaw = relative_pose(self._odom_origin, self.pose())
        v, w = self.body_velocity()
        return Odometry(x, y, yaw, v, w)

    def touched_objects(self) -> Set[str]:
        """Names (`color_shape`) of the objects the robot has touched since reset."""
        return set(self._touched)

    def is_stopped(self, linear_tol: float = 0.02, angular_tol: float = 0.05) -> bool:
        v, w = self.body_velocity()
        return abs(v) < linear_tol and abs(w) < angular_tol and \
            abs(self._cmd[0]) < 1e-9 and abs(self._cmd[1]) < 1e-9

    # -- rendering ------------------------------------------------------------------------

    def render(self) -> np.ndarray:
        """Render the robot's front camera: H x W x 3 uint8 RGB."""
        robot = self._scene.robot
        return self._render(mjcf.FRONT_CAMERA, robot.image_height, robot.image_width)

    def render_top(self, size: int = 256) -> np.ndarray:
        """Render a top-down view of the whole arena (for videos)."""
        return self._render(mjcf.TOP_CAMERA, size, size)

    def _render(self, camera: str, height: int, width: int) -> np.ndarray:
        key = (height, width)
        renderer = self._renderers.get(key)
        if renderer is None:
            renderer = CameraRenderer(self._model, height, width)
            self._renderers[key] = renderer
        return renderer.render(self._data, camera)

    def _close_renderers(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers = {}

    def close(self) -> None:
        """Release the rendering contexts (call before the process exits)."""
        self._close_renderers()

    def __enter__(self) -> 'World':
        return self

    def __exit__(self, *exc) -> None:
        self.close()
