"""
Map memory: where the model's own grounding map last lit up, carried forward by odometry.

The executor reads one frame. Once the target leaves the view (close up, after a turn) a
memoryless executor acts on whatever is in front of it. With `ExecutorConfig.map_memory`
the executor also reads `MEMORY_FEATURES` numbers about the frames *before* the current one
(the current frame's map is already in the fused state):

- the *sighting* is the earlier frame whose map peak, decayed by its age
  (p * exp(-age / `memory_decay_s`)), is the strongest; its bearing is the peak patch's
  column turned into an angle through the camera's horizontal field of view, plus the
  unwrapped yaw of that frame, so it stays put in the instruction frame while the robot
  turns;
- features: the decayed strength, the sine and cosine of the sighting's bearing from the
  current heading, the distance driven since (tanh of metres), and the undecayed peak.

The memory is built from the map the policy itself produces, in training as at run time:
`ModelPolicy` updates one `MapMemory` per robot from each frame's map, and training
recomputes the features of every frame (`episode_memory_features`) from the current
model's maps over the earlier frames of its episode. (A memory fed with ground truth in
training, a perfect map's, taught the executor to trust it more than the real map deserves;
docs/TRAINING.md, "Memory and a searching expert".)
"""

import math
from typing import Tuple

import numpy as np

# decayed strength, sin and cos of the bearing from the heading, driven since, peak.
MEMORY_FEATURES = 5
# Distance driven since the sighting (m) at which its feature reaches tanh(1); the bearing
# of a sighting grows stale with parallax as the robot drives.
_DRIVEN_SCALE_M = 1.0


def patch_bearings(grid: Tuple[int, int], hfov_deg: float) -> np.ndarray:
    """
    Return each patch's bearing (rad, + to the left) in token order for a pinhole camera.

    `grid` is (rows, cols) of the vision encoder; patches of one column share a bearing.
    """
    rows, cols = grid
    centres = 1.0 - (2.0 * np.arange(cols) + 1.0) / cols
    return np.tile(np.arctan(centres * math.tan(math.radians(hfov_deg) / 2.0)), rows)


class MapMemory:
    """The strongest decayed sighting of one robot's map since its instruction began."""

    __slots__ = ('decay_s', 'peak', 'bearing', 'x', 'y', 't')

    def __init__(self, decay_s: float):
        if not (math.isfinite(decay_s) and decay_s > 0.0):
            raise ValueError(f'memory decay must be a positive number of seconds, '
                             f'got {decay_s!r}')
        self.decay_s = decay_s
        self.peak = 0.0
        self.bearing = self.x = self.y = self.t = 0.0

    def strength(self, t: float) -> float:
        """Return the sighting's peak decayed to time `t` (0 before any frame)."""
        return self.peak * math.exp(-max(t - self.t, 0.0) / self.decay_s)

    def features(self, x: float, y: float, yaw_total: float, t: float) -> np.ndarray:
        """Return the (MEMORY_FEATURES,) features at odometry (x, y), unwrapped yaw and t."""
        if self.peak <= 0.0:
            return np.zeros(MEMORY_FEATURES, np.float32)
        relative = self.bearing - yaw_total
        return np.array([self.strength(t), math.sin(relative), math.cos(relative),
                         math.tanh(math.hypot(x - self.x, y - self.y) / _DRIVEN_SCALE_M),
                         self.peak], np.float32)

    def update(self, probabilities: np.ndarray, bearings: np.ndarray, x: float, y: float,
               yaw_total: float, t: float) -> None:
        """Take a frame's map (patches,) seen at this odometry if it beats the sighting."""
        best = int(np.argmax(probabilities))
        peak = float(probabilities[best])
        if math.isfinite(peak) and peak > 0.0 and peak >= self.strength(t):
            self.peak = peak
            self.bearing = yaw_total + float(bearings[best])
            self.x, self.y, self.t = x, y, t


def episode_memory_features(probabilities: np.ndarray, bearings: np.ndarray,
                            odom: np.ndarray, yaw_total: np.ndarray, t: np.ndarray,
                            decay_s: float) -> np.ndarray:
    """
    Return (frames, MEMORY_FEATURES) for one episode's frames in order.

    `probabilities` (frames, patches) are the maps of each frame, `odom` (frames, 5) the
    odometry in the instruction frame: what `MapMemory` gives a policy that saw these maps.
    """
    memory = MapMemory(decay_s)
    out = np.zeros((len(t), MEMORY_FEATURES), np.float32)
    for row in range(len(t)):
        x, y = float(odom[row, 0]), float(odom[row, 1])
        out[row] = memory.features(x, y, float(yaw_total[row]), float(t[row]))
        memory.update(probabilities[row], bearings, x, y, float(yaw_total[row]), float(t[row]))
    return out


def memory_features(probabilities: np.ndarray, bearings: np.ndarray, odom: np.ndarray,
                    yaw_total: np.ndarray, t: np.ndarray, first_frame: np.ndarray,
                    decay_s: float) -> np.ndarray:
    """
    Return (frames, MEMORY_FEATURES) for frames of many episodes stored one after another.

    `first_frame` (frames,) bool marks the first frame of each episode (step 0).
    """
    frames = len(t)
    starts = np.flatnonzero(first_frame)
    if frames and (not len(starts) or starts[0] != 0):
        raise ValueError('the frames must begin with the first frame of an episode')
    out = np.zeros((frames, MEMORY_FEATURES), np.float32)
    for start, stop in zip(starts, list(starts[1:]) + [frames]):
        span = slice(int(start), int(stop))
        out[span] = episode_memory_features(probabilities[span], bearings, odom[span],
                                            yaw_total[span], t[span], decay_s)
    return out
