"""
The privileged expert: it reads the task and ground truth, and acts with the same primitives.

It is the teacher for imitation data and the upper bound in evaluations. `goto` steers toward
the target along the clear heading closest to it (a ray cast against inflated objects and the
walls); `turn` and `move` servo on odometry since the instruction; `stop` stops.

While the target is outside the camera's view (or hidden behind another object), a `goto`
expert that knew where it was would turn straight toward it, a choice the learner cannot
copy: it only sees the image. So with `observable_search` (the default) the expert searches
the way a camera-only robot can: it sweeps left until it has turned `_SWEEP_LEFT_DEG`, then
right, keeps turning the way it is already turning, and only falls back to its privileged
knowledge once the sweep has covered every bearing an object can start at. Every choice
depends on things the learner has too: the image, the odometry since the instruction and the
motion so far. A target lost from view while driving (an arc around an obstacle) is turned
toward directly; it has just been seen. `last_rule` says which rule gave the last action
(`RULES`), so benchmarks can count how many labels a learner could copy.

With `far_search` (off by default; `gen-data` / `finetune` / `train-all --expert-far-search`)
the search also stays within what the learner's map can do: a target farther than
`see_range_m` counts as out of view until it has once been seen within that range (the map
rarely finds a target that far, so steering at it is a label the learner cannot copy), and a
sweep that found nothing is followed by turning back to the start heading, driving ahead
`advance_m` and sweeping again, instead of turning toward the target by ground truth. Only
after the second sweep does the expert fall back on what it knows.

With `short_sweep` (off by default; gen-data / finetune / train-all --expert-short-sweep) the
sweep turns `sweep_deg` (60) each way instead of 95, which still brings every start bearing
into view (objects start within 75 degrees of the heading, the camera sees 45 to either
side), and the search counts as done once the robot has turned at least `sweep_deg` less
`_SWEEP_DONE_SLACK_DEG` to both sides, whichever way and however often it reversed: a
learner that turns back a little early is then told the search is over, instead of being
labelled into a new sweep, which is how a learner came to sweep on the spot for 40 s. With
`far_arcs` (off by default; --expert-far-arcs), once the search is done or the robot has
driven, a target farther than `far_arcs_m` (3 m) is steered toward in arcs, never by turning
on the spot. Beyond 3 m the learner's map rarely finds the target, so what it learns to copy
there is the labels' average, and the average of arcs to either side is to drive on and
close in, where the average of turns on the spot is to stay. With `clear_arcs` as well (off
by default; --expert-clear-arcs) an arc replaces the turn only where the way is clear: nothing
within `_ARC_CLEAR_M` straight ahead or 30 degrees to the side it turns to; next to an object
the expert turns on the spot as before, a cue a learner sees in the image.

Two turns of the default expert follow what the learner does not read: the sweep goes on
turning right while the measured yaw rate turns right (it lags the command), and a target out
of view after the search is turned toward by ground truth. `sweep_by_command` and
`reacquire_by_command` (off by default; `ExpertRules.observable_turns`, gen-data / finetune /
train-all --expert-observable-turns) make both follow the last command instead, which the
learner reads as its previous action.
"""

