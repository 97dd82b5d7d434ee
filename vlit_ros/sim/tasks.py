"""
Instruction families, their phrasings, instruction files, success rules and rewards.

Families (DESIGN.md §3): `goto` (reach a named object), `turn` (by an angle, positive =
left), `move` (forward/back by a distance), `stop`. Success is judged from ground truth:

- goto: the robot ends stopped within 0.7 m of the target, having touched no other object,
  within 40 s;
- turn: it ends stopped with its heading within 20 degrees of the requested change;
- move: it ends stopped within 0.25 m of the point the requested distance ahead (or behind);
- stop: it is stopped within 1 s of the instruction and stays stopped.
"""

from dataclasses import dataclass
import json
import math
from pathlib import Path
import random
from typing import Dict, List, Optional, Sequence, Tuple, Union

from vlit_ros.core.geometry import Pose2D, relative_pose, wrap_angle
from vlit_ros.sim.scene import COLORS, ObjectSpec, Scene, SHAPES, validate_color, validate_shape

FAMILIES: Tuple[str, ...] = ('goto', 'turn', 'move', 'stop')
TIME_LIMITS_S: Dict[str, float] = {'goto': 40.0, 'turn': 20.0, 'move': 20.0, 'stop': 3.0}
GOTO_SUCCESS_RADIUS_M = 0.7
TURN_TOLERANCE_DEG = 20.0
MOVE_TOLERANCE_M = 0.25
STOP_DEADLINE_S = 1.0
# Body speeds under which the robot counts as stopped.
STOPPED_LINEAR_MPS = 0.02
STOPPED_ANGULAR_RADPS = 0.05
# Gap (m) between the robot's base and an object's footprint that counts as touching.
TOUCH_GAP_M = 0.01
MAX_TURN_DEG = 360.0
MAX_MOVE_M = 3.0


@dataclass(frozen=True)
class GotoTask:
    """Reach the object with this colour and/or shape (at least one is given)."""

    color: Optional[str] = None
    shape: Optional[str] = None
    family = 'goto'

    def __post_init__(self):
        if self.color is None and self.shape is None:
            raise ValueError('a goto task names a colour, a shape, or both')
        if self.color is not None:
            validate_color(self.color)
        if self.shape is not None:
            validate_shape(self.shape)

    def target(self, scene: Scene) -> ObjectSpec:
        """Return the one object the task names, or raise if it is missing or ambiguous."""
        matches = scene.find(self.color, self.shape)
        what = ' '.join(v for v in (self.color, self.shape) if v)
        if not matches:
            raise ValueError(f'scene {scene.seed} has no {what}')
        if len(matches) > 1:
            raise ValueError(f'"{what}" is ambiguous in scene {scene.seed}: '
                             f'{", ".join(o.name for o in matches)}')
        return matches[0]

    def to_dict(self) -> dict:
        out = {'type': 'goto'}
        if self.color is not None:
            out['color'] = self.color
        if self.shape is not None:
            out['shape'] = self.shape
        return out


@dataclass(frozen=True)
class TurnTask:
    """Turn in place by an angle (degrees, positive = left / counter-clockwise)."""

    angle_deg: float
    family = 'turn'

    def __post_init__(self):
        if not math.isfinite(self.angle_deg) or not 0 < abs(self.angle_deg) <= MAX_TURN_DEG:
            raise ValueError(f'turn angle_deg must be non-zero and within ±{MAX_TURN_DEG:g}, '
                             f'got {self.angle_deg!r}')

    def to_dict(self) -> dict:
        return {'type': 'turn', 'angle_deg': self.angle_deg}


@dataclass(frozen=True)
class MoveTask:
    """Drive straight by a distance (metres, negative = backwards)."""

    distance_m: float
    family = 'move'

    def __post_init__(self):
        if not math.isfinite(self.distance_m) or not 0 < abs(self.distance_m) <= MAX_MOVE_M:
            raise ValueError(f'move distance_m must be non-zero and within ±{MAX_MOVE_M:g}, '
                             f'got {self.distance_m!r}')

    def to_dict(self) -> dict:
        return {'type': 'move', 'distance_m': self.distance_m}


