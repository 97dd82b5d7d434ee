"""
Seeded scene description: the one source both the MuJoCo model and the Gazebo world are built from.

A scene is pure data (frozen dataclasses, YAML/dict round trip). `Scene.generate(seed)` is
deterministic: the same seed gives the same arena, objects and robot start everywhere.
"""

from dataclasses import asdict, dataclass, field, replace
import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import yaml

SCENE_FORMAT_VERSION = 1

# RGB in [0, 1]; saturated and well apart so a 128x96 camera tells them apart under MuJoCo
# and Gazebo lighting alike.
COLORS: Dict[str, Tuple[float, float, float]] = {
    'red': (0.85, 0.08, 0.08),
    'green': (0.10, 0.70, 0.15),
    'blue': (0.10, 0.25, 0.90),
    'yellow': (0.95, 0.85, 0.10),
    'purple': (0.55, 0.15, 0.75),
    'orange': (1.00, 0.50, 0.05),
}
SHAPES: Tuple[str, ...] = ('cube', 'sphere', 'cylinder')

# Placement rules (metres, radians). Objects stand in front of the robot so a forward camera
# can find them with at most a short turn.
_ROBOT_START_HALF_RANGE = 2.0
_OBJECT_MIN_DISTANCE = 1.5
_OBJECT_MAX_DISTANCE = 5.0
_OBJECT_MAX_BEARING = math.radians(75.0)
_OBJECT_MIN_SEPARATION = 1.2
_WALL_MARGIN = 0.7
_MIN_OBJECTS, MAX_OBJECTS = 3, 6


def validate_color(color: str) -> str:
    """Return the colour name, or raise a ValueError listing the known ones."""
    if color not in COLORS:
        raise ValueError(f'unknown colour {color!r}; known colours: {", ".join(COLORS)}')
    return color


def validate_shape(shape: str) -> str:
    """Return the shape name, or raise a ValueError listing the known ones."""
    if shape not in SHAPES:
        raise ValueError(f'unknown shape {shape!r}; known shapes: {", ".join(SHAPES)}')
    return shape


@dataclass(frozen=True)
class ObjectSpec:
    """One coloured object standing on the floor."""

    # one of SHAPES
    shape: str
    # one of COLORS
    color: str
    # centre position in the world frame (m)
    x: float
    y: float
    # half-extent of a cube, radius of a sphere or cylinder (m)
    size: float

    def __post_init__(self):
        validate_shape(self.shape)
        validate_color(self.color)
        if not all(math.isfinite(v) for v in (self.x, self.y, self.size)):
            raise ValueError(f'object {self.name} has a non-finite position or size')
        if not 0.05 <= self.size <= 0.5:
            raise ValueError(f'object {self.name} size {self.size} m is outside [0.05, 0.5]')

    @property
    def name(self) -> str:
        return f'{self.color}_{self.shape}'

    @property
    def height(self) -> float:
        """Full height above the floor (m)."""
        return 2.5 * self.size if self.shape == 'cylinder' else 2.0 * self.size

    def clearance(self, x: float, y: float) -> float:
        """Horizontal distance from a point to the object's footprint (negative inside)."""
        dx, dy = x - self.x, y - self.y
        if self.shape != 'cube':
            return math.hypot(dx, dy) - self.size
        # Distance to an axis-aligned square of half-side `size`.
        qx, qy = abs(dx) - self.size, abs(dy) - self.size
        outside = math.hypot(max(qx, 0.0), max(qy, 0.0))
        return outside + min(max(qx, qy), 0.0)

    @property
    def footprint_radius(self) -> float:
        """Radius of the circle that covers the object's footprint (m)."""
        return self.size * math.sqrt(2.0) if self.shape == 'cube' else self.size


