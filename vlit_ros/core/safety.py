"""
The safety gate between a policy's wish and the wheels (pure Python, no ROS).

Every command the follower publishes passes `SafetyGate.apply`, which outputs a zero
command when anything needed to act safely is missing (estop, a failure, a non-finite wish,
no instruction, a stale camera, a stalled inference) and otherwise clamps the speed and
limits the acceleration relative to the last output. Braking is never rate-limited: a
safety gate must not delay a stop, so moving towards zero is immediate and only speeding up
is limited.
"""

from dataclasses import asdict, dataclass
import math
import numbers
from typing import NamedTuple, Optional, Tuple

# Reasons a decision gives; '' means the wish passed through unchanged.
ESTOP = 'estop'
FAILURE = 'failure'
NON_FINITE = 'non-finite command'
NO_INSTRUCTION = 'no instruction'
NO_IMAGE = 'no image'
IMAGE_STALE = 'image stale'
NO_INFERENCE = 'no inference'
INFERENCE_STALLED = 'inference stalled'
SPEED_LIMIT = 'speed limit'
ACCELERATION_LIMIT = 'acceleration limit'
# Reasons that force a zero command (as opposed to limiting a moving one).
STOP_REASONS = (ESTOP, FAILURE, NON_FINITE, NO_INSTRUCTION, NO_IMAGE, IMAGE_STALE,
                NO_INFERENCE, INFERENCE_STALLED)


@dataclass(frozen=True)
class SafetyConfig:
    """Limits the safety gate enforces (SI units, seconds on a monotonic clock)."""

    # period of the control loop that republishes commands (s); acceleration steps use it
    control_period_s: float = 0.1
    # largest |linear velocity| ever commanded (m/s)
    max_linear_speed: float = 0.5
    # largest |angular velocity| ever commanded (rad/s)
    max_angular_speed: float = 1.0
    # largest increase of |linear velocity| per second (m/s^2); braking is not limited
    max_linear_accel: float = 2.0
    # largest increase of |angular velocity| per second (rad/s^2); braking is not limited
    max_angular_accel: float = 4.0
    # a camera frame older than this stops the robot (s)
    image_timeout_s: float = 0.25
    # stop when no instruction is active (False lets a policy drive without one)
    instruction_required: bool = True
    # stop when the last completed inference is older than this (s)
    inference_stall_timeout_s: float = 0.5

    def __post_init__(self):
        for name, value in asdict(self).items():
            if name == 'instruction_required':
                if not isinstance(value, bool):
                    raise ValueError(f'SafetyConfig.instruction_required must be a bool, '
                                     f'got {value!r}')
                continue
            if not _finite_number(value) or value <= 0.0:
                raise ValueError(f'SafetyConfig.{name} must be a positive finite number, '
                                 f'got {value!r}')
        for name in ('image_timeout_s', 'inference_stall_timeout_s'):
            value = getattr(self, name)
            if value < self.control_period_s:
                raise ValueError(
                    f'SafetyConfig.{name} = {value} s is shorter than the control period '
                    f'{self.control_period_s} s: the watchdog would stop the robot between '
                    f'two regular updates')


class GateDecision(NamedTuple):
    """The command to publish, and why it differs from the wish ('' when it does not)."""

    linear: float
    angular: float
    reason: str = ''
    detail: str = ''

    @property
    def stopped_by_gate(self) -> bool:
        """Return True when the gate forced a zero command."""
        return self.reason in STOP_REASONS


class SafetyGate:
    """Turn a desired (v, w) into a safe one; keeps the last output and the estop latch."""

    def __init__(self, config: SafetyConfig):
        self.config = config
        self._estop = False
        self._failure: Optional[str] = None
        self._last: Tuple[float, float] = (0.0, 0.0)
        self._last_time: Optional[float] = None

    @property
    def estop_engaged(self) -> bool:
        """Return True while the estop latch is set."""
        return self._estop

    @property
    def failure(self) -> Optional[str]:
        """Return the failure that holds the robot stopped, or None."""
        return self._failure

    @property
    def last_output(self) -> Tuple[float, float]:
        """Return the last (v, w) the gate let out."""
        return self._last

    def set_estop(self, engaged: bool) -> None:
        """Latch the estop on True; only an explicit False releases it."""
        self._estop = bool(engaged)

    def fail(self, detail: str) -> None:
        """Hold the robot stopped after an error until `clear_failure()`."""
        self._failure = detail or 'unspecified failure'

    def clear_failure(self) -> None:
        """Allow motion again after a failure (a new instruction, a new start)."""
        self._failure = None

    def apply(self, desired: Tuple[float, float], now: float,
              image_time: Optional[float], inference_time: Optional[float],
              instruction_active: bool) -> GateDecision:
        """
        Return the safe command for `desired` = (v, w) at time `now`.

        `image_time` is when the newest camera frame arrived and `inference_time` when the
        last inference finished (None: never), both on the clock of `now`.
        """
        stop = self._stop_reason(desired, now, image_time, inference_time, instruction_active)
        if stop is not None:
            return self._emit(0.0, 0.0, now, *stop)
        config = self.config
        linear = _clamp(desired[0], config.max_linear_speed)
        angular = _clamp(desired[1], config.max_angular_speed)
        reason = SPEED_LIMIT if (linear, angular) != tuple(desired) else ''
        dt = config.control_period_s
        if self._last_time is not None:
            dt = min(max(now - self._last_time, 0.0), config.control_period_s)
        limited = (_limit_speed_up(self._last[0], linear, config.max_linear_accel * dt),
                   _limit_speed_up(self._last[1], angular, config.max_angular_accel * dt))
        if limited != (linear, angular):
            reason = ACCELERATION_LIMIT
        detail = ''
        if reason:
            detail = f'wanted ({desired[0]:.3f}, {desired[1]:.3f})'
        return self._emit(limited[0], limited[1], now, reason, detail)

    def _stop_reason(self, desired, now, image_time, inference_time, instruction_active):
        config = self.config
        if self._estop:
            return ESTOP, 'estop engaged'
        if self._failure is not None:
            return FAILURE, self._failure
        if len(desired) != 2 or not all(_finite_number(x) for x in desired):
            return NON_FINITE, f'policy asked for {desired!r}'
        if config.instruction_required and not instruction_active:
            return NO_INSTRUCTION, 'waiting for an instruction'
        if image_time is None:
            return NO_IMAGE, 'no camera frame yet'
        age = now - image_time
        if not age <= config.image_timeout_s:
            return IMAGE_STALE, f'newest frame is {age:.3f} s old > {config.image_timeout_s} s'
        if inference_time is None:
            return NO_INFERENCE, 'waiting for the first inference'
        since = now - inference_time
        if not since <= config.inference_stall_timeout_s:
            return INFERENCE_STALLED, (f'last inference finished {since:.3f} s ago > '
                                       f'{config.inference_stall_timeout_s} s')
        return None

    def _emit(self, linear, angular, now, reason, detail) -> GateDecision:
        self._last = (linear, angular)
        self._last_time = now
        return GateDecision(linear, angular, reason, detail)


def _finite_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and \
        math.isfinite(value)


def _clamp(value: float, limit: float) -> float:
    return max(-limit, min(limit, float(value)))


def _limit_speed_up(previous: float, target: float, max_step: float) -> float:
    """Move from `previous` towards `target`, braking freely and speeding up by max_step."""
    # Reversing direction brakes to zero first (free), then speeds up from zero.
    base = previous if previous * target > 0.0 else 0.0
    if abs(target) <= abs(base):
        return target
    return base + max(-max_step, min(max_step, target - base))
