"""
Ground-truth captions of camera views, and hard negatives that differ in one attribute.

A caption lists the objects in view from left to right, each with its colour, shape, range
and side, e.g. "a red cube close on the left, a blue sphere far ahead". A hard negative is
the same caption with one object's colour, shape or side changed so that it no longer
describes the view.
"""

from dataclasses import dataclass
import math
import random
from typing import List, Optional, Sequence, Tuple

from vlit_ros.core.geometry import Pose2D, to_frame, wrap_angle
from vlit_ros.sim.scene import COLORS, ObjectSpec, Scene, SHAPES

# Range words: closer than NEAR_M is "close", farther than FAR_M is "far", else no word.
NEAR_M = 1.5
FAR_M = 3.0
# Objects within this bearing of the optical axis are "ahead" (degrees).
AHEAD_DEG = 12.0
SIDES: Tuple[str, ...] = ('on the left', 'ahead', 'on the right')
EMPTY_VIEW = 'no objects in view'
NEGATIVE_KINDS: Tuple[str, ...] = ('color', 'shape', 'side')


@dataclass(frozen=True)
class ViewObject:
    """An object as the camera sees it."""

    color: str
    shape: str
    # distance from the camera (m) and bearing from the optical axis (degrees, + = left)
    distance: float
    bearing_deg: float

    @property
    def side(self) -> str:
        if abs(self.bearing_deg) <= AHEAD_DEG:
            return 'ahead'
        return 'on the left' if self.bearing_deg > 0 else 'on the right'

    @property
    def range_word(self) -> str:
        if self.distance < NEAR_M:
            return 'close'
        return 'far' if self.distance > FAR_M else ''


def camera_pose(scene: Scene, robot_pose: Pose2D) -> Pose2D:
    """Return the front camera's pose in the world frame (it sits 0.5 radius ahead)."""
    robot = scene.robot
    offset = robot.radius * 0.5
    return (robot_pose[0] + offset * math.cos(robot_pose[2]),
            robot_pose[1] + offset * math.sin(robot_pose[2]),
            wrap_angle(robot_pose[2] + math.radians(robot.camera_yaw_deg)))


# Horizontal radius of an object's silhouette over its `size`: a cube's diagonal reaches
# sqrt(2) of its half-extent, seen from a corner; 1.2 is between face-on and corner-on.
_SILHOUETTE_RADIUS = {'cube': 1.2, 'sphere': 1.0, 'cylinder': 1.0}
# Nearest depth (m) a box is projected at, so an object beside the lens stays finite.
_MIN_DEPTH_M = 0.05


def image_box(scene: Scene, robot_pose: Pose2D, obj: ObjectSpec
              ) -> Optional[Tuple[float, float, float, float]]:
    """
    Return the box (left, right, top, bottom) an object covers in the front image, or None.

    Coordinates are fractions of the image width and height (0 = left / top edge), clipped
    to the image; None when no part of the object is in front of the camera and inside the
    field of view. The box bounds the object's silhouette from its nearest depth, so it is
    a little generous; occlusion by other objects is not taken into account here.
    """
    robot = scene.robot
    cam = camera_pose(scene, robot_pose)
    x, y = to_frame(cam, obj.x, obj.y)
    radius = obj.size * _SILHOUETTE_RADIUS[obj.shape]
    distance = math.hypot(x, y)
    if distance <= radius:
        return None
    bearing = math.atan2(y, x)
    half = math.asin(radius / distance)
    tan_half_fov = math.tan(math.radians(robot.camera_hfov_deg) / 2.0)
    edges = []
    for angle in (bearing + half, bearing - half):
        # Directions beyond 90 degrees project to one side or the other, off the image.
        angle = max(-math.pi / 2 + 1e-3, min(math.pi / 2 - 1e-3, angle))
        edges.append(0.5 - math.tan(angle) / (2.0 * tan_half_fov))
    left, right = max(edges[0], 0.0), min(edges[1], 1.0)
    if right <= left or x + radius <= 0.0:
        return None
    depth = max(x - radius, _MIN_DEPTH_M)
    # Square pixels: the vertical focal length in image heights is the horizontal one
    # scaled by width / height.
    focal = robot.image_width / robot.image_height / (2.0 * tan_half_fov)
    top = 0.5 - (obj.height - robot.camera_height) / depth * focal
    bottom = 0.5 + robot.camera_height / depth * focal
    top, bottom = max(top, 0.0), min(bottom, 1.0)
    if bottom <= top:
        return None
    return left, right, top, bottom


def visible_objects(scene: Scene, robot_pose: Pose2D) -> List[ViewObject]:
    """
    Return the objects whose centre is inside the field of view and not hidden, left first.

    An object counts as hidden when a nearer object covers its whole angular width.
    """
    cam = camera_pose(scene, robot_pose)
    half_fov = scene.robot.camera_hfov_deg / 2.0
    seen = []
    for obj in scene.objects:
        x, y = to_frame(cam, obj.x, obj.y)
        distance = math.hypot(x, y)
        bearing = math.degrees(math.atan2(y, x))
        if x <= 0.0 or abs(bearing) > half_fov:
            continue
        half_width = math.degrees(math.atan2(obj.size, max(distance, 1e-6)))
        seen.append((ViewObject(obj.color, obj.shape, distance, bearing), half_width))
    visible = []
    for view, half_width in seen:
        hidden = any(other.distance < view.distance and
                     abs(other.bearing_deg - view.bearing_deg) + half_width <= other_half
                     for other, other_half in seen)
        if not hidden:
            visible.append(view)
    return sorted(visible, key=lambda v: -v.bearing_deg)


def _phrase(color: str, shape: str, range_word: str, side: str) -> str:
    words = ['a', color, shape] + ([range_word] if range_word else []) + [side]
    return ' '.join(words)


def caption(objects: Sequence[ViewObject]) -> str:
    """Describe a view: its visible objects from left to right, or that it is empty."""
    if not objects:
        return EMPTY_VIEW
    return ', '.join(_phrase(o.color, o.shape, o.range_word, o.side) for o in objects)


def hard_negative(objects: Sequence[ViewObject], rng: random.Random) -> Tuple[str, str]:
    """
    Return (caption, kind): the caption with one object's colour, shape or side changed.

    The changed object never matches an object actually visible on that side, so the
    negative is false. An empty view gets an invented object straight ahead (kind 'object').
    """
    if not objects:
        return _phrase(rng.choice(list(COLORS)), rng.choice(SHAPES), '', 'ahead'), 'object'
    present = {(o.color, o.shape, o.side) for o in objects}
    options = []
    for index, obj in enumerate(objects):
        for kind in NEGATIVE_KINDS:
            if kind == 'color':
                values = [(c, obj.shape, obj.side) for c in COLORS if c != obj.color]
            elif kind == 'shape':
                values = [(obj.color, s, obj.side) for s in SHAPES if s != obj.shape]
            else:
                values = [(obj.color, obj.shape, s) for s in SIDES if s != obj.side]
            options += [(index, kind, v) for v in values if v not in present]
    index, kind, (color, shape, side) = rng.choice(options)
    parts = [_phrase(o.color, o.shape, o.range_word, o.side) for o in objects]
    parts[index] = _phrase(color, shape, objects[index].range_word, side)
    return ', '.join(parts), kind