# The domain-shifted robot of `--world shifted` / `shifted:=true` (online-learning issue):
# first 20 degrees and 0.7; strengthened to 30 degrees and 0.6 in the fifteenth session, when
# the default checkpoint scored 69% on goto in the old shift (the issue asks for at most 60%
# there), and to these in the twenty-third, when the default checkpoint scored 75% in that one.
# At 50 degrees an object straight ahead is outside the camera's 90-degree field of view.
SHIFT_CAMERA_YAW_DEG = 50.0
SHIFT_LEFT_WHEEL_GAIN = 0.45
SHIFT_DESCRIPTION = (f'camera mount yawed {SHIFT_CAMERA_YAW_DEG:g} degrees, left wheel '
                     f'{round(100 * (1 - SHIFT_LEFT_WHEEL_GAIN))}% weaker')


@dataclass(frozen=True)
class RobotSpec:
    """The differential-drive robot, its camera and its wheels."""

    # radius of the round base used for collisions (m)
    radius: float = 0.2
    # distance between the wheels (m)
    wheel_base: float = 0.36
    # wheel radius (m)
    wheel_radius: float = 0.05
    # camera height above the floor (m)
    camera_height: float = 0.3
    # image width and height (pixels)
    image_width: int = 128
    image_height: int = 96
    # horizontal field of view (degrees)
    camera_hfov_deg: float = 90.0
    # camera mount yaw relative to the robot's heading (degrees, positive = left)
    camera_yaw_deg: float = 0.0
    # wheel effectiveness: 1.0 is nominal, 0.7 is a wheel 30% weaker than commanded
    left_wheel_gain: float = 1.0
    right_wheel_gain: float = 1.0
    # acceleration limits of the drive (m/s^2, rad/s^2)
    max_linear_accel: float = 2.0
    max_angular_accel: float = 4.0

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not math.isfinite(value):
                raise ValueError(f'RobotSpec.{name} must be finite, got {value!r}')
        positive = ('radius', 'wheel_base', 'wheel_radius', 'camera_height', 'image_width',
                    'image_height', 'max_linear_accel', 'max_angular_accel')
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f'RobotSpec.{name} must be positive, got {getattr(self, name)}')
        if not 10.0 <= self.camera_hfov_deg <= 170.0:
            raise ValueError(f'RobotSpec.camera_hfov_deg must be in [10, 170], '
                             f'got {self.camera_hfov_deg}')
        for name in ('left_wheel_gain', 'right_wheel_gain'):
            if not 0.0 < getattr(self, name) <= 2.0:
                raise ValueError(f'RobotSpec.{name} must be in (0, 2], got {getattr(self, name)}')

    @property
    def camera_vfov_deg(self) -> float:
        """Vertical field of view matching the horizontal one and the aspect ratio."""
        half_h = math.radians(self.camera_hfov_deg) / 2.0
        aspect = self.image_height / self.image_width
        return math.degrees(2.0 * math.atan(math.tan(half_h) * aspect))

    def shifted(self, camera_yaw_deg: float = SHIFT_CAMERA_YAW_DEG,
                left_wheel_gain: float = SHIFT_LEFT_WHEEL_GAIN) -> 'RobotSpec':
        """Return the domain-shifted robot: camera mount yawed, left wheel weaker."""
        return replace(self, camera_yaw_deg=camera_yaw_deg, left_wheel_gain=left_wheel_gain)