from dataclasses import dataclass
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
# the same, as the bearings (robot frame) _clear_heading returns
_CANDIDATE_BEARINGS = np.array([wrap_angle(h) for h in _CANDIDATE_HEADINGS])
# Stops this close to the target's centre: 0.15 m inside the 0.7 m success radius, so a
# learner judging distance from the image has slack, and clear of the largest object's
# footprint (0.24 m half-side, 0.34 m to a corner, plus the robot's 0.2 m radius).
_GOTO_STOP_DISTANCE = 0.55
_TURN_IN_PLACE_ABOVE = 0.5
_ARC_ABOVE = 0.12
# The target counts as in view when its centre lies this far inside the camera's edges (deg).
_VIEW_MARGIN_DEG = 4.0
# Observable search: sweep left up to this heading change, then right (scenes place every
# object within 75 degrees of the start heading); past _SWEEP_RIGHT_DEG the sweep has seen
# every start bearing, and the expert turns toward the target.
_SWEEP_LEFT_DEG = 95.0
_SWEEP_RIGHT_DEG = -95.0
# A yaw rate (rad/s) above which the robot counts as turning that way, and the distance
# driven (m) after which a target out of view counts as lost on the way rather than unseen.
_TURNING_RADPS = 0.2
_DRIVEN_M = 0.3
# Far search: the distance within which the target counts as seen (m; the shipped map finds
# a target on most frames up to 3 m and few beyond), how far the robot drives ahead between
# two sweeps (m), how close to the start heading it turns back before that (deg), and the
# most steps the drive ahead may take (boxed in by objects or a wall).
_SEE_RANGE_M = 3.5
_ADVANCE_M = 1.5
_FACING_DEG = 10.0
_ADVANCE_MAX_STEPS = 80
# Short sweep: how far each way it turns (deg), how much less than that to both sides counts
# as a finished search, and the distance beyond which a target is steered toward in arcs
# once the search is done or the robot has driven (m).
_SHORT_SWEEP_DEG = 60.0
_SWEEP_DONE_SLACK_DEG = 15.0
_FAR_ARCS_M = 3.0
_ARC_OF_TURN = {'turn_left': 'forward_left', 'turn_right': 'forward_right'}
# Clear arcs: how far (m) the way straight ahead and `_ARC_SIDE_DEG` toward the turn must be
# free of objects (inflated as for steering) and walls; an arc of the default primitives
# (0.3 m/s, 0.6 rad/s) has a radius of 0.5 m.
_ARC_CLEAR_M = 1.0
_ARC_SIDE_DEG = 30.0
# What `last_rule` can say: no goto (odometry servo or stop), at the target, steering with the
# target in view, the camera-only sweep, the far search's drive ahead between two sweeps, and
# ground truth with the target out of view (lost on the way, or hidden after the sweep: a
# camera-only learner cannot copy these labels; an expert without `observable_search` always
# steers by ground truth), and the turn on the spot the last command gives with the target
# out of the camera's cone after the search (`reacquire_by_command`).
RULES = ('not_goto', 'at_target', 'in_view', 'sweep', 'advance', 'ground_truth', 'reacquire')
_TURNS_IN_PLACE = ('turn_left', 'turn_right')
# Phases of the far search (after the second sweep, `search_exhausted`).
_SWEEP, _RETURN, _ADVANCE, _SWEEP_AGAIN = range(4)


