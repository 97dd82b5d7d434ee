"""
Target memory: where the named object was last seen, carried forward by odometry.

The executor reads one frame. Once the target leaves the view (close up, after a turn, when
an object passes in front of it) a memoryless executor acts on whatever is in front of it,
and after a fruitless sweep it cannot tell "searched already" from "just started". The
memory keeps, per instruction, the last sighting of the target by the grounding map:

- a sighting is a frame whose map has a patch at or above `SIGHTED_PROBABILITY`; its bearing
  is the mean column of those patches, turned into an angle through the camera's field of
  view, plus the unwrapped yaw at that frame (so it stays put in the instruction frame);
- the executor gets `MEMORY_FEATURES` numbers of the sightings *before* the current frame
  (the current frame's map is already in the fused state): whether there was one, the sine
  and cosine of its bearing from the current heading, the distance driven since (squashed),
  and how recent it is.

The same code runs on the model's own map at inference (`ModelPolicy`) and on the
ground-truth patch coverage of the named object's box in training data
(`episode_memory_features`), which is what a perfect map would have said.
"""

import math
from typing import Tuple

import numpy as np

# seen, sin and cos of the bearing to the last sighting, distance driven since, recency.
MEMORY_FEATURES = 5
# A patch at or above this probability (or ground-truth coverage) is a sighting.
SIGHTED_PROBABILITY = 0.5
# The bearing of an image column assumes the default camera's horizontal field of view.
CAMERA_HFOV_RAD = math.radians(90.0)
# Distance driven since the sighting (m) at which its feature reaches tanh(1); the bearing
# of a sighting grows stale with parallax as the robot drives.
_DRIVEN_SCALE_M = 1.0
# Time since the sighting (s) over which its recency decays by e.
_RECENCY_S = 5.0


def patch_columns(grid: Tuple[int, int]) -> np.ndarray:
    """Return each patch's centre column in the image on (-1, 1), + to the left (token order)."""
    rows, cols = grid
    return np.tile(1.0 - (2.0 * np.arange(cols) + 1.0) / cols, rows)


def sightings(probabilities: np.ndarray, columns: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """
    Return (sighted (B,) bool, bearing (B,) rad, + left) of grounding maps (B, patches).

    The bearing is that of the mean column of the patches at or above `SIGHTED_PROBABILITY`
    (0 where there is no sighting).
    """
    above = probabilities >= SIGHTED_PROBABILITY
    count = above.sum(-1)
    column = np.where(count > 0, (above * columns).sum(-1) / np.maximum(count, 1), 0.0)
    return count > 0, np.arctan(column * math.tan(CAMERA_HFOV_RAD / 2.0))


class TargetMemory:
    """The last sighting of one robot's target since its instruction began."""

    __slots__ = ('seen', 'bearing', 'x', 'y', 't')

    def __init__(self):
        self.seen = False
        self.bearing = self.x = self.y = self.t = 0.0

    def features(self, x: float, y: float, yaw_total: float, t: float) -> np.ndarray:
        """Return the (MEMORY_FEATURES,) features at odometry (x, y), unwrapped yaw and t."""
        if not self.seen:
            return np.zeros(MEMORY_FEATURES, np.float32)
        relative = self.bearing - yaw_total
        return np.array([1.0, math.sin(relative), math.cos(relative),
                         math.tanh(math.hypot(x - self.x, y - self.y) / _DRIVEN_SCALE_M),
                         math.exp(-max(t - self.t, 0.0) / _RECENCY_S)], np.float32)

    def update(self, sighted: bool, bearing: float, x: float, y: float, yaw_total: float,
               t: float) -> None:
        """Record a frame's sighting (`sightings`) made at this odometry, if there was one."""
        if sighted:
            self.seen = True
            self.bearing = yaw_total + bearing
            self.x, self.y, self.t = x, y, t


def episode_memory_features(probabilities: np.ndarray, columns: np.ndarray,
                            odom: np.ndarray, yaw_total: np.ndarray,
                            t: np.ndarray) -> np.ndarray:
    """
    Return (frames, MEMORY_FEATURES) for one episode's frames in order.

    `probabilities` (frames, patches) are the grounding maps (or ground-truth coverage) of
    each frame, `odom` (frames, 5) the odometry in the instruction frame.
    """
    sighted, bearing = sightings(probabilities, columns)
    memory = TargetMemory()
    out = np.zeros((len(t), MEMORY_FEATURES), np.float32)
    for row in range(len(t)):
        x, y = float(odom[row, 0]), float(odom[row, 1])
        out[row] = memory.features(x, y, float(yaw_total[row]), float(t[row]))
        memory.update(bool(sighted[row]), float(bearing[row]), x, y, float(yaw_total[row]),
                      float(t[row]))
    return out
