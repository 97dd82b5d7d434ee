"""The discrete motion primitives shared by the simulator, the expert, the model and the nodes."""

from dataclasses import asdict, dataclass
import math
from typing import Dict, Tuple

ACTIONS: Tuple[str, ...] = (
    'stop',
    'forward',
    'forward_left',
    'forward_right',
    'turn_left',
    'turn_right',
    'backward',
)
ACTION_INDEX: Dict[str, int] = {name: i for i, name in enumerate(ACTIONS)}
NUM_ACTIONS = len(ACTIONS)
CONTROL_RATE_HZ = 10.0


@dataclass(frozen=True)
class ActionParams:
    """Speeds that turn each motion primitive into a Twist (m/s and rad/s)."""

    # forward speed of `forward` (m/s)
    forward_speed: float = 0.4
    # forward speed of `forward_left` / `forward_right` (m/s)
    arc_speed: float = 0.3
    # yaw rate of `forward_left` / `forward_right` (rad/s)
    arc_turn_rate: float = 0.6
    # yaw rate of `turn_left` / `turn_right` in place (rad/s)
    turn_rate: float = 0.8
    # speed of `backward` (m/s, positive number; the robot moves backwards)
    backward_speed: float = 0.2

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not math.isfinite(value) or value <= 0.0:
                raise ValueError(f'ActionParams.{name} must be a positive finite number, '
                                 f'got {value!r}')

    def twist(self, action: str) -> Tuple[float, float]:
        """Return (linear m/s, angular rad/s) for an action name."""
        table = {
            'stop': (0.0, 0.0),
            'forward': (self.forward_speed, 0.0),
            'forward_left': (self.arc_speed, self.arc_turn_rate),
            'forward_right': (self.arc_speed, -self.arc_turn_rate),
            'turn_left': (0.0, self.turn_rate),
            'turn_right': (0.0, -self.turn_rate),
            'backward': (-self.backward_speed, 0.0),
        }
        try:
            return table[action]
        except KeyError:
            raise ValueError(f'unknown action {action!r}; expected one of {", ".join(ACTIONS)}')


def action_index(action: str) -> int:
    """Return the index of an action name, with a clear error for unknown names."""
    try:
        return ACTION_INDEX[action]
    except KeyError:
        raise ValueError(f'unknown action {action!r}; expected one of {", ".join(ACTIONS)}')