@dataclass(frozen=True)
class StopTask:
    """Stop and stay stopped."""

    family = 'stop'

    def to_dict(self) -> dict:
        return {'type': 'stop'}


Task = Union[GotoTask, TurnTask, MoveTask, StopTask]


def task_from_dict(data: dict) -> Task:
    """Build a task from its JSON form, with clear errors for anything malformed."""
    if not isinstance(data, dict):
        raise ValueError(f'"task" must be an object, got {type(data).__name__}')
    kind = data.get('type')
    fields = {k: v for k, v in data.items() if k != 'type'}
    allowed = {'goto': {'color', 'shape'}, 'turn': {'angle_deg'}, 'move': {'distance_m'},
               'stop': set()}
    if kind not in allowed:
        raise ValueError(f'unknown task type {kind!r}; expected one of {", ".join(FAMILIES)}')
    unknown = set(fields) - allowed[kind]
    if unknown:
        raise ValueError(f'unexpected field(s) for a {kind} task: {", ".join(sorted(unknown))}')
    if kind == 'goto':
        return GotoTask(color=fields.get('color'), shape=fields.get('shape'))
    if kind == 'stop':
        return StopTask()
    key = 'angle_deg' if kind == 'turn' else 'distance_m'
    value = fields.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'a {kind} task needs a number "{key}", got {value!r}')
    return TurnTask(float(value)) if kind == 'turn' else MoveTask(float(value))


@dataclass(frozen=True)
class Instruction:
    """What the user says and what it means."""

    text: str
    task: Task

    def __post_init__(self):
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError('instruction text must be a non-empty string')

    def to_dict(self) -> dict:
        return {'text': self.text, 'task': self.task.to_dict()}


