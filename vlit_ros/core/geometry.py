"""Planar pose helpers shared by the simulator, the expert and the nodes."""

import math
from typing import Tuple

Pose2D = Tuple[float, float, float]


def wrap_angle(angle: float) -> float:
    """Wrap an angle to [-pi, pi)."""
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


def relative_pose(origin: Pose2D, pose: Pose2D) -> Pose2D:
    """Express `pose` in the frame of `origin` (x ahead, y left, yaw counter-clockwise)."""
    dx = pose[0] - origin[0]
    dy = pose[1] - origin[1]
    c, s = math.cos(origin[2]), math.sin(origin[2])
    return (c * dx + s * dy, -s * dx + c * dy, wrap_angle(pose[2] - origin[2]))


def to_frame(origin: Pose2D, x: float, y: float) -> Tuple[float, float]:
    """Express a world point in the frame of `origin`."""
    rel = relative_pose(origin, (x, y, 0.0))
    return rel[0], rel[1]
