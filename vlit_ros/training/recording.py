"""
Record instruction-following episodes frame by frame, labelled with the expert's action.

Data generation drives with a noisy expert and DAgger drives with the learner; both record
the same fields, so their shards concatenate into one imitation dataset:
image, odometry (x, y, yaw, v, w), the ground-truth pose (x, y, yaw in the world, for
auxiliary targets), unwrapped yaw since the instruction, time, the expert's action (the
label) and the action actually taken (the next frame's previous action).
"""

import random
from typing import Dict, List, Optional

import numpy as np

from vlit_ros.core.actions import ACTION_INDEX, ACTIONS
from vlit_ros.core.geometry import wrap_angle
from vlit_ros.sim.episode import EpisodeResult, EpisodeSpec, run_episode
from vlit_ros.sim.expert import ExpertRules
from vlit_ros.sim.world import World

# Per-frame arrays of a trajectory shard and their dtypes.
FRAME_FIELDS = {
    'image': np.uint8,
    'odom': np.float32,
    'pose': np.float32,
    'yaw_total': np.float32,
    't': np.float32,
    'expert_action': np.int64,
    'taken_action': np.int64,
    'episode': np.int64,
    'step': np.int64,
}
# A perturbation may be a stop only while the robot moves faster than this (m/s, rad/s).
_MOVING_MPS = 0.15
_MOVING_RADPS = 0.4


class FrameBuffer:
    """Frames of many episodes, appended in order and turned into arrays at the end."""

    def __init__(self):
        self._columns: Dict[str, list] = {name: [] for name in FRAME_FIELDS}
        self.episodes: List[dict] = []

    def __len__(self) -> int:
        return len(self._columns['step'])

    def add(self, **fields) -> None:
        for name in FRAME_FIELDS:
            self._columns[name].append(fields[name])

    def arrays(self, image_shape) -> Dict[str, np.ndarray]:
        """Return the columns as arrays; an empty buffer gives zero-length ones."""
        out = {}
        for name, dtype in FRAME_FIELDS.items():
            column = self._columns[name]
            if name == 'image' and not column:
                out[name] = np.zeros((0,) + tuple(image_shape), dtype)
            elif name in ('odom', 'pose') and not column:
                out[name] = np.zeros((0, 5 if name == 'odom' else 3), dtype)
            else:
                out[name] = np.asarray(column, dtype=dtype)
        return out


class RecordingDriver:
    """
    A privileged policy for `run_episode` that records every frame with the expert's label.

    `chooser(obs, expert_action) -> action` decides what is actually executed: the expert
    action with noise for data generation, the learner's action for DAgger; its
    `reset(instruction)` starts each episode.
    """

    privileged = True

    def __init__(self, buffer: FrameBuffer, episode_index: int, chooser,
                 rules: ExpertRules = ExpertRules()):
        self.expert = rules.policy()
        self._buffer = buffer
        self._episode = episode_index
        self._chooser = chooser
        self._step = 0
        self._yaw_total = 0.0
        self._last_yaw = 0.0
        self._world = None

    def reset(self, instruction: str, task=None, world=None) -> None:
        self.expert.reset(instruction, task=task, world=world)
        self._chooser.reset(instruction)
        self._world = world

    def act(self, obs) -> str:
        yaw = obs.odom[2]
        self._yaw_total += wrap_angle(yaw - self._last_yaw)
        self._last_yaw = yaw
        label = self.expert.act(obs)
        # Render before the world steps: the image must show the state the label is for.
        image = obs.image
        taken = self._chooser(obs, label)
        self._buffer.add(image=image, odom=np.asarray(obs.odom, np.float32),
                         pose=np.asarray(self._world.pose(), np.float32),
                         yaw_total=self._yaw_total, t=obs.t,
                         expert_action=ACTION_INDEX[label], taken_action=ACTION_INDEX[taken],
                         episode=self._episode, step=self._step)
        self._step += 1
        return taken


class NoisyExpertChooser:
    """
    Follow the expert, with two kinds of perturbation labelled by the expert all the same.

    - Bursts: now and then 1-4 random actions push the robot off the expert's path (a stop
      lasts one step and only while the robot moves, so it never ends the episode).
    - Overshoot: when the expert first says stop, the last motion sometimes goes on for 2-8
      more steps, so the data shows what to do past the goal (turn back, back up, stop).

    Both cover the states a learner reaches after its own mistakes; stopping at the right
    moment is otherwise seen on only a frame or two per episode.
    """

    def __init__(self, rng: random.Random, noise: float, overshoot: float = 0.0):
        if not 0.0 <= noise < 1.0:
            raise ValueError(f'noise must be in [0, 1), got {noise}')
        if not 0.0 <= overshoot <= 1.0:
            raise ValueError(f'overshoot must be in [0, 1], got {overshoot}')
        self._rng = rng
        self._noise = noise
        self._overshoot = overshoot
        self.reset('')

    def reset(self, instruction: str) -> None:
        self._burst_left = 0
        self._burst_action = 'stop'
        self._last_motion: Optional[str] = None
        self._overshot = False

    def __call__(self, obs, label: str) -> str:
        action = label
        if self._burst_left > 0:
            self._burst_left -= 1
            action = self._burst_action
        elif label == 'stop' and self._last_motion and not self._overshot:
            self._overshot = True
            if self._rng.random() < self._overshoot:
                self._burst_action = self._last_motion
                self._burst_left = self._rng.randint(1, 7)
                action = self._burst_action
        elif self._noise > 0.0 and self._rng.random() < self._noise:
            moving = abs(obs.odom[3]) > _MOVING_MPS or abs(obs.odom[4]) > _MOVING_RADPS
            choices = [a for a in ACTIONS if a != label and (a != 'stop' or moving)]
            self._burst_action = self._rng.choice(choices)
            # One stop step slows the robot without ending the episode (the judge ends it
            # on a stop once the robot is at rest), and shows that a stop may be followed
            # by more motion.
            self._burst_left = 0 if self._burst_action == 'stop' else self._rng.randint(0, 3)
            action = self._burst_action
        if action != 'stop':
            self._last_motion = action
        return action


def record_episode(world: World, spec: EpisodeSpec, buffer: FrameBuffer, episode_index: int,
                   chooser, extra: Optional[dict] = None,
                   rules: ExpertRules = ExpertRules()) -> EpisodeResult:
    """
    Run one episode with a recording driver and append its record to `buffer.episodes`.

    `rules` are the labelling expert's (`ExpertRules`).
    """
    first = len(buffer)
    driver = RecordingDriver(buffer, episode_index, chooser, rules=rules)
    result = run_episode(world, driver, spec)
    buffer.episodes.append(dict({
        'episode': episode_index, 'seed': spec.seed, 'family': spec.family,
        'text': spec.instruction.text, 'task': spec.instruction.task.to_dict(),
        'success': result.success, 'reason': result.reason,
        'first_frame': first, 'frames': len(buffer) - first,
    }, **(extra or {})))
    return result