def load_instructions(path: Union[str, Path]) -> List[Instruction]:
    """Read an instruction file (JSON lines); errors name the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding='utf-8').splitlines()
    except OSError as exc:
        raise ValueError(f'cannot read instruction file {path}: {exc}') from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f'{path}: not UTF-8 text ({exc})') from exc
    instructions = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError('each line must be a JSON object')
            unknown = set(record) - {'text', 'task'}
            if unknown:
                raise ValueError(f'unexpected key(s) {", ".join(sorted(unknown))}')
            if 'text' not in record or 'task' not in record:
                raise ValueError('each line needs "text" and "task"')
            instructions.append(Instruction(record['text'], task_from_dict(record['task'])))
        except (ValueError, TypeError) as exc:
            raise ValueError(f'{path}:{number}: {exc}') from exc
    if not instructions:
        raise ValueError(f'{path}: no instructions in the file')
    return instructions


# -- phrasings ----------------------------------------------------------------------------

SHAPE_WORDS: Dict[str, Tuple[str, ...]] = {
    'cube': ('cube', 'box', 'block'),
    'sphere': ('sphere', 'ball', 'orb'),
    'cylinder': ('cylinder', 'can', 'pillar'),
}
COLOR_WORDS: Dict[str, Tuple[str, ...]] = {c: (c,) for c in COLORS}
COLOR_WORDS['purple'] = ('purple', 'violet')

GOTO_TEMPLATES: Tuple[str, ...] = (
    'go to the {ref}', 'head to the {ref}', 'drive to the {ref}', 'move to the {ref}',
    'navigate to the {ref}', 'approach the {ref}', 'find the {ref}', 'get close to the {ref}',
    'go over to the {ref}', 'can you go to the {ref}', 'please go to the {ref}',
    'go toward the {ref} and stop there', 'reach the {ref}', 'go near the {ref}',
    'drive up to the {ref}', '{ref}, go there', 'head over to the {ref} please',
    'the {ref}', 'go to the {ref} now', 'um go to the uh {ref}',
)
# Phrasings reserved for testing generalisation: never used to generate training data.
GOTO_HELD_OUT_TEMPLATES: Tuple[str, ...] = (
    'make your way to the {ref}', 'could you roll over to the {ref}',
    'proceed to the {ref}', 'travel to the {ref}', 'i need you next to the {ref}',
    'pull up beside the {ref}', 'your target is the {ref}', 'end up by the {ref}',
)
TURN_NAMED: Tuple[Tuple[str, float], ...] = (
    ('turn left', 90), ('turn to the left', 90), ('rotate left', 90), ('face left', 90),
    ('make a left turn', 90), ('turn right', -90), ('turn to the right', -90),
    ('rotate right', -90), ('face right', -90), ('make a right turn', -90),
    ('turn around', 180), ('spin around', 180), ('do a one eighty', 180), ('about face', 180),
    ('turn back the other way', 180), ('quarter turn left', 90), ('quarter turn right', -90),
)
TURN_DEGREE_TEMPLATES: Tuple[str, ...] = (
    'turn {dir} {n} degrees', 'rotate {n} degrees to the {dir}', 'turn {dir} by {n} degrees',
    'spin {n} degrees {dir}', 'turn {n} degrees {dir}', 'rotate {dir} {n} degrees please',
)
TURN_DEGREES: Tuple[int, ...] = (30, 45, 60, 90, 120, 135, 180)
MOVE_FORWARD_TEMPLATES: Tuple[str, ...] = (
    'move forward {d}', 'go forward {d}', 'drive ahead {d}', 'go straight for {d}',
    'move ahead {d}', 'roll forward {d}', 'advance {d}', 'go {d} forward',
)
MOVE_BACKWARD_TEMPLATES: Tuple[str, ...] = (
    'back up {d}', 'reverse {d}', 'move backward {d}', 'go back {d}', 'move back {d}',
    'drive backwards {d}', 'back off {d}',
)
DISTANCE_WORDS: Dict[float, Tuple[str, ...]] = {
    0.5: ('half a meter', '50 centimeters', '0.5 meters', 'half a metre'),
    1.0: ('a meter', 'one meter', '1 meter', 'a metre', '100 centimeters'),
    1.5: ('one and a half meters', '1.5 meters', 'a meter and a half'),
    2.0: ('two meters', '2 meters', 'two metres'),
}
MAX_BACKWARD_M = 1.5
STOP_PHRASES: Tuple[str, ...] = (
    'stop', 'halt', 'wait', 'stop right there', 'freeze', 'hold on', 'stay', "don't move",
    'stop moving', 'please stop', 'wait a second', 'hold it', 'stop stop', 'ok stop',
    'that is enough, stop',
)


def referring_expressions(obj: ObjectSpec, scene: Scene) -> List[Tuple[str, GotoTask]]:
    """
    Return the unambiguous names of `obj` in `scene` with the task each one means.

    "red cube" / "violet ball" always, "red one" / "red thing" when the colour is unique in
    the scene, "ball" when the shape is.
    """
    options = [(f'{cw} {sw}', GotoTask(obj.color, obj.shape))
               for cw in COLOR_WORDS[obj.color] for sw in SHAPE_WORDS[obj.shape]]
    if len(scene.find(color=obj.color)) == 1:
        options += [(f'{cw} {noun}', GotoTask(color=obj.color))
                    for cw in COLOR_WORDS[obj.color] for noun in ('one', 'thing')]
    if len(scene.find(shape=obj.shape)) == 1:
        options += [(sw, GotoTask(shape=obj.shape)) for sw in SHAPE_WORDS[obj.shape]]
    return options


def goto_instruction(obj: ObjectSpec, scene: Scene, rng: random.Random,
                     held_out: bool = False) -> Instruction:
    """
    Draw a goto instruction that names `obj` unambiguously in `scene`.

    A referring expression, then a template: the training set's, or with `held_out=True`
    the held-out set's.
    """
    ref, task = rng.choice(referring_expressions(obj, scene))
    template = rng.choice(GOTO_HELD_OUT_TEMPLATES if held_out else GOTO_TEMPLATES)
    return Instruction(template.format(ref=ref), task)


def clear_distance_ahead(scene: Scene, pose: Pose2D, backwards: bool = False,
                         step: float = 0.05, limit: float = MAX_MOVE_M + 0.5) -> float:
    """How far the robot can drive straight from `pose` before touching anything (m)."""
    sign = -1.0 if backwards else 1.0
    half = scene.arena_size / 2.0
    radius = scene.robot.radius
    travelled = 0.0
    while travelled < limit:
        x = pose[0] + sign * (travelled + step) * math.cos(pose[2])
        y = pose[1] + sign * (travelled + step) * math.sin(pose[2])
        if abs(x) + radius > half or abs(y) + radius > half:
            break
        if any(o.clearance(x, y) < radius + TOUCH_GAP_M for o in scene.objects):
            break
        travelled += step
    return travelled


def generate_instruction(scene: Scene, family: str, rng: random.Random,
                         held_out: bool = False) -> Instruction:
    """
    Draw a phrasing and a task of one family that is feasible in `scene`.

    `held_out=True` draws goto phrasings from the held-out set instead of the training set.
    """
    if family == 'goto':
        target = scene.objects[rng.randrange(len(scene.objects))]
        return goto_instruction(target, scene, rng, held_out)
    if family == 'turn':
        if rng.random() < 0.5:
            text, angle = rng.choice(TURN_NAMED)
            return Instruction(text, TurnTask(float(angle)))
        n = rng.choice(TURN_DEGREES)
        direction = rng.choice(('left', 'right'))
        text = rng.choice(TURN_DEGREE_TEMPLATES).format(dir=direction, n=n)
        return Instruction(text, TurnTask(float(n if direction == 'left' else -n)))
    if family == 'move':
        start = (scene.robot_x, scene.robot_y, scene.robot_yaw)
        room_ahead = clear_distance_ahead(scene, start) - MOVE_TOLERANCE_M
        room_behind = clear_distance_ahead(scene, start, backwards=True) - MOVE_TOLERANCE_M
        choices = [(d, +1) for d in DISTANCE_WORDS if d <= room_ahead]
        choices += [(d, -1) for d in DISTANCE_WORDS if d <= min(room_behind, MAX_BACKWARD_M)]
        if not choices:
            raise ValueError(f'scene {scene.seed} leaves no room for a move task')
        distance, sign = rng.choice(choices)
        templates = MOVE_FORWARD_TEMPLATES if sign > 0 else MOVE_BACKWARD_TEMPLATES
        text = rng.choice(templates).format(d=rng.choice(DISTANCE_WORDS[distance]))
        return Instruction(text, MoveTask(sign * distance))
    if family == 'stop':
        return Instruction(rng.choice(STOP_PHRASES), StopTask())
    raise ValueError(f'unknown instruction family {family!r}; expected one of '
                     f'{", ".join(FAMILIES)}')


# -- judging and rewards ------------------------------------------------------------------

@dataclass
class Outcome:
    """How an episode ended."""

    success: bool
    # short machine-readable reason: success, timeout, touched_<object>, wrong_place, ...
    reason: str
    # seconds from the instruction to the end of the episode
    duration: float


class EpisodeJudge:
    """
    Applies the success rules and computes the dense reward, step by step, from ground truth.

    Rewards: progress toward the goal (metres or radians gained), a small time penalty,
    +5 on success, -1 on failure and -2 for touching a wrong object (goto). The episode
    ends when the robot comes to rest after a `stop` action, on a wrong touch, or at the
    family's time limit.
    """

    SUCCESS_BONUS = 5.0
    FAILURE_PENALTY = -1.0
    TOUCH_PENALTY = -2.0
    TIME_PENALTY = -0.01

    def __init__(self, task: Task, scene: Scene, start_pose: Pose2D):
        self.task = task
        self.scene = scene
        self.start_pose = start_pose
        self.time_limit = TIME_LIMITS_S[task.family]
        self.target = task.target(scene) if isinstance(task, GotoTask) else None
        self.done = False
        self.outcome: Optional[Outcome] = None
        self._stopped_since: Optional[float] = None
        self._moved_after_stop = False
        self._last_error = self._error(start_pose)

    def _error(self, pose: Pose2D) -> float:
        """Distance to the goal in the family's own unit (m or rad); 0 at the goal."""
        if isinstance(self.task, GotoTask):
            return math.hypot(pose[0] - self.target.x, pose[1] - self.target.y)
        rel = relative_pose(self.start_pose, pose)
        if isinstance(self.task, TurnTask):
            return abs(self.turn_error(rel[2]))
        if isinstance(self.task, MoveTask):
            return math.hypot(rel[0] - self.task.distance_m, rel[1])
        return 0.0

    def turn_error(self, yaw_change: float) -> float:
        """Signed remaining turn (rad), unwrapped toward the requested direction."""
        return wrap_angle(math.radians(self.task.angle_deg) - yaw_change)

    def touched(self, pose: Pose2D) -> List[str]:
        """Objects other than the target the robot is touching at `pose`."""
        radius = self.scene.robot.radius
        return [o.name for o in self.scene.objects
                if o is not self.target and o.clearance(pose[0], pose[1]) < radius + TOUCH_GAP_M]

    def update(self, t: float, pose: Pose2D, velocity: Tuple[float, float],
               action: str) -> float:
        """Advance the judge after one control step; return that step's reward."""
        if self.done:
            raise RuntimeError('the episode is over; start a new judge')
        stopped = abs(velocity[0]) < STOPPED_LINEAR_MPS and \
            abs(velocity[1]) < STOPPED_ANGULAR_RADPS
        error = self._error(pose)
        reward = self.TIME_PENALTY
        if isinstance(self.task, StopTask):
            reward -= 0.1 * (abs(velocity[0]) + abs(velocity[1]))
        else:
            reward += self._last_error - error
        self._last_error = error
        if stopped and self._stopped_since is None:
            self._stopped_since = t
        elif not stopped:
            if self._stopped_since is not None:
                self._moved_after_stop = True
            self._stopped_since = None
        if self.target is not None:
            wrong = self.touched(pose)
            if wrong:
                return reward + self._finish(False, f'touched_{wrong[0]}', t,
                                             self.TOUCH_PENALTY)
        if action == 'stop' and stopped:
            success, reason = self._judge_final(pose, t)
            return reward + self._finish(success, reason, t)
        if t >= self.time_limit - 1e-9:
            success, reason = self._judge_final(pose, t)
            if not stopped:
                success, reason = False, 'timeout'
            return reward + self._finish(success, reason, t)
        return reward

    def _judge_final(self, pose: Pose2D, t: float) -> Tuple[bool, str]:
        task = self.task
        rel = relative_pose(self.start_pose, pose)
        if isinstance(task, GotoTask):
            ok = math.hypot(pose[0] - self.target.x, pose[1] - self.target.y) <= \
                GOTO_SUCCESS_RADIUS_M
            return ok, 'success' if ok else 'stopped_too_far'
        if isinstance(task, TurnTask):
            ok = abs(math.degrees(self.turn_error(rel[2]))) <= TURN_TOLERANCE_DEG
            return ok, 'success' if ok else 'wrong_heading'
        if isinstance(task, MoveTask):
            ok = math.hypot(rel[0] - task.distance_m, rel[1]) <= MOVE_TOLERANCE_M
            return ok, 'success' if ok else 'wrong_distance'
        if self._stopped_since is None or self._stopped_since > STOP_DEADLINE_S:
            return False, 'stopped_too_late'
        if self._moved_after_stop:
            return False, 'moved_again'
        return True, 'success'

    def _finish(self, success: bool, reason: str, t: float,
                penalty: Optional[float] = None) -> float:
        self.done = True
        self.outcome = Outcome(success, reason, t)
        if success:
            return self.SUCCESS_BONUS
        return self.FAILURE_PENALTY if penalty is None else penalty


def parse_families(text: str) -> Tuple[str, ...]:
    """Parse comma-separated family names ('goto,turn'); raise ValueError on unknown ones."""
    families = tuple(f.strip() for f in text.split(',') if f.strip())
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ValueError(f'unknown families {unknown or text!r}; expected some of '
                         f'{", ".join(FAMILIES)}')
    return families


def family_counts(families: Sequence[str]) -> Dict[str, int]:
    """Count episodes per family in FAMILIES order."""
    return {f: sum(1 for x in families if x == f) for f in FAMILIES}


__all__ = [
    'COLORS', 'EpisodeJudge', 'FAMILIES', 'GotoTask', 'Instruction', 'MoveTask', 'Outcome',
    'SHAPES', 'StopTask', 'Task', 'TurnTask', 'generate_instruction', 'load_instructions',
    'parse_families', 'task_from_dict',
]
