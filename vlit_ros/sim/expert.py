"""
The privileged expert: it reads the task and ground truth, and acts with the same primitives.

It is the teacher for imitation data and the upper bound in evaluations. `goto` steers toward
the target along the clear heading closest to it (a ray cast against inflated objects and the
walls); `turn` and `move` servo on odometry since the instruction; `stop` stops.

While the target is outside the camera's view (or hidden behind another object), a `goto`
expert that knew where it was would turn straight toward it, a choice the learner cannot
copy: it only sees the image. So with `observable_search` (the default) the expert searches
the way a camera-only robot with odometry can, in phases:

1. sweep: left until it has turned `_SWEEP_LEFT_DEG`, then right, keeping on the way it is
   already turning; past `_SWEEP_RIGHT_DEG` every bearing an object can start at has been
   in view, so the target is hidden behind another object;
2. explore: turn back to the start heading and drive along the clear heading closest to it
   until `_EXPLORE_M` from where the instruction began, for a new viewpoint (or until the
   way ahead is blocked, or `_EXPLORE_S` have passed);
3. sweep again: a full turn left in place from there;
4. only then fall back to ground truth and turn toward the target.

Until the target is first seen, every choice and every phase change depends only on things
the learner has too: the image, the odometry and time since the instruction and the motion
so far. Once it has been in view the expert steers by ground truth, also when it leaves the
view again (an arc around an obstacle, an overshooting turn): the learner remembers where it
last saw the target and carries that bearing forward by odometry.
"""

import math
from typing import Optional

import numpy as np

from vlit_ros.core.actions import ActionParams
from vlit_ros.core.geometry import to_frame, wrap_angle
from vlit_ros.sim.tasks import GotoTask, MoveTask, StopTask, Task, TurnTask

# Extra clearance the expert keeps from objects it is not going to (m).
_AVOID_MARGIN = 0.12
# How far ahead a heading must be clear before the expert takes it (m).
_LOOKAHEAD = 1.2
_CANDIDATE_HEADINGS = np.radians(np.arange(-180.0, 180.0, 5.0))
# Stops this close to the target's centre: 0.15 m inside the 0.7 m success radius, so a
# learner judging distance from the image has slack, and clear of the largest object's
# footprint (0.24 m half-side, 0.34 m to a corner, plus the robot's 0.2 m radius).
_GOTO_STOP_DISTANCE = 0.55
_TURN_IN_PLACE_ABOVE = 0.5
_ARC_ABOVE = 0.12
# The target counts as in view when its centre lies this far inside the camera's edges (deg).
_VIEW_MARGIN_DEG = 4.0
# Observable search, phase 1: sweep left up to this heading change, then right (scenes place
# every object within 75 degrees of the start heading); past _SWEEP_RIGHT_DEG the sweep has
# seen every start bearing, so a target still unseen is hidden behind another object.
_SWEEP_LEFT_DEG = 95.0
_SWEEP_RIGHT_DEG = -95.0
# A yaw rate (rad/s) above which the robot counts as turning that way.
_TURNING_RADPS = 0.2
# Phase 2: drive toward the start heading (where every object stands) until this far from
# where the instruction began (m), for a viewpoint from which an occluder no longer hides
# what stands behind it (1.5 m: measured between 1.0 and 2.0, farther finds a few more
# targets but leads into clutter near the walls more often). The drive ends early where the
# clear heading closest to the start heading is more than _EXPLORE_BLOCKED_DEG off it (a
# wall or a row of objects ahead), and after _EXPLORE_S seconds, so it cannot stall.
_EXPLORE_M = 1.5
_EXPLORE_BLOCKED_DEG = 60.0
_EXPLORE_S = 10.0
# Phase 3: a full turn left in place from where phase 2 ended (deg); the time budget (s)
# ends it should the robot not turn as told (a learner driving during DAgger).
_RESWEEP_DEG = 360.0
_RESWEEP_S = 12.0
# The search phases.
SWEEP, EXPLORE, RESWEEP, FALLBACK = 1, 2, 3, 4


