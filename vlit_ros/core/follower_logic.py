"""
The instruction follower's decisions that need no ROS (the node stays a thin shell).

- `FollowerConfig`: the node's parameters, checked together at start-up.
- `check_instruction`: accept or reject speech-to-text output, with the reason.
- `is_stop_phrase`: the keyword rule that stops the robot without asking the policy.
- `OdometryTracker`: odometry relative to the pose where the instruction began.
- `FollowerObservation`: the policy observation contract of DESIGN.md §5.
- `action_probabilities`: the last action distribution of a policy that exposes one.
- `sample_action`: draw an action from that distribution at a temperature.
"""

from dataclasses import dataclass
import math
import random
import re
from typing import Dict, Optional, Tuple

import numpy as np

from vlit_ros.core.actions import ActionParams, ACTIONS
from vlit_ros.core.geometry import Pose2D, relative_pose
from vlit_ros.core.safety import SafetyConfig

# Longer texts are not an instruction but a transcript gone wrong.
MAX_INSTRUCTION_CHARS = 300
# Words that make an utterance a stop command ("don't move" becomes "dont move").
_STOP_WORDS = frozenset({'stop', 'halt', 'wait', 'freeze', 'stay', 'hold', 'enough', 'abort',
                         'whoa', 'dont', 'still', 'pause', 'cease'})
# Words allowed around them; anything else ("go to the red cube and stop there") means the
# utterance is a task for the policy, not a stop.
_STOP_FILLERS = frozenset({'please', 'ok', 'okay', 'hey', 'robot', 'now', 'right', 'there',
                           'here', 'just', 'um', 'uh', 'oh', 'a', 'second', 'sec', 'moment',
                           'minute', 'that', 'thats', 'is', 'it', 'on', 'move', 'moving',
                           'put', 'stand', 'do', 'not', 'all', 'emergency', 'immediately',
                           'everything', 'you', 'the'})
_WORD = re.compile(r"[a-z0-9']+")
_DEVICE = re.compile(r'^(cpu|cuda(:[0-9]+)?|mps)$')


@dataclass(frozen=True)
class FollowerConfig:
    """Everything the instruction follower reads from its parameters, checked together."""

    # 'model', 'random' or 'PATH.py:Class' (a plug-in, DESIGN.md §5)
    policy: str = 'model'
    # checkpoint directory for policy 'model'
    checkpoint: str = ''
    # torch device for policy 'model': cpu, cuda, cuda:N or mps
    device: str = 'cpu'
    # seed of policy 'random' and of action sampling (-1: unseeded)
    seed: int = -1
    # torch intra-op threads for a torch policy (0: torch's default). Batch-1 inference gains
    # little from more, and on shared cores extra threads stall it for whole time slices
    torch_threads: int = 1
    # rate of the watchdog that republishes the held command (Hz)
    control_rate_hz: float = 10.0
    # speeds that turn each action into a Twist
    actions: ActionParams = ActionParams()
    # limits of the safety gate; its control period must match control_rate_hz
    safety: SafetyConfig = SafetyConfig()
    # publish geometry_msgs/TwistStamped instead of Twist on cmd_vel
    use_twist_stamped: bool = False
    # sample from the policy's action distribution instead of taking its choice
    sample_actions: bool = False
    # softmax temperature when sampling (> 0)
    temperature: float = 1.0
    # frame_id of TwistStamped commands
    frame_id: str = 'base_link'

    def __post_init__(self):
        if self.policy == 'expert':
            raise ValueError("policy 'expert' reads the simulator's ground truth; the "
                             "follower only sees the camera: use 'model', 'random' or "
                             'PATH.py:Class')
        if self.policy not in ('model', 'random') and ':' not in self.policy:
            raise ValueError(f"policy must be 'model', 'random' or PATH.py:Class, "
                             f'got {self.policy!r}')
        if self.policy == 'model' and not self.checkpoint:
            raise ValueError("policy 'model' needs a checkpoint directory (parameter "
                             'checkpoint)')
        if self.policy != 'model' and self.checkpoint:
            raise ValueError(f'checkpoint {self.checkpoint!r} is only used by policy '
                             f"'model', but policy is {self.policy!r}")
        if self.torch_threads < 0:
            raise ValueError(f'torch_threads must be >= 0, got {self.torch_threads}')
        if not _DEVICE.match(self.device):
            raise ValueError(f'device must be cpu, cuda, cuda:N or mps, got {self.device!r}')
        if self.sample_actions and self.policy == 'random':
            raise ValueError('sample_actions needs a policy with action probabilities; '
                             "'random' has none")
        if not math.isfinite(self.temperature) or self.temperature <= 0.0:
            raise ValueError(f'temperature must be positive, got {self.temperature}')
        if not math.isfinite(self.control_rate_hz) or self.control_rate_hz <= 0.0:
            raise ValueError(f'control_rate_hz must be positive, got {self.control_rate_hz}')
        if not math.isclose(self.safety.control_period_s, 1.0 / self.control_rate_hz):
            raise ValueError(f'safety.control_period_s {self.safety.control_period_s} does '
                             f'not match control_rate_hz {self.control_rate_hz}')
        if self.use_twist_stamped and not self.frame_id:
            raise ValueError('use_twist_stamped needs a frame_id')
        for action in ACTIONS:
            linear, angular = self.actions.twist(action)
            if abs(linear) > self.safety.max_linear_speed or \
                    abs(angular) > self.safety.max_angular_speed:
                raise ValueError(
                    f'action {action!r} asks for ({linear}, {angular}) but the safety limits '
                    f'are {self.safety.max_linear_speed} m/s and '
                    f'{self.safety.max_angular_speed} rad/s: the gate would clip it every '
                    f'time; lower the action speeds or raise the limits')