class ExpertPolicy:
    """Privileged expert; `vlit-ros eval --policy expert` and data generation use it."""

    privileged = True

    def __init__(self, action_params: Optional[ActionParams] = None,
                 observable_search: bool = True, far_search: bool = False,
                 see_range_m: float = _SEE_RANGE_M, advance_m: float = _ADVANCE_M,
                 sweep_by_command: bool = False, reacquire_by_command: bool = False,
                 short_sweep: bool = False, far_arcs: bool = False,
                 clear_arcs: bool = False):
        for name, flag in (('far_search', far_search), ('short_sweep', short_sweep),
                           ('far_arcs', far_arcs)):
            if flag and not observable_search:
                raise ValueError(f'{name} is a kind of observable search: it needs '
                                 'observable_search=True')
        if far_search and (short_sweep or far_arcs):
            raise ValueError('far_search is a search of its own: choose it or short_sweep '
                             'and far_arcs')
        if clear_arcs and not far_arcs:
            raise ValueError('clear_arcs says where the far arcs are taken: it needs '
                             'far_arcs=True')
        for name, value in (('see_range_m', see_range_m), ('advance_m', advance_m)):
            if not value > 0.0:  # also refuses NaN; inf means "no limit" for the range
                raise ValueError(f'{name} must be a positive number of metres, got {value!r}')
        self.action_params = action_params or ActionParams()
        self.observable_search = observable_search
        self.far_search = far_search
        # the far search's range within which the target counts as seen, and its drive ahead
        self.see_range_m = see_range_m
        self.advance_m = advance_m
        # the sweep goes on turning right when the last command turned right (True), or when
        # the measured yaw rate does (False, the default: as the shipped checkpoint's labels)
        self.sweep_by_command = sweep_by_command
        # with the target out of the camera's cone after the search (lost on the way, or the
        # sweep run out), turn on the spot the way the last command turned (True), or toward
        # the target by ground truth (False, the default: as the shipped checkpoint's labels)
        self.reacquire_by_command = reacquire_by_command
        # the sweep's reach each way (deg); a search done once both sides are nearly reached;
        # far targets after the search steered toward in arcs (m; None: never)
        self.short_sweep = short_sweep
        self.sweep_deg = _SHORT_SWEEP_DEG if short_sweep else _SWEEP_LEFT_DEG
        self.far_arcs_m = _FAR_ARCS_M if far_arcs else None
        # arcs only where the way ahead and to the turn's side is clear
        self.clear_arcs = clear_arcs
        self._task: Optional[Task] = None
        self._world = None
        self._search_done = False
        self.last_rule = 'not_goto'

    def reset(self, instruction: str, task: Optional[Task] = None, world=None) -> None:
        if task is None or world is None:
            raise ValueError('the expert is privileged: it needs the task and the world '
                             '(use it through vlit_ros.sim.episode.run_episode)')
        self._task = task
        self._world = world
        self._target = task.target(world.scene) if isinstance(task, GotoTask) else None
        self._cumulative_yaw = 0.0
        self._last_yaw = 0.0
        # the farthest the robot has turned left and right since the instruction (deg)
        self._swept_left = 0.0
        self._swept_right = 0.0
        self._search_done = False
        self._seen = False
        self._phase = _SWEEP
        self._advance_from = (0.0, 0.0)
        self._advance_steps = 0

    def act(self, obs) -> str:
        if self._task is None:
            raise RuntimeError('call reset() before act()')
        yaw = obs.odom[2]
        self._cumulative_yaw += wrap_angle(yaw - self._last_yaw)
        self._last_yaw = yaw
        swept = math.degrees(self._cumulative_yaw)
        self._swept_left = max(self._swept_left, swept)
        self._swept_right = min(self._swept_right, swept)
        task = self._task
        self.last_rule = 'not_goto'
        if isinstance(task, StopTask):
            return 'stop'
        if isinstance(task, TurnTask):
            return self._turn(math.radians(task.angle_deg) - self._cumulative_yaw)
        if isinstance(task, MoveTask):
            return self._move(task.distance_m - obs.odom[0])
        return self._goto(obs.odom)

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

    def _goto(self, odom) -> str:
        world = self._world
        pose = world.pose()
        target = self._target
        distance = math.hypot(target.x - pose[0], target.y - pose[1])
        if distance <= _GOTO_STOP_DISTANCE:
            self.last_rule = 'at_target'
            return 'stop'
        tx, ty = to_frame(pose, target.x, target.y)
        self.last_rule = 'ground_truth'
        if self.observable_search:
            if self.target_in_view() and (not self.far_search or self._seen or
                                          distance <= self.see_range_m):
                self._seen = True
                self.last_rule = 'in_view'
            else:
                search = self._far_search(odom, pose) if self.far_search else \
                    self._search(odom)
                if search is not None:
                    return search
        action = self._steer(self._clear_heading(pose, math.atan2(ty, tx), distance))
        if self.far_arcs_m is not None and distance > self.far_arcs_m and \
                action in _TURNS_IN_PLACE and \
                (self._search_done or math.hypot(odom[0], odom[1]) > _DRIVEN_M) and \
                (not self.clear_arcs or self._arc_is_clear(pose, action)):
            # Too far for the learner's map: turn while driving on, so that a learner which
            # cannot tell which way copies "close in" rather than "turn on the spot".
            return _ARC_OF_TURN[action]
        if self.reacquire_by_command and self.last_rule == 'ground_truth' and \
                action in _TURNS_IN_PLACE and not self._target_in_cone(pose):
            # The target is out of the camera's cone (lost on the way, or the sweep has run
            # out) and ground truth says turn on the spot: which way is what a camera-only
            # learner cannot see, so keep turning the way the last command turned, and right
            # after any other command. Arcs around objects still follow ground truth.
            self.last_rule = 'reacquire'
            return 'turn_left' if self._world.command[1] > 0.0 else 'turn_right'
        return action

    def _target_in_cone(self, pose, margin_deg: float = 0.0) -> bool:
        """Return whether the target's centre lies `margin_deg` inside the camera's view."""
        tx, ty = self._in_camera_frame(pose, self._target)
        return tx > 0.0 and abs(math.degrees(math.atan2(ty, tx))) <= \
            self._world.scene.robot.camera_hfov_deg / 2.0 - margin_deg

    def _in_camera_frame(self, pose, obj):
        """Return an object's (x ahead, y left) in the camera's frame at `pose`."""
        camera_yaw = pose[2] + math.radians(self._world.scene.robot.camera_yaw_deg)
        return to_frame((pose[0], pose[1], camera_yaw), obj.x, obj.y)

    @staticmethod
    def _steer(bearing: float) -> str:
        """Return the primitive that heads for a bearing (rad, robot frame)."""
        if abs(bearing) > _TURN_IN_PLACE_ABOVE:
            return 'turn_left' if bearing > 0 else 'turn_right'
        if abs(bearing) > _ARC_ABOVE:
            return 'forward_left' if bearing > 0 else 'forward_right'
        return 'forward'

    @property
    def search_exhausted(self) -> bool:
        """Whether the camera-only search has turned full circle and ground truth took over."""
        return self._search_done

    def target_in_view(self) -> bool:
        """Return whether the goto target's centre is in the camera's view, not hidden."""
        pose = self._world.pose()
        target = self._target
        if not self._target_in_cone(pose, _VIEW_MARGIN_DEG):
            return False
        tx, ty = self._in_camera_frame(pose, target)
        distance = math.hypot(tx, ty)
        for obj in self._world.scene.objects:
            if obj is target:
                continue
            ox, oy = self._in_camera_frame(pose, obj)
            along = (ox * tx + oy * ty) / distance
            if 0.0 < along < distance and \
                    abs(ox * ty - oy * tx) / distance < obj.footprint_radius:
                return False
        return True

    def _search(self, odom) -> Optional[str]:
        """Return the camera-only search move while the target is out of view, or None."""
        swept = math.degrees(self._cumulative_yaw)
        if swept <= -self.sweep_deg or (self.short_sweep and self._swept_both_sides()):
            # Every start bearing has been in view (the target is hidden behind another
            # object, or too far for the camera): from now on use what the expert knows.
            self._search_done = True
        if self._search_done:
            return None
        if math.hypot(odom[0], odom[1]) > _DRIVEN_M:
            return None  # lost on the way: it was in view a moment ago
        return self._sweep_move(swept, odom)

    def _swept_both_sides(self) -> bool:
        """Whether the robot has turned nearly `sweep_deg` both ways (the short sweep's end)."""
        reach = self.sweep_deg - _SWEEP_DONE_SLACK_DEG
        return self._swept_left >= reach and self._swept_right <= -reach

    def _sweep_move(self, swept: float, odom) -> str:
        """Return the sweep's turn: left up to `_SWEEP_LEFT_DEG`, then right."""
        self.last_rule = 'sweep'
        if self.sweep_by_command:
            # The previous action turned right: go on. The learner reads its previous action,
            # so its own states are labelled by what it can see (the yaw rate lags the
            # command by a step or two, and labelled a learner that had just turned back left
            # with "right", the opposite of its last action).
            turning_right = self._world.command[1] < 0.0
        else:
            turning_right = odom[4] < -_TURNING_RADPS
        if turning_right:
            return 'turn_right'  # the sweep has turned right: go on
        return 'turn_left' if swept < self.sweep_deg else 'turn_right'

    def _far_search(self, odom, pose) -> Optional[str]:
        """
        Return the far search's move while the target is not seen, or None.

        Sweep; if nothing was seen, turn back to the start heading, drive ahead, sweep again;
        then ground truth (None). A target once seen and then lost is turned toward directly.
        """
        if self._seen or self._search_done:
            return None
        swept = math.degrees(self._cumulative_yaw)
        if self._phase == _SWEEP_AGAIN and swept <= _SWEEP_RIGHT_DEG:
            self._search_done = True
            return None
        if self._phase == _SWEEP and swept <= _SWEEP_RIGHT_DEG:
            self._phase = _RETURN
        if self._phase in (_SWEEP, _SWEEP_AGAIN):
            return self._sweep_move(swept, odom)
        if self._phase == _RETURN:
            if swept < -_FACING_DEG:
                self.last_rule = 'advance'
                return 'turn_left'
            self._phase = _ADVANCE
            self._advance_from = (odom[0], odom[1])
            self._advance_steps = 0
        # _ADVANCE: ahead along the start heading, clear of objects and walls.
        driven = math.hypot(odom[0] - self._advance_from[0], odom[1] - self._advance_from[1])
        if driven < self.advance_m and self._advance_steps < _ADVANCE_MAX_STEPS:
            self._advance_steps += 1
            self.last_rule = 'advance'
            return self._steer(self._clear_heading(pose, -self._cumulative_yaw,
                                                   self.advance_m + _GOTO_STOP_DISTANCE))
        self._phase = _SWEEP_AGAIN
        return self._sweep_move(swept, odom)

    def _clear_heading(self, pose, bearing: float, distance: float) -> float:
        """Return the clear heading (robot frame) closest to `bearing`."""
        lookahead = min(_LOOKAHEAD, distance - _GOTO_STOP_DISTANCE + 0.2)
        free = self._free_distances(pose, _CANDIDATE_HEADINGS)
        ok = free >= lookahead
        if not ok.any():
            # Boxed in: take the most open heading.
            return float(_CANDIDATE_BEARINGS[int(np.argmax(free))])
        cost = np.abs(np.array([wrap_angle(r - bearing) for r in _CANDIDATE_BEARINGS]))
        cost[~ok] = np.inf
        return float(_CANDIDATE_BEARINGS[int(np.argmin(cost))])

    def _arc_is_clear(self, pose, turn: str) -> bool:
        """Return whether the way ahead and toward `turn`'s side is free for an arc."""
        side = math.radians(_ARC_SIDE_DEG) * (1.0 if turn == 'turn_left' else -1.0)
        return bool((self._free_distances(pose, (0.0, side)) >= _ARC_CLEAR_M).all())

    def _free_distances(self, pose, relative_headings) -> np.ndarray:
        """
        Return how far (m) the robot can drive along each heading (robot frame) at `pose`.

        Up to the first object other than the target, inflated by the robot's radius and
        `_AVOID_MARGIN`, or the wall less the same.
        """
        scene = self._world.scene
        robot_radius = scene.robot.radius
        headings = pose[2] + np.asarray(relative_headings, float)
        dirs = np.stack([np.cos(headings), np.sin(headings)], axis=1)
        free = np.full(len(headings), np.inf)
        for obj in scene.objects:
            if obj is self._target:
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
        return free