@dataclass(frozen=True)
class Scene:
    """A square walled arena, its objects and the robot's start pose."""

    # the seed this scene was generated from (informational when built by hand)
    seed: int
    # objects on the floor; (colour, shape) pairs are unique within a scene
    objects: Tuple[ObjectSpec, ...]
    # robot start pose in the world frame (m, m, rad)
    robot_x: float = 0.0
    robot_y: float = 0.0
    robot_yaw: float = 0.0
    # side length of the square arena inside its walls (m)
    arena_size: float = 8.0
    robot: RobotSpec = field(default_factory=RobotSpec)

    def __post_init__(self):
        object.__setattr__(self, 'objects', tuple(self.objects))
        if not self.objects:
            raise ValueError('a scene needs at least one object')
        names = [o.name for o in self.objects]
        if len(set(names)) != len(names):
            raise ValueError(f'colour/shape pairs must be unique in a scene, got {names}')
        half = self.arena_size / 2.0
        for o in self.objects:
            if abs(o.x) + o.footprint_radius > half or abs(o.y) + o.footprint_radius > half:
                raise ValueError(f'object {o.name} at ({o.x:.2f}, {o.y:.2f}) is outside the '
                                 f'{self.arena_size} m arena')
        if abs(self.robot_x) + self.robot.radius > half or \
                abs(self.robot_y) + self.robot.radius > half:
            raise ValueError('robot start pose is outside the arena')

    @classmethod
    def generate(cls, seed: int, num_objects: Optional[int] = None,
                 robot: Optional[RobotSpec] = None) -> 'Scene':
        """Build a random scene, deterministic for a seed."""
        if num_objects is not None and not _MIN_OBJECTS <= num_objects <= MAX_OBJECTS:
            raise ValueError(f'num_objects must be in [{_MIN_OBJECTS}, {MAX_OBJECTS}], '
                             f'got {num_objects}')
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5CE7E])
        arena = 8.0
        limit = arena / 2.0 - _WALL_MARGIN
        count = int(num_objects or rng.integers(_MIN_OBJECTS, MAX_OBJECTS + 1))
        rx, ry = rng.uniform(-_ROBOT_START_HALF_RANGE, _ROBOT_START_HALF_RANGE, size=2)
        ryaw = float(rng.uniform(-math.pi, math.pi))
        combos = [(c, s) for c in COLORS for s in SHAPES]
        order = rng.permutation(len(combos))
        objects = []
        for idx in order[:count]:
            color, shape = combos[idx]
            for _ in range(500):
                dist = rng.uniform(_OBJECT_MIN_DISTANCE, _OBJECT_MAX_DISTANCE)
                bearing = ryaw + rng.uniform(-_OBJECT_MAX_BEARING, _OBJECT_MAX_BEARING)
                x = rx + dist * math.cos(bearing)
                y = ry + dist * math.sin(bearing)
                if abs(x) > limit or abs(y) > limit:
                    continue
                if any(math.hypot(x - o.x, y - o.y) < _OBJECT_MIN_SEPARATION for o in objects):
                    continue
                size = float(rng.uniform(0.16, 0.24))
                objects.append(ObjectSpec(shape, color, round(float(x), 4),
                                          round(float(y), 4), round(size, 4)))
                break
        if len(objects) < _MIN_OBJECTS:
            # The start pose faces a corner too tightly; derive a new deterministic attempt.
            return cls.generate(seed + 1_000_003, num_objects, robot)._with_seed(seed)
        return cls(seed=int(seed), objects=tuple(objects), robot_x=round(float(rx), 4),
                   robot_y=round(float(ry), 4), robot_yaw=round(ryaw, 4), arena_size=arena,
                   robot=robot or RobotSpec())

    def _with_seed(self, seed: int) -> 'Scene':
        return replace(self, seed=int(seed))

    def with_robot(self, robot: RobotSpec) -> 'Scene':
        """Return the same scene with another robot (e.g. the shifted one)."""
        return replace(self, robot=robot)

    def find(self, color: Optional[str] = None, shape: Optional[str] = None
             ) -> Sequence[ObjectSpec]:
        """Return the objects matching a colour and/or shape."""
        return [o for o in self.objects
                if (color is None or o.color == color) and (shape is None or o.shape == shape)]

    def to_dict(self) -> dict:
        data = asdict(self)
        data['objects'] = [asdict(o) for o in self.objects]
        data['version'] = SCENE_FORMAT_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict) -> 'Scene':
        if not isinstance(data, dict):
            raise ValueError(f'a scene must be a mapping, got {type(data).__name__}')
        data = dict(data)
        version = data.pop('version', SCENE_FORMAT_VERSION)
        if version != SCENE_FORMAT_VERSION:
            raise ValueError(f'scene format version {version} is not supported '
                             f'(expected {SCENE_FORMAT_VERSION})')
        try:
            objects = tuple(ObjectSpec(**o) for o in data.pop('objects'))
            robot = RobotSpec(**data.pop('robot', {}))
            return cls(objects=objects, robot=robot, **data)
        except (TypeError, KeyError) as exc:
            raise ValueError(f'malformed scene description: {exc}') from exc

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> 'Scene':
        return cls.from_dict(yaml.safe_load(text))