class ExpertPolicy:
    """Privileged expert; `vlit-ros eval --policy expert` and data generation use it."""

    privileged = True

    def __init__(self, action_params: Optional[ActionParams] = None,
                 observable_search: bool = True):
        self.action_params = action_params or ActionParams()
        self.observable_search = observable_search
        self._task: Optional[Task] = None
        self._world = None

    def reset(self, instruction: str, task: Optional[Task] = None, world=None) -> None:
        if task is None or world is None:
            raise ValueError('the expert is privileged: it needs the task and the world '
                             '(use it through vlit_ros.sim.episode.run_episode)')
        self._task = task
        self._world = world
        self._target = task.target(world.scene) if isinstance(task, GotoTask) else None
        self._cumulative_yaw = 0.0
        self._last_yaw = 0.0
        # Whether the goto target has been in view since the instruction began.
        self._seen = False
        self._phase = SWEEP
        # Time (s) and cumulative yaw (rad) when the current search phase began.
        self._phase_t = 0.0
        self._phase_yaw = 0.0

    @property
    def search_phase(self) -> int:
        """Return the goto search phase reached: SWEEP, EXPLORE, RESWEEP or FALLBACK."""
        return self._phase

    @property
    def seen(self) -> bool:
        """
        Return whether the goto target has been in view since the instruction began.

        Tracked with `observable_search` only; without it the expert never needs to know.
        """
        return self._seen

    def act(self, obs) -> str:
        if self._task is None:
            raise RuntimeError('call reset() before act()')
        yaw = obs.odom[2]
        self._cumulative_yaw += wrap_angle(yaw - self._last_yaw)
        self._last_yaw = yaw
        task = self._task
        if isinstance(task, StopTask):
            return 'stop'
        if isinstance(task, TurnTask):
            return self._turn(math.radians(task.angle_deg) - self._cumulative_yaw)
        if isinstance(task, MoveTask):
            return self._move(task.distance_m - obs.odom[0])
        return self._goto(obs)

    def _turn(self, remaining: float) -> str:
        # Stop early by the distance the drive needs to come to rest, plus half a step.
        p = self.action_params
        robot = self._world.scene.robot
        brake = p.turn_rate ** 2 / (2 * robot.max_angular_accel) + p.turn_rate * 0.05
        if abs(remaining) <= brake:
            return 'stop'
        return 'turn_left' if remaining > 0 else 'turn_right'

    def _move(self, remaining: float) -> str:
        p = self.action_params
        robot = self._world.scene.robot
        speed = p.forward_speed if remaining > 0 else p.backward_speed
        brake = speed ** 2 / (2 * robot.max_linear_accel) + speed * 0.05
        if abs(remaining) <= brake:
            return 'stop'
        return 'forward' if remaining > 0 else 'backward'

    def _goto(self, obs) -> str:
        world = self._world
        pose = world.pose()
        target = self._target
        if self.observable_search:
            if self.target_in_view():
                self._seen = True
            elif not self._seen:
                # Never seen: search as a camera-only robot would; even a target within
                # reach is not stopped at before it has been seen.
                search = self._search(obs)
                if search is not None:
                    return search
        distance = math.hypot(target.x - pose[0], target.y - pose[1])
        if distance <= _GOTO_STOP_DISTANCE:
            return 'stop'
        tx, ty = to_frame(pose, target.x, target.y)
        lookahead = min(_LOOKAHEAD, distance - _GOTO_STOP_DISTANCE + 0.2)
        return self._steer(self._clear_heading(pose, math.atan2(ty, tx), lookahead, target))

    @staticmethod
    def _steer(bearing: float) -> str:
        """Return the primitive that heads for `bearing` (robot frame, rad)."""
        if abs(bearing) > _TURN_IN_PLACE_ABOVE:
            return 'turn_left' if bearing > 0 else 'turn_right'
        if abs(bearing) > _ARC_ABOVE:
            return 'forward_left' if bearing > 0 else 'forward_right'
        return 'forward'

    def target_in_view(self) -> bool:
        """Return whether the goto target's centre is in the camera's view, not hidden."""
        scene = self._world.scene
        robot = scene.robot
        pose = self._world.pose()
        target = self._target
        camera_yaw = pose[2] + math.radians(robot.camera_yaw_deg)
        tx, ty = to_frame((pose[0], pose[1], camera_yaw), target.x, target.y)
        if tx <= 0.0 or abs(math.degrees(math.atan2(ty, tx))) > \
                robot.camera_hfov_deg / 2.0 - _VIEW_MARGIN_DEG:
            return False
        distance = math.hypot(tx, ty)
        for obj in scene.objects:
            if obj is target:
                continue
            ox, oy = to_frame((pose[0], pose[1], camera_yaw), obj.x, obj.y)
            along = (ox * tx + oy * ty) / distance
            if 0.0 < along < distance and \
                    abs(ox * ty - oy * tx) / distance < obj.footprint_radius:
                return False
        return True

    def _search(self, obs) -> Optional[str]:
        """Return the camera-only search move for a target never seen, or None (phase 4)."""
        odom, t, yaw = obs.odom, obs.t, self._cumulative_yaw
        # Each phase change is a function of the odometry and time since the instruction
        # (and, for a blocked drive, of what lies ahead), so the learner can make it too.
        if self._phase == SWEEP and math.degrees(yaw) <= _SWEEP_RIGHT_DEG:
            self._begin(EXPLORE, t)
        if self._phase == EXPLORE and (math.hypot(odom[0], odom[1]) >= _EXPLORE_M or
                                       t - self._phase_t >= _EXPLORE_S):
            self._begin(RESWEEP, t)
        if self._phase == RESWEEP and (
                math.degrees(yaw - self._phase_yaw) >= _RESWEEP_DEG or
                t - self._phase_t >= _RESWEEP_S):
            # Two sweeps from two viewpoints have not found it: use what the expert knows.
            self._begin(FALLBACK, t)
        if self._phase == SWEEP:
            if odom[4] < -_TURNING_RADPS:
                return 'turn_right'  # the sweep has turned right: go on
            return 'turn_left' if math.degrees(yaw) < _SWEEP_LEFT_DEG else 'turn_right'
        if self._phase == EXPLORE:
            # Toward the start heading, every object an obstacle: which one is the target
            # is unknown until it has been seen.
            bearing = self._clear_heading(self._world.pose(), wrap_angle(-odom[2]),
                                          _LOOKAHEAD, None)
            if abs(math.degrees(wrap_angle(odom[2] + bearing))) <= _EXPLORE_BLOCKED_DEG:
                return self._steer(bearing)
            self._begin(RESWEEP, t)  # blocked: look around from here
        if self._phase == RESWEEP:
            return 'turn_left'
        return None

    def _begin(self, phase: int, t: float) -> None:
        self._phase = phase
        self._phase_t = t
        self._phase_yaw = self._cumulative_yaw

    def _clear_heading(self, pose, bearing: float, lookahead: float, goal) -> float:
        """
        Return the clear heading (robot frame) closest to `bearing`.

        A heading is clear when it runs `lookahead` metres past every object but `goal`
        (None: every object is an obstacle) and short of the walls.
        """
        scene = self._world.scene
        robot_radius = scene.robot.radius
        headings = pose[2] + _CANDIDATE_HEADINGS
        dirs = np.stack([np.cos(headings), np.sin(headings)], axis=1)
        free = np.full(len(headings), np.inf)
        for obj in scene.objects:
            if obj is goal:
                continue
            radius = obj.footprint_radius + robot_radius + _AVOID_MARGIN
            rel = np.array([obj.x - pose[0], obj.y - pose[1]])
            along = dirs @ rel
            perp_sq = rel @ rel - along ** 2
            hit = (perp_sq < radius ** 2) & (along > 0)
            entry = along - np.sqrt(np.maximum(radius ** 2 - perp_sq, 0.0))
            free = np.where(hit, np.minimum(free, np.maximum(entry, 0.0)), free)
        half = scene.arena_size / 2.0 - robot_radius - _AVOID_MARGIN
        for axis in (0, 1):
            with np.errstate(divide='ignore', invalid='ignore'):
                to_wall = np.where(dirs[:, axis] > 0, (half - pose[axis]) / dirs[:, axis],
                                   (-half - pose[axis]) / dirs[:, axis])
            free = np.minimum(free, np.where(np.abs(dirs[:, axis]) > 1e-9, to_wall, np.inf))
        relative = np.array([wrap_angle(h - pose[2]) for h in headings])
        ok = free >= lookahead
        if not ok.any():
            # Boxed in: take the most open heading.
            return float(relative[int(np.argmax(free))])
        cost = np.abs(np.array([wrap_angle(r - bearing) for r in relative]))
        cost[~ok] = np.inf
        return float(relative[int(np.argmin(cost))])