@dataclass(frozen=True)
class ExpertRules:
    """
    Which goto rules the labelling expert follows (gen-data's trajectories, DAgger's labels).

    `far_search`: `ExpertPolicy(far_search=True)`; `short_sweep`: `ExpertPolicy(
    short_sweep=True)` and `far_arcs`: `ExpertPolicy(far_arcs=True)` (neither with
    `far_search`); `clear_arcs`: `ExpertPolicy(clear_arcs=True)` (with `far_arcs`).
    `observable_turns` (off by default, as the shipped checkpoint was trained; tried in the
    twenty-sixth session, docs/TRAINING.md): the
    sweep goes on turning right while the last command turned right, not while the measured
    yaw rate does, and a target out of the camera's cone after the search is turned back to
    the way the last command turned, not by ground truth (`sweep_by_command`,
    `reacquire_by_command`).
    """

    far_search: bool = False
    observable_turns: bool = False
    short_sweep: bool = False
    far_arcs: bool = False
    clear_arcs: bool = False

    def __post_init__(self):
        # Refuse, when the options are read, the combinations the expert itself refuses.
        self.policy()

    def policy(self) -> ExpertPolicy:
        return ExpertPolicy(far_search=self.far_search, sweep_by_command=self.observable_turns,
                            reacquire_by_command=self.observable_turns,
                            short_sweep=self.short_sweep, far_arcs=self.far_arcs,
                            clear_arcs=self.clear_arcs)