def check_instruction(text: str) -> str:
    """Return the instruction with whitespace normalised; ValueError says why it is rejected."""
    if not isinstance(text, str):
        raise ValueError(f'instruction must be text, got {type(text).__name__}')
    cleaned = ' '.join(text.split())
    if not cleaned:
        raise ValueError('empty instruction')
    if len(cleaned) > MAX_INSTRUCTION_CHARS:
        raise ValueError(f'instruction is {len(cleaned)} characters long '
                         f'(more than {MAX_INSTRUCTION_CHARS}); not a spoken command')
    if '\ufffd' in cleaned or any(not ch.isprintable() for ch in cleaned):
        raise ValueError(f'instruction contains unprintable or undecodable characters: '
                         f'{cleaned[:60]!r}')
    if not any(ch.isalpha() for ch in cleaned):
        raise ValueError(f'instruction contains no words: {cleaned[:60]!r}')
    return cleaned


def is_stop_phrase(text: str) -> bool:
    """Return True when the utterance only asks the robot to stop ("halt!", "hold on")."""
    words = _WORD.findall(text.lower().replace('\u2019', "'"))
    words = [w.replace("'", '') for w in words]
    if not any(w in _STOP_WORDS for w in words):
        return False
    return all(w in _STOP_WORDS or w in _STOP_FILLERS for w in words)


def yaw_from_quaternion(x: float, y: float, z: float, w: float) -> float:
    """Return the yaw (rotation about z, rad) of a quaternion."""
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


class OdometryTracker:
    """Odometry as (x, y, yaw, v, w) relative to the pose where the instruction began."""

    def __init__(self):
        self._pose: Optional[Pose2D] = None
        self._velocity: Tuple[float, float] = (0.0, 0.0)
        self._origin: Optional[Pose2D] = None

    @property
    def received(self) -> bool:
        """Return True once any odometry arrived."""
        return self._pose is not None

    def update(self, pose: Pose2D, linear: float, angular: float) -> None:
        """Store the newest pose (odometry frame) and body velocity."""
        self._pose = pose
        self._velocity = (linear, angular)
        if self._origin is None:
            self._origin = pose

    def restart(self) -> None:
        """Make the newest pose the origin (a new instruction began)."""
        self._origin = self._pose

    def relative(self) -> Tuple[float, float, float, float, float]:
        """Return (x, y, yaw, v, w) since the origin; zeros before any odometry."""
        if self._pose is None:
            return (0.0, 0.0, 0.0, 0.0, 0.0)
        x, y, yaw = relative_pose(self._origin, self._pose)
        return (x, y, yaw, self._velocity[0], self._velocity[1])


class FollowerObservation:
    """What a policy sees (DESIGN.md §5): `image` H x W x 3 uint8 RGB, `odom`, `t`."""

    __slots__ = ('image', 'odom', 't')

    def __init__(self, image: np.ndarray, odom: Tuple[float, ...], t: float):
        self.image = image
        self.odom = odom
        self.t = t


def action_probabilities(policy) -> Optional[Dict[str, float]]:
    """
    Return the policy's last action distribution as {action: probability}, or None.

    A policy exposes one as `last_probabilities`: a mapping by action name, or a sequence
    in the order of `ACTIONS`. Anything else (or nothing) gives None.
    """
    probabilities = getattr(policy, 'last_probabilities', None)
    if probabilities is None:
        return None
    if isinstance(probabilities, dict):
        values = [probabilities.get(name, 0.0) for name in ACTIONS]
    else:
        values = list(np.asarray(probabilities, dtype=float).reshape(-1))
    if len(values) != len(ACTIONS) or not all(math.isfinite(v) for v in values):
        return None
    return {name: round(float(v), 6) for name, v in zip(ACTIONS, values)}


def sample_action(probabilities: Dict[str, float], temperature: float,
                  rng: random.Random) -> str:
    """
    Draw an action from `probabilities` sharpened (T < 1) or flattened (T > 1).

    p_i^(1/T), renormalised, equals softmax(logits / T): sampling needs no logits.
    """
    names = [name for name in ACTIONS if probabilities.get(name, 0.0) > 0.0]
    if not names:
        raise ValueError('no action has a positive probability')
    log_weights = [math.log(probabilities[name]) / temperature for name in names]
    top = max(log_weights)
    return rng.choices(names, weights=[math.exp(w - top) for w in log_weights])[0]
