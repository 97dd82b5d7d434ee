"""
Online interactive learning: experience, reward matching, PPO, policy updates, guards.

Pure Python and PyTorch (no ROS); `vlit_ros.nodes.trainer_node` and the instruction follower
are thin shells around it.

Experience (layout `vlit_ros/experience/1`, `EXPERIENCE_LAYOUT_VERSION` 1). A `Transition`
is one control decision of the follower: the compact fused state the executor consumed
(`VisionLanguageModel.fuse` output, float32, state_dim), the executor's odometry input (its 8
odometry features, then 5 map-memory features for an executor with map memory),
the previous and the chosen action index, the chosen action's log-probability under the
distribution it was drawn from (softmax(logits / temperature)), the value estimate, the
policy version, the stamp (seconds, ROS time of the camera frame) and the episode id (the
follower's instruction counter). Training the fusion layers also needs what the fusion read:
the camera image and the instruction text ride along when present. `pack_transition` makes a
JSON-ready header and a flat list of float32 values:

    header = {"layout": "vlit_ros/experience/1", "policy_version": "3f2a9c01b7d4+12",
              "stamp": 41.2, "episode": 3, "prev_action": 1, "action": 2,
              "log_prob": -0.41, "value": 0.83, "temperature": 1.0,
              "odometry_dim": 8, "state_dim": 693,
              "instruction": "go to the red cube",        # optional
              "image_shape": [96, 128, 3], "image": "<base64 of the uint8 RGB pixels>"}
    values = odometry input (odometry_dim) followed by the fused state (state_dim)

`encode_transition` / `decode_transition` put both in one JSON text (`"values"` added to the
header) for std_msgs/String; the pair also fits std_msgs/Float32MultiArray with the header
in a dimension label. Stamps, ids and log-probabilities stay in the JSON header at full
precision: float32 would round a ROS time stamp to minutes. Unpacking checks everything
(layout, keys, types, lengths, ranges, finiteness) and raises ValueError saying what is wrong.

Rewards are (stamp, value) pairs; `match_rewards` gives each to the last transition with
stamp <= the reward's stamp, when that transition is at most `window_s`
(`DEFAULT_REWARD_WINDOW_S`, 0.5 s: five control ticks) older than the reward; others are
unmatched. Non-finite rewards and rewards beyond +-`reward_limit` (`DEFAULT_REWARD_LIMIT`,
100) are dropped and counted by `ExperienceBuffer.add_reward`.

Learning (`OnlineLearner`): PPO-clip with GAE on the InstructionExecutor (and, with
`train_fusion`, the cross-modal fusion layers), plus a KL penalty to a frozen copy of the
instruction-tuned policy and a KL budget: the update stops early when the mean approximate KL
to the policy that collected the data exceeds `target_kl`. The value head reads the
executor's features with their gradient stopped, so fitting values never moves the policy,
and the first `value_warmup_updates` updates fit the value head alone. Guards: a non-finite loss or
gradient abandons the whole update and leaves every weight and the optimizer state as they
were, bit for bit; updates are refused while paused (e-stop); when the moving average of
episode returns falls below the reference policy's by `rollback_margin` and by
`rollback_sigmas` standard errors of the difference (`OnlineLearner.rollback_threshold`), the
learner rolls back to the last good weights (kept in memory and on disk).

Policy updates (layout `vlit_ros/policy/1`): `encode_policy` writes the executor (and
optionally fusion) tensors as safetensors bytes whose metadata holds a JSON header (layout
version, each parameter's shape and dtype, policy version, source checkpoint hash, SHA-256 of
the tensor bytes); `validate_policy_update` checks all of it against the receiving model plus
the KL between the current and the candidate action distributions on recent states.
"""

import base64
import bisect
from collections import deque
import copy
from dataclasses import asdict, dataclass, field, fields
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Deque, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, \
    Union

import numpy as np
from safetensors import SafetensorError
import safetensors.torch
import torch
import torch.nn.functional as F

from vlit_ros.core.actions import NUM_ACTIONS
from vlit_ros.core.model.checkpoint import atomic_write, read_checkpoint_info, \
    save_checkpoint
from vlit_ros.core.model.executor import ExecutorOutput, ODOMETRY_FEATURES, VLITModel
from vlit_ros.core.model.memory import MEMORY_FEATURES
from vlit_ros.core.model.vision import as_image_batch

EXPERIENCE_LAYOUT_VERSION = 1
EXPERIENCE_LAYOUT = f'vlit_ros/experience/{EXPERIENCE_LAYOUT_VERSION}'
POLICY_LAYOUT_VERSION = 1
POLICY_LAYOUT = f'vlit_ros/policy/{POLICY_LAYOUT_VERSION}'
ONLINE_STATE_LAYOUT = 'vlit_ros/online_state/1'
DEFAULT_REWARD_WINDOW_S = 0.5
DEFAULT_REWARD_LIMIT = 100.0
EXECUTOR_PREFIX = 'executor.'
FUSION_PREFIX = 'vlm.fusion.'
# Inside a checkpoint directory (next to the loop's own training state files).
STATE_DIR = 'training_state'
STATE_FILE = 'online.json'
TENSORS_FILE = 'online.safetensors'
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# A log-probability a hair above 0 is float rounding; more is not a probability.
_LOG_PROB_SLACK = 1e-4
# Widths of an executor's odometry input: odometry features, without and with map memory.
ODOMETRY_WIDTHS = (ODOMETRY_FEATURES, ODOMETRY_FEATURES + MEMORY_FEATURES)


# -- experience -------------------------------------------------------------------------

@dataclass(frozen=True)
class Transition:
    """One decision of the follower, with what the learner needs to re-evaluate it."""

    # fused state (state_dim,) float32 the executor consumed
    fused: np.ndarray
    # executor odometry input (8,) float32 (`odometry_features`), or (13,) with map memory
    odometry: np.ndarray
    # action index taken one decision before (the start action at an instruction's start)
    prev_action: int
    # action index taken
    action: int
    # log-probability of `action` under softmax(logits / temperature) when it was drawn
    log_prob: float
    # the value estimate of the state
    value: float
    # version of the weights that decided (`OnlineLearner.version`, a checkpoint hash, ...)
    policy_version: str
    # ROS time (s) of the camera frame the decision used
    stamp: float
    # the episode id: a new instruction is a new episode; ids must not repeat (the
    # follower counts its instructions from a random base per process)
    episode: int
    # sampling temperature the decision was drawn at
    temperature: float = 1.0
    # the instruction text (needed only to train the fusion layers)
    instruction: str = ''
    # the camera image (H, W, 3) uint8 (needed only to train the fusion layers)
    image: Optional[np.ndarray] = None

    @property
    def has_inputs(self) -> bool:
        """Return True when the image and instruction the fusion read ride along."""
        return self.image is not None and bool(self.instruction)


_HEADER_NUMBERS = ('stamp', 'log_prob', 'value', 'temperature')
_HEADER_INTEGERS = ('episode', 'prev_action', 'action', 'odometry_dim', 'state_dim')


def pack_transition(transition: Transition) -> Tuple[Dict[str, Any], List[float]]:
    """Return (JSON-ready header, flat float32 values) of a transition; see the module doc."""
    fused = np.asarray(transition.fused, dtype=np.float32).reshape(-1)
    odometry = np.asarray(transition.odometry, dtype=np.float32).reshape(-1)
    header = {'layout': EXPERIENCE_LAYOUT, 'policy_version': str(transition.policy_version),
              'stamp': float(transition.stamp), 'episode': int(transition.episode),
              'prev_action': int(transition.prev_action), 'action': int(transition.action),
              'log_prob': float(transition.log_prob), 'value': float(transition.value),
              'temperature': float(transition.temperature),
              'odometry_dim': int(odometry.size), 'state_dim': int(fused.size)}
    if transition.instruction:
        header['instruction'] = transition.instruction
    if transition.image is not None:
        image = np.ascontiguousarray(transition.image, dtype=np.uint8)
        header['image_shape'] = list(image.shape)
        header['image'] = base64.b64encode(image.tobytes()).decode('ascii')
    values = np.concatenate([odometry, fused]).astype(np.float32)
    return header, values.tolist()


def unpack_transition(header: Union[str, Mapping[str, Any]], values: Sequence[float],
                      state_dim: Optional[int] = None,
                      odometry_dim: Optional[int] = None) -> Transition:
    """
    Rebuild a transition from `pack_transition` output, checking every field.

    `header` may be the JSON text or the parsed object. With `state_dim` and
    `odometry_dim`, the fused state and the odometry input must have those sizes (the
    receiving model's: `vlm.state_dim`, `executor.odometry_width`). Raises ValueError
    saying what is wrong.
    """
    if isinstance(header, (str, bytes)):
        try:
            header = json.loads(header)
        except ValueError as exc:
            raise ValueError(f'experience header is not JSON: {exc}') from exc
    if not isinstance(header, Mapping):
        raise ValueError(f'experience header must be a JSON object, got '
                         f'{type(header).__name__}')
    layout = header.get('layout')
    if layout != EXPERIENCE_LAYOUT:
        raise ValueError(f'experience layout {layout!r}; this code reads {EXPERIENCE_LAYOUT!r}')
    missing = [key for key in _HEADER_NUMBERS + _HEADER_INTEGERS + ('policy_version',)
               if key not in header]
    if missing:
        raise ValueError(f'experience header lacks {", ".join(missing)}')
    for key in _HEADER_INTEGERS:
        if isinstance(header[key], bool) or not isinstance(header[key], int):
            raise ValueError(f'experience {key} must be an integer, got {header[key]!r}')
    for key in _HEADER_NUMBERS:
        value = header[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value):
            raise ValueError(f'experience {key} must be a finite number, got {value!r}')
    if not isinstance(header['policy_version'], str):
        raise ValueError('experience policy_version must be a string')
    for key in ('prev_action', 'action'):
        if not 0 <= header[key] < NUM_ACTIONS:
            raise ValueError(f'experience {key} {header[key]} is not an action index '
                             f'(0..{NUM_ACTIONS - 1})')
    if header['log_prob'] > _LOG_PROB_SLACK:
        raise ValueError(f'experience log_prob {header["log_prob"]} is positive: not a '
                         f'log-probability')
    if header['temperature'] <= 0.0:
        raise ValueError(f'experience temperature must be positive, got '
                         f'{header["temperature"]}')
    if header['odometry_dim'] not in ODOMETRY_WIDTHS:
        raise ValueError(f'experience odometry_dim {header["odometry_dim"]}; an executor '
                         f'takes {" or ".join(map(str, ODOMETRY_WIDTHS))}')
    if odometry_dim is not None and header['odometry_dim'] != odometry_dim:
        raise ValueError(f'experience odometry_dim {header["odometry_dim"]}; this model\'s '
                         f'executor takes {odometry_dim}')
    if header['state_dim'] <= 0:
        raise ValueError(f'experience state_dim must be positive, got {header["state_dim"]}')
    if state_dim is not None and header['state_dim'] != state_dim:
        raise ValueError(f'experience state_dim {header["state_dim"]}; this model\'s fused '
                         f'state has {state_dim}')
    expected = header['odometry_dim'] + header['state_dim']
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f'experience values are not numbers: {exc}') from exc
    if array.size != expected:
        raise ValueError(f'experience carries {array.size} values; odometry_dim + state_dim '
                         f'= {expected}')
    if not np.isfinite(array).all() or np.abs(array).max(initial=0.0) > _FLOAT32_MAX:
        raise ValueError('experience values hold NaN, infinite or out-of-float32-range '
                         'numbers')
    array = array.astype(np.float32)
    instruction = header.get('instruction', '')
    if not isinstance(instruction, str):
        raise ValueError('experience instruction must be a string')
    return Transition(
        fused=array[header['odometry_dim']:].copy(),
        odometry=array[:header['odometry_dim']].copy(),
        prev_action=header['prev_action'], action=header['action'],
        log_prob=float(header['log_prob']), value=float(header['value']),
        policy_version=header['policy_version'], stamp=float(header['stamp']),
        episode=header['episode'], temperature=float(header['temperature']),
        instruction=instruction, image=_unpack_image(header))


def _unpack_image(header: Mapping[str, Any]) -> Optional[np.ndarray]:
    if 'image' not in header and 'image_shape' not in header:
        return None
    shape = header.get('image_shape')
    if not (isinstance(shape, list) and len(shape) == 3 and shape[2] == 3 and
            all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
        raise ValueError(f'experience image_shape must be [height, width, 3], got {shape!r}')
    try:
        data = base64.b64decode(header.get('image', ''), validate=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f'experience image is not base64: {exc}') from exc
    if len(data) != shape[0] * shape[1] * 3:
        raise ValueError(f'experience image has {len(data)} bytes; image_shape {shape} needs '
                         f'{shape[0] * shape[1] * 3}')
    return np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()


def encode_transition(transition: Transition) -> str:
    """Return one JSON text (the header plus `"values"`) for std_msgs/String."""
    header, values = pack_transition(transition)
    return json.dumps(dict(header, values=values), separators=(',', ':'))


def decode_transition(text: Union[str, bytes], state_dim: Optional[int] = None,
                      odometry_dim: Optional[int] = None) -> Transition:
    """Parse `encode_transition` output; ValueError says what is wrong."""
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise ValueError(f'experience message is not JSON: {exc}') from exc
    if not isinstance(message, dict) or 'values' not in message:
        raise ValueError('experience message must be a JSON object with "values"')
    values = message.pop('values')
    if not isinstance(values, list):
        raise ValueError('experience "values" must be a list of numbers')
    return unpack_transition(message, values, state_dim, odometry_dim)


# -- rewards ----------------------------------------------------------------------------

def reward_problem(value: float, limit: float = DEFAULT_REWARD_LIMIT) -> Optional[str]:
    """Return why a reward must be dropped ('non_finite', 'absurd') or None when it is fine."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        return 'non_finite'
    if abs(value) > limit:
        return 'absurd'
    return None


def match_rewards(stamps: Sequence[float], rewards: Sequence[Tuple[float, float]],
                  window_s: float = DEFAULT_REWARD_WINDOW_S) -> Tuple[np.ndarray, int]:
    """
    Give each (stamp, value) reward to the last transition stamped at or before it.

    `stamps` are the transitions' stamps in non-decreasing order. A reward counts only when
    that transition is at most `window_s` older than the reward. Returns (the summed reward
    of each transition, the number of rewards no transition took).
    """
    stamps = list(stamps)
    if any(later < earlier for earlier, later in zip(stamps, stamps[1:])):
        raise ValueError('transition stamps must be in non-decreasing order')
    totals = np.zeros(len(stamps))
    unmatched = 0
    for stamp, value in rewards:
        index = bisect.bisect_right(stamps, stamp) - 1
        if index < 0 or stamp - stamps[index] > window_s:
            unmatched += 1
        else:
            totals[index] += value
    return totals, unmatched


def discounted_advantages(rewards: np.ndarray, values: np.ndarray, bootstrap: float,
                          gamma: float, lam: float) -> Tuple[np.ndarray, np.ndarray]:
    """Return GAE(gamma, lambda) advantages and returns of one trajectory."""
    advantages = np.zeros(len(rewards))
    running = 0.0
    for step in reversed(range(len(rewards))):
        following = bootstrap if step == len(rewards) - 1 else values[step + 1]
        delta = rewards[step] + gamma * following - values[step]
        running = delta + gamma * lam * running
        advantages[step] = running
    return advantages, advantages + values


class EpisodeSummary(NamedTuple):
    """A finished trajectory: its summed reward, the weights that drove it, its outcome."""

    total_reward: float
    policy_version: str
    steps: int
    success: Optional[bool]


@dataclass
class Rollout:
    """A batch of finished trajectories, flattened, with GAE advantages and returns."""

    fused: torch.Tensor          # (N, state_dim) float32
    odometry: torch.Tensor       # (N, 8) float32
    prev_action: torch.Tensor    # (N,) long
    action: torch.Tensor         # (N,) long
    log_prob: torch.Tensor       # (N,) behaviour log-probabilities
    value: torch.Tensor          # (N,) behaviour value estimates
    temperature: torch.Tensor    # (N,)
    reward: torch.Tensor         # (N,) matched rewards
    advantage: torch.Tensor      # (N,) GAE advantages
    returns: torch.Tensor        # (N,) value targets
    episodes: List[EpisodeSummary] = field(default_factory=list)
    # the camera images (N, H, W, 3) uint8 and instructions, when every transition has them
    images: Optional[torch.Tensor] = None
    instructions: Optional[List[str]] = None

    def __len__(self) -> int:
        return int(self.action.shape[0])

    @classmethod
    def from_trajectories(cls, trajectories: Sequence[Tuple[Sequence[Transition], np.ndarray,
                                                            float]],
                          gamma: float, lam: float,
                          episodes: Sequence[EpisodeSummary] = ()) -> 'Rollout':
        """Build from (transitions, their rewards, bootstrap value) per trajectory."""
        flat: List[Transition] = []
        rewards, advantages, returns = [], [], []
        for transitions, reward, bootstrap in trajectories:
            values = np.array([t.value for t in transitions])
            advantage, target = discounted_advantages(np.asarray(reward, dtype=np.float64),
                                                      values, bootstrap, gamma, lam)
            flat.extend(transitions)
            rewards.append(reward)
            advantages.append(advantage)
            returns.append(target)
        if not flat:
            raise ValueError('a rollout needs at least one transition')

        def column(name, dtype):
            return torch.tensor([getattr(t, name) for t in flat], dtype=dtype)

        def joined(parts):
            return torch.from_numpy(np.concatenate(parts).astype(np.float32))

        with_inputs = all(t.has_inputs for t in flat)
        return cls(
            fused=torch.from_numpy(np.stack([t.fused for t in flat]).astype(np.float32)),
            odometry=torch.from_numpy(np.stack([t.odometry for t in flat]).astype(np.float32)),
            prev_action=column('prev_action', torch.long), action=column('action', torch.long),
            log_prob=column('log_prob', torch.float32), value=column('value', torch.float32),
            temperature=column('temperature', torch.float32), reward=joined(rewards),
            advantage=joined(advantages), returns=joined(returns), episodes=list(episodes),
            images=torch.from_numpy(np.stack([t.image for t in flat])) if with_inputs
            else None,
            instructions=[t.instruction for t in flat] if with_inputs else None)


class ExperienceBuffer:
    """
    Transitions and rewards from the topics, cut into trajectories for the learner.

    Transitions are kept in stamp order. A trajectory ends at an episode end (`end_episode`,
    the task's `vlit/episode` end event) or where the episode id changes (the follower got a
    new instruction); both are terminal. Decisions of an episode id after its end event (the
    follower acts until the next instruction, but nobody judges it) are dropped and counted
    as `after_end`. `take` returns the finished trajectories with their
    rewards matched (`match_rewards`); rewards that arrive for transitions already taken are
    counted as late. With `force`, the unfinished trajectory is cut before its newest
    transition, whose value bootstraps the cut (for instructions that run for a long time
    without episode events, e.g. a person giving rewards by hand).
    """

    def __init__(self, state_dim: Optional[int] = None,
                 window_s: float = DEFAULT_REWARD_WINDOW_S,
                 reward_limit: float = DEFAULT_REWARD_LIMIT, capacity: int = 20000):
        if not (math.isfinite(window_s) and window_s > 0.0):
            raise ValueError(f'reward window must be a positive number of seconds, got '
                             f'{window_s!r}')
        if not (math.isfinite(reward_limit) and reward_limit > 0.0):
            raise ValueError(f'reward limit must be positive, got {reward_limit!r}')
        if capacity < 2:
            raise ValueError(f'capacity must be at least 2 transitions, got {capacity}')
        self.state_dim = state_dim
        self.window_s = window_s
        self.reward_limit = reward_limit
        self.capacity = capacity
        self._transitions: List[Transition] = []
        self._stamps: List[float] = []
        self._rewards: List[Tuple[float, float]] = []
        # episode end stamps (sorted) and whether each episode succeeded (None: unknown)
        self._end_stamps: List[float] = []
        self._end_success: List[Optional[bool]] = []
        # the newest transition already handed out, for counting late rewards
        self._taken_stamp = -math.inf
        # recent episode ids whose end event came: their later decisions are not judged
        self._ended: Deque[int] = deque(maxlen=1000)
        self.counts = {'transitions': 0, 'rewards': 0, 'dropped_non_finite': 0,
                       'dropped_absurd': 0, 'unmatched_rewards': 0, 'late_rewards': 0,
                       'late_transitions': 0, 'rejected_transitions': 0, 'overflow': 0,
                       'after_end': 0}

    def __len__(self) -> int:
        return len(self._transitions)

    def add_transition(self, transition: Transition) -> bool:
        """
        Store a transition; False (counted) if it is older than what was handed out.

        Raises ValueError (counted) when its fused state does not fit `state_dim`.
        """
        if self.state_dim is not None and transition.fused.shape != (self.state_dim,):
            self.counts['rejected_transitions'] += 1
            raise ValueError(f'transition fused state has shape {transition.fused.shape}; '
                             f'expected ({self.state_dim},)')
        if transition.stamp <= self._taken_stamp:
            self.counts['late_transitions'] += 1
            return False
        if transition.episode in self._ended:
            self.counts['after_end'] += 1
            return False
        index = bisect.bisect_right(self._stamps, transition.stamp)
        self._stamps.insert(index, transition.stamp)
        self._transitions.insert(index, transition)
        self.counts['transitions'] += 1
        if len(self._transitions) > self.capacity:
            # Nobody is taking rollouts (paused learning): keep the newest experience.
            self._transitions.pop(0)
            self._stamps.pop(0)
            self.counts['overflow'] += 1
        return True

    def add_reward(self, stamp: float, value: float) -> bool:
        """Store a reward received at `stamp`; False when it is dropped (and counted)."""
        problem = reward_problem(value, self.reward_limit)
        if problem is None and not math.isfinite(stamp):
            problem = 'non_finite'
        if problem is not None:
            self.counts[f'dropped_{problem}'] += 1
            return False
        self.counts['rewards'] += 1
        self._rewards.append((float(stamp), float(value)))
        if len(self._rewards) > self.capacity:
            # Rewards with no experience to go to (a follower that publishes none).
            self._rewards.pop(0)
            self.counts['unmatched_rewards'] += 1
        return True

    def end_episode(self, stamp: float, success: Optional[bool] = None) -> None:
        """Mark an episode end at `stamp` (transitions up to it finish their trajectory)."""
        index = bisect.bisect_right(self._end_stamps, stamp)
        self._end_stamps.insert(index, float(stamp))
        self._end_success.insert(index, success)
        if len(self._end_stamps) > self.capacity:
            self._end_stamps.pop(0)
            self._end_success.pop(0)

    def finished(self) -> int:
        """Return how many stored transitions belong to finished trajectories."""
        return self._closed_count()

    def _closed_count(self) -> int:
        if not self._transitions:
            return 0
        closed = 0
        if self._end_stamps:
            closed = bisect.bisect_right(self._stamps, self._end_stamps[-1])
        last_episode = self._transitions[-1].episode
        start = len(self._transitions) - 1
        while start > 0 and self._transitions[start - 1].episode == last_episode:
            start -= 1
        return max(closed, start)

    def take(self, gamma: float, lam: float, force: bool = False) -> Optional[Rollout]:
        """Return the finished trajectories as a Rollout and forget them; None if none."""
        closed = self._closed_count()
        bootstrap_from = None
        if force and closed < len(self._transitions) - 1:
            closed = len(self._transitions) - 1
            bootstrap_from = self._transitions[closed]
        if closed == 0:
            return None
        taken, self._transitions = self._transitions[:closed], self._transitions[closed:]
        stamps, self._stamps = self._stamps[:closed], self._stamps[closed:]
        following = self._stamps[0] if self._stamps else math.inf

        # Rewards stamped before the next kept transition are settled now.
        settled = [r for r in self._rewards if r[0] < following]
        self._rewards = [r for r in self._rewards if r[0] >= following]
        late = [r for r in settled if r[0] < stamps[0]]
        for stamp, _ in late:
            if stamp - self._taken_stamp <= self.window_s:
                self.counts['late_rewards'] += 1
            else:
                self.counts['unmatched_rewards'] += 1
        totals, unmatched = match_rewards(stamps, [r for r in settled if r[0] >= stamps[0]],
                                          self.window_s)
        self.counts['unmatched_rewards'] += unmatched
        self._taken_stamp = stamps[-1]

        trajectories, episodes = [], []
        begin = 0
        for index in range(1, closed + 1):
            if index < closed and taken[index].episode == taken[index - 1].episode and \
                    not self._end_between(stamps[index - 1], stamps[index]):
                continue
            piece = taken[begin:index]
            reward = totals[begin:index]
            begin = index
            if piece[0].episode in self._ended:
                self.counts['after_end'] += len(piece)
                continue
            cut = index == closed and bootstrap_from is not None and \
                bootstrap_from.episode == piece[-1].episode and \
                not self._end_between(stamps[index - 1], bootstrap_from.stamp)
            trajectories.append((piece, reward, bootstrap_from.value if cut else 0.0))
            if cut:
                continue
            following_stamp = stamps[index] if index < closed else following
            end = self._end_after(stamps[index - 1])
            success = None
            if end is not None and self._end_stamps[end] < following_stamp:
                self._ended.append(piece[-1].episode)
                success = self._end_success[end]
            episodes.append(EpisodeSummary(float(reward.sum()), piece[-1].policy_version,
                                           len(piece), success))
        keep = bisect.bisect_right(self._end_stamps, stamps[-1])
        self._end_stamps, self._end_success = self._end_stamps[keep:], self._end_success[keep:]
        if not trajectories:
            return None
        return Rollout.from_trajectories(trajectories, gamma, lam, episodes)

    def _end_between(self, earlier: float, later: float) -> bool:
        index = bisect.bisect_left(self._end_stamps, earlier)
        return index < len(self._end_stamps) and self._end_stamps[index] < later

    def _end_after(self, stamp: float) -> Optional[int]:
        index = bisect.bisect_left(self._end_stamps, stamp)
        return index if index < len(self._end_stamps) else None


# -- policy weight messages -------------------------------------------------------------

def policy_prefixes(include_fusion: bool) -> Tuple[str, ...]:
    """Return the state-dict prefixes a policy update carries."""
    return (EXECUTOR_PREFIX, FUSION_PREFIX) if include_fusion else (EXECUTOR_PREFIX,)


def policy_state(model: VLITModel, include_fusion: bool = False) -> Dict[str, torch.Tensor]:
    """Return detached CPU copies of the executor (and fusion) tensors, by state-dict key."""
    prefixes = policy_prefixes(include_fusion)
    return {key: value.detach().to('cpu').clone().contiguous()
            for key, value in model.state_dict().items() if key.startswith(prefixes)}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace('torch.', '')


def _tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().to('cpu').contiguous().reshape(-1)
        digest.update(f'{key}:{_dtype_name(tensor.dtype)}:{tuple(tensors[key].shape)};'
                      .encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def encode_policy(model: VLITModel, version: str, source_checkpoint: str = '',
                  include_fusion: bool = False) -> bytes:
    """Serialise the policy weights as safetensors bytes with a JSON header (module doc)."""
    tensors = policy_state(model, include_fusion)
    header = {'layout_version': POLICY_LAYOUT_VERSION, 'policy_version': str(version),
              'source_checkpoint': str(source_checkpoint),
              'parameters': {key: {'shape': list(value.shape),
                                   'dtype': _dtype_name(value.dtype)}
                             for key, value in sorted(tensors.items())},
              'tensors_sha256': _tensors_digest(tensors)}
    return safetensors.torch.save(tensors, metadata={'layout': POLICY_LAYOUT,
                                                     'header': json.dumps(header)})


def read_policy_payload(payload: bytes) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """
    Parse a policy payload and check it is self-consistent; return (header, tensors).

    Checks the safetensors framing, the layout and its version, that the header lists
    exactly the tensors present with their shapes and dtypes, the SHA-256 of the tensor
    bytes, and that every value is finite. Raises ValueError with the reason.
    """
    data = bytes(payload)
    try:
        tensors = safetensors.torch.load(data)
    except (SafetensorError, RuntimeError, ValueError) as exc:
        raise ValueError(f'policy update is not a readable safetensors payload (truncated or '
                         f'corrupt): {exc}') from exc
    length = int.from_bytes(data[:8], 'little')
    metadata = json.loads(data[8:8 + length]).get('__metadata__') or {}
    if metadata.get('layout') != POLICY_LAYOUT:
        raise ValueError(f'policy update layout {metadata.get("layout")!r}; this code reads '
                         f'{POLICY_LAYOUT!r}')
    try:
        header = json.loads(metadata.get('header', ''))
    except ValueError as exc:
        raise ValueError(f'policy update header is not JSON: {exc}') from exc
    if not isinstance(header, dict):
        raise ValueError('policy update header must be a JSON object')
    if header.get('layout_version') != POLICY_LAYOUT_VERSION:
        raise ValueError(f'policy update layout version {header.get("layout_version")!r}; '
                         f'this code reads {POLICY_LAYOUT_VERSION}')
    version = header.get('policy_version')
    if not isinstance(version, str) or not version:
        raise ValueError('policy update has no policy_version')
    if not isinstance(header.get('source_checkpoint'), str):
        raise ValueError('policy update source_checkpoint must be a string')
    parameters = header.get('parameters')
    if not isinstance(parameters, dict):
        raise ValueError('policy update header lists no parameters')
    if set(parameters) != set(tensors):
        listed, present = set(parameters), set(tensors)
        raise ValueError(f'policy update header and tensors disagree: listed but absent '
                         f'{_few(sorted(listed - present))}, present but unlisted '
                         f'{_few(sorted(present - listed))}')
    for key, tensor in tensors.items():
        described = parameters[key]
        if not isinstance(described, dict) or \
                described.get('shape') != list(tensor.shape) or \
                described.get('dtype') != _dtype_name(tensor.dtype):
            raise ValueError(f'policy update header describes {key} as {described!r}, the '
                             f'tensor is {_dtype_name(tensor.dtype)} {list(tensor.shape)}')
    if header.get('tensors_sha256') != _tensors_digest(tensors):
        raise ValueError('policy update tensors do not match their SHA-256 in the header: '
                         'the payload was corrupted')
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f'policy update {key} holds NaN or infinite values')
    return header, tensors


def _few(keys: Sequence[str], limit: int = 4) -> str:
    if not keys:
        return 'none'
    shown = ', '.join(keys[:limit])
    return shown if len(keys) <= limit else f'{shown} and {len(keys) - limit} more'


class PolicyUpdate(NamedTuple):
    """A validated policy update, ready for `apply_policy_update`."""

    # the new tensors by the model's state-dict keys (executor, and fusion when included)
    state_dict: Dict[str, torch.Tensor]
    policy_version: str
    source_checkpoint: str
    # mean KL(current || candidate) over the sample of recent states
    kl: float
    includes_fusion: bool


def _state_batch(transitions: Sequence[Transition], device: torch.device):
    fused = torch.from_numpy(np.stack([t.fused for t in transitions]).astype(np.float32))
    odometry = torch.from_numpy(np.stack([t.odometry for t in transitions])
                                .astype(np.float32))
    prev = torch.tensor([t.prev_action for t in transitions], dtype=torch.long)
    temperature = torch.tensor([t.temperature for t in transitions], dtype=torch.float32)
    return fused.to(device), odometry.to(device), prev.to(device), temperature.to(device)


def _fusion_inputs(model: VLITModel, images: torch.Tensor, instructions: Sequence[str]):
    """
    Return the fusion's inputs, without gradients: (image tokens, encoded text, zoom tokens).

    The zoom tokens are those of the images' centre zoom for a model with the zoomed map
    (`FusionConfig.zoom_map`), else None.
    """
    with torch.no_grad():
        images = as_image_batch(images, model.device)
        zoom = model.vlm.zoom_tokens(images) if model.vlm.fusion.zoom_map else None
        return model.vlm.image_tokens(model.vlm.preprocess(images)), \
            model.vlm.encode_instructions(list(instructions)), zoom


@torch.no_grad()
def _log_policy(executor, fusion, model: VLITModel, transitions: Sequence[Transition]
                ) -> torch.Tensor:
    """Return log softmax(logits / temperature) (N, actions) of executor (and fusion)."""
    fused, odometry, prev, temperature = _state_batch(transitions, model.device)
    if fusion is not None:
        images = torch.from_numpy(np.stack([t.image for t in transitions]))
        fused = fusion(*_fusion_inputs(model, images, [t.instruction for t in transitions]))
    logits = executor(fused, odometry, prev)[0].logits.float()
    return F.log_softmax(logits / temperature.unsqueeze(1), dim=-1)


def validate_policy_update(current_model: VLITModel, payload: bytes,
                           sample_states: Sequence[Transition], max_kl: float,
                           expected_source: Optional[str] = None) -> PolicyUpdate:
    """
    Check a received policy payload against the model it would replace; never modifies it.

    On top of `read_policy_payload`: the names must be exactly the model's executor
    parameters (plus, optionally, all of its fusion parameters) with the model's shapes and
    dtypes; with `expected_source`, the update must come from a learner started from that
    checkpoint hash; and the mean KL(current || candidate) of the action distributions (at
    each state's temperature) over `sample_states`, recent transitions, must not exceed
    `max_kl`. Updates that include the fusion layers need states with their image and
    instruction. Raises ValueError with the reason; returns a `PolicyUpdate`.
    """
    if not (math.isfinite(max_kl) and max_kl >= 0.0):
        raise ValueError(f'max_kl must be a non-negative number, got {max_kl!r}')
    header, tensors = read_policy_payload(payload)
    includes_fusion = any(key.startswith(FUSION_PREFIX) for key in tensors)
    expected = {key: value for key, value in current_model.state_dict().items()
                if key.startswith(policy_prefixes(includes_fusion))}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f'policy update does not fit this model: missing {_few(missing)}, '
                         f'unexpected {_few(unexpected)}')
    for key, reference in expected.items():
        tensor = tensors[key]
        if tensor.shape != reference.shape or tensor.dtype != reference.dtype:
            raise ValueError(f'policy update {key} is {_dtype_name(tensor.dtype)} '
                             f'{list(tensor.shape)}; this model has '
                             f'{_dtype_name(reference.dtype)} {list(reference.shape)}')
    if expected_source is not None and header['source_checkpoint'] != expected_source:
        raise ValueError(f'policy update was trained from checkpoint '
                         f'{header["source_checkpoint"]!r}, this model is '
                         f'{expected_source!r}')
    states = list(sample_states)
    if not states:
        raise ValueError('no recent states to check the KL of the policy update on')
    if includes_fusion and not all(t.has_inputs for t in states):
        raise ValueError('the policy update changes the fusion layers; checking its KL needs '
                         'recent states with their image and instruction')
    executor = copy.deepcopy(current_model.executor).eval()
    executor.load_state_dict({key[len(EXECUTOR_PREFIX):]: value for key, value in
                              tensors.items() if key.startswith(EXECUTOR_PREFIX)})
    fusion = None
    if includes_fusion:
        fusion = copy.deepcopy(current_model.vlm.fusion).eval()
        fusion.load_state_dict({key[len(FUSION_PREFIX):]: value for key, value in
                                tensors.items() if key.startswith(FUSION_PREFIX)})
    current = _log_policy(current_model.executor, current_model.vlm.fusion
                          if includes_fusion else None, current_model, states)
    candidate = _log_policy(executor, fusion, current_model, states)
    kl = float((current.exp() * (current - candidate)).sum(-1).mean())
    if not math.isfinite(kl) or kl > max_kl:
        raise ValueError(f'policy update {header["policy_version"]} moves the action '
                         f'distribution too far: mean KL {kl:.4g} to the current policy on '
                         f'{len(states)} recent states, bound {max_kl:g}')
    return PolicyUpdate(tensors, header['policy_version'], header['source_checkpoint'], kl,
                        includes_fusion)


@torch.no_grad()
def apply_policy_update(model: VLITModel, update: PolicyUpdate) -> None:
    """Copy a validated update into `model` in place (CUDA graphs stay valid)."""
    model.load_state_dict(update.state_dict, strict=False)


# -- the learner ------------------------------------------------------------------------

def _check_fraction(name: str, value, low_open: bool = False, high: float = 1.0) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value) and (value > 0.0 if low_open else value >= 0.0) and value <= high
    if not ok:
        bound = '(0' if low_open else '[0'
        raise ValueError(f'LearnerConfig.{name} must be a number in {bound}, {high:g}], '
                         f'got {value!r}')


@dataclass
class LearnerConfig:
    """PPO, KL and guard settings of the online learner."""

    # discount factor of rewards per control step
    gamma: float = 0.99
    # GAE lambda (bias-variance trade-off of the advantage estimates)
    gae_lambda: float = 0.95
    # PPO clip range of the probability ratio
    clip: float = 0.2
    # Adam learning rate
    learning_rate: float = 1e-4
    # passes over each rollout
    epochs: int = 4
    # transitions per gradient step
    minibatch_size: int = 64
    # weight of the value loss
    value_coef: float = 0.5
    # weight of the entropy bonus
    entropy_coef: float = 0.001
    # weight of the KL(policy || instruction-tuned reference) penalty
    kl_coef: float = 0.05
    # KL budget: stop an update once the mean approximate KL to the policy that collected
    # its data exceeds this
    target_kl: float = 0.03
    # gradient norm clip
    max_grad_norm: float = 1.0
    # updates at the start that fit only the value head (the policy stays as it is)
    value_warmup_updates: int = 2
    # also train the cross-modal fusion layers (transitions must carry image and instruction)
    train_fusion: bool = False
    # episodes in the moving average of episode reward, and episodes that measure the
    # reference policy's average before the first update
    rollback_window: int = 20
    # roll back when the moving average falls this far below the reference average ...
    rollback_margin: float = 1.5
    # ... and this many standard errors of the difference of the two averages below it
    # (episode rewards of one policy spread widely; 0: the margin alone decides)
    rollback_sigmas: float = 3.0
    # the reference policy's average episode reward, when known (NaN: measure it)
    reference_return: float = float('nan')
    # good snapshots kept in memory besides the reference weights (the newest is on disk)
    snapshots: int = 4
    # seed of the minibatch order
    seed: int = 0

    def __post_init__(self):
        _check_fraction('gamma', self.gamma)
        _check_fraction('gae_lambda', self.gae_lambda)
        _check_fraction('clip', self.clip, low_open=True)
        _check_fraction('learning_rate', self.learning_rate, low_open=True)
        for name, least, kind in (('epochs', 1, 'positive'), ('minibatch_size', 1, 'positive'),
                                  ('rollback_window', 1, 'positive'),
                                  ('snapshots', 1, 'positive'),
                                  ('value_warmup_updates', 0, 'non-negative')):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f'LearnerConfig.{name} must be a {kind} integer, '
                                 f'got {value!r}')
        for name in ('value_coef', 'entropy_coef', 'kl_coef', 'rollback_margin',
                     'rollback_sigmas'):
            _check_fraction(name, getattr(self, name), high=1e3)
        _check_fraction('target_kl', self.target_kl, low_open=True, high=1e3)
        _check_fraction('max_grad_norm', self.max_grad_norm, low_open=True, high=1e6)
        if not isinstance(self.train_fusion, bool):
            raise ValueError(f'LearnerConfig.train_fusion must be true or false, '
                             f'got {self.train_fusion!r}')
        if not isinstance(self.reference_return, (int, float)) or \
                math.isinf(self.reference_return):
            raise ValueError(f'LearnerConfig.reference_return must be a number or NaN, got '
                             f'{self.reference_return!r}')
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f'LearnerConfig.seed must be an integer, got {self.seed!r}')

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> 'LearnerConfig':
        """Build from `asdict` output (a saved learner state); unknown keys are an error."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f'unknown learner settings: {", ".join(unknown)}')
        return cls(**data)


class UpdateReport(NamedTuple):
    """What one call of `OnlineLearner.update` did."""

    # updated, paused, measuring_reference, kl_budget (stopped before the first step),
    # non_finite, interrupted or rolled_back
    status: str
    # the policy version after the call
    version: str
    transitions: int
    # gradient steps taken and whether the KL budget cut the update short
    steps: int = 0
    early_stop: bool = False
    # means over the steps taken (NaN when none)
    approx_kl: float = float('nan')
    reference_kl: float = float('nan')
    policy_loss: float = float('nan')
    value_loss: float = float('nan')
    entropy: float = float('nan')
    clip_fraction: float = float('nan')
    # the moving average of episode reward and the reference's (NaN until measured)
    average_return: float = float('nan')
    reference_return: float = float('nan')
    detail: str = ''


class _Interrupted(Exception):
    pass


class _NonFinite(Exception):
    pass


class OnlineLearner:
    """
    PPO-clip + GAE on a `VLITModel`'s executor (and optionally fusion), with guards.

    One thread drives a learner; `set_paused` and `interrupt` may be called from others.
    `version` names the current weights: the source checkpoint's hash (first 12 hex digits)
    for the instruction-tuned weights, `HASH+N` after the N-th update.
    """

    def __init__(self, model: VLITModel, config: Optional[LearnerConfig] = None,
                 source_hash: str = '', directory: Optional[Union[str, Path]] = None,
                 base_version: Optional[str] = None):
        """
        Learn on `model` (in place), starting from its current weights as the reference.

        `source_hash` is the SHA-256 of the instruction-tuned checkpoint the weights descend
        from (`source_hash_of`); `base_version` names the starting weights as the followers
        running them report it (default: the first 12 hex digits of `source_hash`, what
        `ModelPolicy.from_checkpoint` reports for that checkpoint); `directory`, when given,
        receives the last good weights whenever they change
        (`training_state/last_good.safetensors`).
        """
        if not isinstance(model, VLITModel):
            raise TypeError(f'OnlineLearner needs a VLITModel, got {type(model).__name__}')
        self.config = config or LearnerConfig()
        self.model = model.eval()
        self.source_hash = source_hash
        self.directory = None if directory is None else Path(directory)
        self.base_version = base_version or (source_hash[:12] if source_hash else
                                             'untracked')
        self.version = self.base_version
        self.updates = 0
        self._prefixes = policy_prefixes(self.config.train_fusion)
        self.reference_executor = copy.deepcopy(model.executor).requires_grad_(False).eval()
        self.reference_fusion = copy.deepcopy(model.vlm.fusion).requires_grad_(False).eval() \
            if self.config.train_fusion else None
        self._parameters = [p for name, p in model.named_parameters()
                            if name.startswith(self._prefixes)]
        self.optimizer = torch.optim.Adam(self._parameters, lr=self.config.learning_rate)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self._pause_reasons: set = set()
        self._interrupt = False
        reference = self.config.reference_return
        self.reference_return = None if math.isnan(reference) else float(reference)
        self._reference_returns: List[float] = []
        # (moving average, threshold) when the guard last rolled back
        self.last_rollback: Tuple[float, float] = (math.nan, math.nan)
        self._recent: Deque[Tuple[float, str]] = deque(maxlen=self.config.rollback_window)
        # Weights of recent versions (to mark one good later) and the good snapshots; the
        # first good snapshot is always the reference (instruction-tuned) weights.
        self._versions: Dict[str, Dict[str, torch.Tensor]] = {}
        # versions a rollback abandoned: their late episodes say nothing about the weights now
        self._abandoned: set = set()
        self._good: List[Tuple[str, Dict[str, torch.Tensor]]] = [
            (self.version, self.trainable_state())]
        self.counts = {'updates': 0, 'non_finite': 0, 'kl_budget': 0, 'interrupted': 0,
                       'rollbacks': 0, 'paused_refusals': 0}

    # -- state ----------------------------------------------------------------------------

    def trainable_state(self) -> Dict[str, torch.Tensor]:
        """Return copies of the trainable tensors (executor, and fusion when trained)."""
        return {key: value.detach().clone() for key, value in self.model.state_dict().items()
                if key.startswith(self._prefixes)}

    @torch.no_grad()
    def _load_trainable(self, state: Mapping[str, torch.Tensor]) -> None:
        self.model.load_state_dict(dict(state), strict=False)

    @property
    def good_versions(self) -> List[str]:
        """Return the versions of the good snapshots held, oldest (the reference) first."""
        return [version for version, _ in self._good]

    @property
    def reference_ready(self) -> bool:
        """Return True once the reference policy's average episode reward is known."""
        return self.reference_return is not None

    @property
    def average_return(self) -> float:
        """Return the moving average of recent episode rewards (NaN when there are none)."""
        return float(np.mean([r for r, _ in self._recent])) if self._recent else math.nan

    # -- pausing --------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """Return True while any pause reason (an e-stop, a request) is in force."""
        return bool(self._pause_reasons)

    @property
    def pause_reasons(self) -> List[str]:
        """Return the reasons learning is paused for, sorted."""
        return sorted(self._pause_reasons)

    def set_paused(self, reason: str, paused: bool) -> None:
        """Add or lift one pause reason; an update in progress stops at its next step."""
        if paused:
            self._pause_reasons.add(reason)
        else:
            self._pause_reasons.discard(reason)

    def interrupt(self) -> None:
        """Make the update in progress (if any) stop and leave the weights as they were."""
        self._interrupt = True

    # -- episodes and rollback -----------------------------------------------------------

    def record_episodes(self, episodes: Sequence[EpisodeSummary]) -> Optional[str]:
        """
        Feed finished episodes to the reward guard; return 'rolled_back' when it fired.

        Episodes of the reference weights measure the reference average (until
        `rollback_window` of them have been seen, unless `reference_return` was given).
        Episodes of later weights enter the moving average; once it holds `rollback_window`
        episodes it is compared with the reference: `rollback_margin` or more below it rolls
        back to the last good weights, otherwise the newest weights among those episodes
        become the last good ones.
        """
        for episode in episodes:
            if episode.policy_version in self._abandoned:
                continue
            if episode.policy_version == self.base_version:
                if self.reference_return is None:
                    self._reference_returns.append(episode.total_reward)
                    if len(self._reference_returns) >= self.config.rollback_window:
                        self.reference_return = float(np.mean(self._reference_returns))
                continue
            self._recent.append((episode.total_reward, episode.policy_version))
            if self.reference_return is None or \
                    len(self._recent) < self.config.rollback_window:
                continue
            threshold = self.rollback_threshold()
            if self.average_return < threshold:
                self.last_rollback = (self.average_return, threshold)
                self.rollback()
                return 'rolled_back'
            self._mark_good(self._recent[-1][1])
        return None

    def rollback_threshold(self) -> float:
        """
        Return the moving average below which the guard rolls back (NaN until measured).

        That is the reference average less the larger of `rollback_margin` and
        `rollback_sigmas` standard errors of the difference between the two averages, from
        the spread of the episode rewards each was measured on. A policy whose episodes end
        anywhere between a timeout and a success has averages over a few episodes that
        differ by more than a fixed margin by chance alone.
        """
        if self.reference_return is None:
            return math.nan
        variance = 0.0
        for returns in ([r for r, _ in self._recent], self._reference_returns):
            if len(returns) > 1:
                variance += float(np.var(returns, ddof=1)) / len(returns)
        return self.reference_return - max(self.config.rollback_margin,
                                           self.config.rollback_sigmas * math.sqrt(variance))

    def _mark_good(self, version: str) -> None:
        if version in self.good_versions or version not in self._versions:
            return
        self._good.append((version, self._versions[version]))
        if len(self._good) > self.config.snapshots + 1:
            del self._good[1]
        self._write_last_good()

    def rollback(self) -> str:
        """
        Restore the last good weights bit-exactly and return their version.

        When the current weights are themselves the newest good snapshot, that snapshot is
        dropped and the one before it restored; the reference weights are never dropped.
        Raises ValueError when the weights already are the reference weights.
        """
        if self._good[-1][0] == self.version and len(self._good) > 1:
            self._good.pop()
            self._write_last_good()
        version, state = self._good[-1]
        if version == self.version and self._equal(state):
            raise ValueError(f'nothing to roll back to: the weights are the reference '
                             f'policy {version}')
        self._load_trainable(state)
        self._abandoned.update({self.version, *self._versions} - set(self.good_versions))
        self.version = version
        # Adam's moments point the way the abandoned weights went.
        self.optimizer.state.clear()
        self._recent.clear()
        self.counts['rollbacks'] += 1
        return version

    def _equal(self, state: Mapping[str, torch.Tensor]) -> bool:
        current = self.trainable_state()
        return all(torch.equal(current[key], value) for key, value in state.items())

    def _write_last_good(self) -> None:
        if self.directory is None:
            return
        folder = self.directory / STATE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        version, state = self._good[-1]
        data = safetensors.torch.save({key: value.cpu().contiguous()
                                       for key, value in state.items()},
                                      metadata={'layout': ONLINE_STATE_LAYOUT,
                                                'version': version})
        atomic_write(folder / 'last_good.safetensors', data)

    # -- PPO ------------------------------------------------------------------------------

    def update(self, rollout: Rollout) -> UpdateReport:
        """
        Run the reward guard on the rollout's episodes, then one PPO update on its data.

        Refused while paused or until the reference average is measured. A non-finite loss
        or gradient, or an `interrupt`, abandons the update: weights and optimizer state
        are restored bit-exactly.
        """
        def report(status, detail='', **values):
            return UpdateReport(status, self.version, len(rollout),
                                average_return=self.average_return,
                                reference_return=math.nan if self.reference_return is None
                                else self.reference_return, detail=detail, **values)

        self._interrupt = False
        if self.paused:
            self.counts['paused_refusals'] += 1
            return report('paused', f'paused: {", ".join(self.pause_reasons)}')
        if self.record_episodes(rollout.episodes) == 'rolled_back':
            average, threshold = self.last_rollback
            return report('rolled_back', f'moving average reward {average:.3f} fell below '
                          f'{threshold:.3f}; back to {self.version}')
        if not self.reference_ready:
            return report('measuring_reference',
                          f'{len(self._reference_returns)} of '
                          f'{self.config.rollback_window} reference episodes')
        if self.config.train_fusion and rollout.images is None:
            raise ValueError('train_fusion needs transitions that carry their image and '
                             'instruction')
        saved_weights = self.trainable_state()
        saved_optimizer = copy.deepcopy(self.optimizer.state_dict())
        try:
            stats = self._ppo(rollout)
        except (_NonFinite, _Interrupted) as exc:
            self._load_trainable(saved_weights)
            self.optimizer.load_state_dict(saved_optimizer)
            status = 'non_finite' if isinstance(exc, _NonFinite) else 'interrupted'
            self.counts[status] += 1
            return report(status, str(exc))
        if stats['steps'] == 0:
            self.counts['kl_budget'] += 1
            return report('kl_budget', 'the data is already further than target_kl from '
                          'the current policy', early_stop=True, approx_kl=stats['approx_kl'])
        self.updates += 1
        self.counts['updates'] += 1
        self.version = f'{self.base_version}+{self.updates}'
        self._versions[self.version] = self.trainable_state()
        while len(self._versions) > self.config.snapshots:
            del self._versions[next(iter(self._versions))]
        return report('updated', **stats)

    def _ppo(self, rollout: Rollout) -> Dict[str, Any]:
        config = self.config
        device = self.model.device
        count = len(rollout)
        advantage = rollout.advantage.to(device)
        if count > 1:
            advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
        sums = {'approx_kl': 0.0, 'reference_kl': 0.0, 'policy_loss': 0.0, 'value_loss': 0.0,
                'entropy': 0.0, 'clip_fraction': 0.0}
        steps = 0
        early_stop = False
        last_kl = math.nan
        # The first updates fit only the value head: advantages from an untrained critic
        # would point the policy anywhere.
        warming_up = self.updates < config.value_warmup_updates
        for _ in range(config.epochs):
            order = torch.randperm(count, generator=self.generator)
            for start in range(0, count, config.minibatch_size):
                if self._interrupt or self.paused:
                    raise _Interrupted('paused' if self.paused else 'interrupted')
                rows = order[start:start + config.minibatch_size]
                terms = self._losses(rollout, rows.to(device), advantage[rows.to(device)])
                last_kl = float(terms['approx_kl'])
                if not math.isfinite(last_kl) or last_kl > config.target_kl:
                    if not math.isfinite(last_kl):
                        raise _NonFinite('the KL to the behaviour policy is not finite')
                    early_stop = True
                    break
                loss = config.value_coef * terms['value_loss']
                if not warming_up:
                    loss = loss + terms['policy_loss'] - \
                        config.entropy_coef * terms['entropy'] + \
                        config.kl_coef * terms['reference_kl']
                if not bool(torch.isfinite(loss)):
                    raise _NonFinite(f'non-finite loss at step {steps + 1}')
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(self._parameters, config.max_grad_norm)
                if not bool(torch.isfinite(norm)):
                    self.optimizer.zero_grad(set_to_none=True)
                    raise _NonFinite(f'non-finite gradient at step {steps + 1}')
                self.optimizer.step()
                steps += 1
                for key in sums:
                    sums[key] += float(terms[key].detach())
            if early_stop:
                break
        self.optimizer.zero_grad(set_to_none=True)
        if steps == 0:
            return {'steps': 0, 'approx_kl': last_kl}
        means = {key: value / steps for key, value in sums.items()}
        return dict(means, steps=steps, early_stop=early_stop)

    def _losses(self, rollout: Rollout, rows: torch.Tensor, advantage: torch.Tensor
                ) -> Dict[str, torch.Tensor]:
        device = self.model.device
        odometry = rollout.odometry[rows.cpu()].to(device)
        prev = rollout.prev_action[rows.cpu()].to(device)
        temperature = rollout.temperature[rows.cpu()].to(device).unsqueeze(1)
        if self.config.train_fusion:
            inputs = _fusion_inputs(self.model, rollout.images[rows.cpu()],
                                    [rollout.instructions[i] for i in rows.tolist()])
            fused = self.model.vlm.fusion(*inputs)
            with torch.no_grad():
                reference_fused = self.reference_fusion(*inputs)
        else:
            fused = rollout.fused[rows.cpu()].to(device)
            reference_fused = fused
        executor = self.model.executor
        hidden = executor.features(fused, odometry, prev)
        # The critic reads the actor's features but does not shape them: fitting values
        # (returns of several units, from an untrained value head) would otherwise drive the
        # shared body, and with it the policy, away from the instruction-tuned one.
        output = ExecutorOutput(executor.policy_head(hidden),
                                executor.value_head(hidden.detach()).squeeze(-1))
        with torch.no_grad():
            reference_logits = self.reference_executor(reference_fused, odometry,
                                                       prev)[0].logits.float()
        log_probs = F.log_softmax(output.logits.float() / temperature, dim=-1)
        reference_log_probs = F.log_softmax(reference_logits / temperature, dim=-1)
        actions = rollout.action[rows.cpu()].to(device)
        new_log_prob = log_probs.gather(1, actions.unsqueeze(1)).squeeze(1)
        log_ratio = new_log_prob - rollout.log_prob[rows.cpu()].to(device)
        ratio = log_ratio.exp()
        clipped = ratio.clamp(1.0 - self.config.clip, 1.0 + self.config.clip)
        probabilities = log_probs.exp()
        with torch.no_grad():
            approx_kl = ((ratio - 1.0) - log_ratio).mean()
            clip_fraction = ((ratio - 1.0).abs() > self.config.clip).float().mean()
        returns = rollout.returns[rows.cpu()].to(device)
        return {
            'policy_loss': -torch.min(ratio * advantage, clipped * advantage).mean(),
            'value_loss': 0.5 * (output.value.float() - returns).pow(2).mean(),
            'entropy': -(probabilities * log_probs).sum(-1).mean(),
            'reference_kl': (probabilities * (log_probs - reference_log_probs)).sum(-1).mean(),
            'approx_kl': approx_kl, 'clip_fraction': clip_fraction}

    # -- policy messages ------------------------------------------------------------------

    def policy_payload(self) -> bytes:
        """Return the current weights as a policy update (`encode_policy`)."""
        return encode_policy(self.model, self.version, self.source_hash,
                             self.config.train_fusion)

    # -- checkpoints ----------------------------------------------------------------------

    def save(self, directory: Union[str, Path]) -> Path:
        """
        Write an inference checkpoint plus `training_state/` into `directory`.

        `config.json` + `model.safetensors` (the current weights, loadable by the follower),
        then `training_state/online.safetensors` (optimizer tensors, reference and good
        snapshots, minibatch RNG) and `training_state/online.json` (counters, versions, the
        reward guard, settings, the SHA-256 of the tensors file), each written to a
        temporary file, fsynced and renamed; `online.json` goes last and vouches for the rest.
        """
        directory = Path(directory)
        save_checkpoint(self.model, directory)
        folder = directory / STATE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        tensors: Dict[str, torch.Tensor] = {}
        scalars: Dict[str, Any] = {}
        optimizer_state = self.optimizer.state_dict()
        for index, entries in optimizer_state['state'].items():
            for name, value in entries.items():
                if torch.is_tensor(value):
                    tensors[f'optimizer.{index}.{name}'] = value.detach().cpu().contiguous()
                else:
                    scalars[f'{index}.{name}'] = value
        for key, value in self.reference_executor.state_dict().items():
            tensors[f'reference.{EXECUTOR_PREFIX}{key}'] = value.cpu().contiguous()
        if self.reference_fusion is not None:
            for key, value in self.reference_fusion.state_dict().items():
                tensors[f'reference.{FUSION_PREFIX}{key}'] = value.cpu().contiguous()
        for index, (_, state) in enumerate(self._good):
            for key, value in state.items():
                tensors[f'good.{index}.{key}'] = value.cpu().contiguous()
        tensors['rng.minibatch'] = self.generator.get_state()
        data = safetensors.torch.save(tensors, metadata={'layout': ONLINE_STATE_LAYOUT})
        atomic_write(folder / TENSORS_FILE, data)
        state = {
            'layout': ONLINE_STATE_LAYOUT, 'tensors_sha256': hashlib.sha256(data).hexdigest(),
            'config': _json_config(self.config), 'source_hash': self.source_hash,
            'base_version': self.base_version,
            'version': self.version, 'updates': self.updates,
            'good_versions': self.good_versions,
            'reference_return': self.reference_return,
            'reference_returns': self._reference_returns,
            'recent': [list(entry) for entry in self._recent], 'counts': self.counts,
            'abandoned': sorted(self._abandoned),
            'optimizer': {'param_groups': optimizer_state['param_groups'],
                          'scalars': scalars},
        }
        atomic_write(folder / STATE_FILE, (json.dumps(state, indent=1) + '\n').encode())
        if self.directory is not None:
            self._write_last_good()
        return directory

    @classmethod
    def restore(cls, directory: Union[str, Path], model: VLITModel,
                learner_directory: Optional[Union[str, Path]] = None) -> 'OnlineLearner':
        """
        Resume a learner from `save` output; `model` must hold that checkpoint's weights.

        Raises ValueError when the state is missing, from another layout, or does not
        match its SHA-256 (an interrupted or corrupted save).
        """
        folder = Path(directory) / STATE_DIR
        state_path, tensors_path = folder / STATE_FILE, folder / TENSORS_FILE
        if not state_path.is_file():
            raise ValueError(f'{directory} holds no online learner state ({state_path})')
        state = json.loads(state_path.read_text())
        if state.get('layout') != ONLINE_STATE_LAYOUT:
            raise ValueError(f'{state_path}: layout {state.get("layout")!r}, this code reads '
                             f'{ONLINE_STATE_LAYOUT!r}')
        data = tensors_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != state['tensors_sha256']:
            raise ValueError(f'{tensors_path} does not match the SHA-256 in {state_path}: '
                             f'the save was interrupted or the file is corrupt')
        tensors = safetensors.torch.load(data)
        config = state['config']
        config['reference_return'] = float('nan') if config['reference_return'] is None \
            else config['reference_return']
        learner = cls(model, LearnerConfig.from_dict(config), state['source_hash'],
                      learner_directory, state['base_version'])
        with torch.no_grad():
            learner.reference_executor.load_state_dict(_strip(tensors, 'reference.'
                                                              + EXECUTOR_PREFIX))
            if learner.reference_fusion is not None:
                learner.reference_fusion.load_state_dict(_strip(tensors, 'reference.'
                                                                + FUSION_PREFIX))
        learner._good = [(version, _strip(tensors, f'good.{index}.'))
                         for index, version in enumerate(state['good_versions'])]
        learner.generator.set_state(tensors['rng.minibatch'])
        optimizer_state: Dict[int, Dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith('optimizer.'):
                _, index, name = key.split('.', 2)
                optimizer_state.setdefault(int(index), {})[name] = value
        for key, value in state['optimizer']['scalars'].items():
            index, name = key.split('.', 1)
            optimizer_state.setdefault(int(index), {})[name] = value
        groups = state['optimizer']['param_groups']
        for group in groups:
            group['betas'] = tuple(group['betas'])
        learner.optimizer.load_state_dict({'state': optimizer_state, 'param_groups': groups})
        learner.version = state['version']
        learner.updates = state['updates']
        learner.reference_return = state['reference_return']
        learner._reference_returns = list(state['reference_returns'])
        learner._recent.extend((float(r), str(v)) for r, v in state['recent'])
        learner.counts.update(state['counts'])
        learner._abandoned = set(state['abandoned'])
        learner._versions[learner.version] = learner.trainable_state()
        return learner


def _strip(tensors: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in tensors.items()
            if key.startswith(prefix)}


def _json_config(config: LearnerConfig) -> Dict[str, Any]:
    values = asdict(config)
    if math.isnan(values['reference_return']):
        values['reference_return'] = None
    return values


def source_hash_of(checkpoint: Union[str, Path]) -> str:
    """
    Return the hash of the instruction-tuned checkpoint a checkpoint's policy descends from.

    For a checkpoint an `OnlineLearner` saved, that is the checkpoint it started from
    (recorded in `training_state/online.json`); for any other, the SHA-256 of its weights
    (from its config.json). Policy updates carry the same hash, so a follower started from a
    learner's checkpoint still accepts that learner's updates.
    """
    state_path = Path(checkpoint) / STATE_DIR / STATE_FILE
    if state_path.is_file():
        try:
            source = json.loads(state_path.read_text()).get('source_hash')
        except (OSError, ValueError, AttributeError) as exc:
            raise ValueError(f'{state_path}: not a readable learner state: {exc}') from exc
        if isinstance(source, str) and source:
            return source
    return str(read_checkpoint_info(checkpoint)['weights_sha256'])


# -- the follower's side ------------------------------------------------------------------

class ExecutorTap:
    """
    Keep the inputs and outputs of a model's last executor call, for experience messages.

    A forward hook on `model.executor`: it sees exactly the fused state, odometry features
    and previous actions the executor consumed. Hooks run in eager mode only: a policy
    compiled with torch.compile or replayed from a CUDA graph does not call them.
    """

    def __init__(self, model: VLITModel):
        self._last: Optional[Tuple[np.ndarray, ...]] = None
        self._handle = model.executor.register_forward_hook(self._record)

    def _record(self, module, args, output) -> None:
        fused, odometry, prev_action = args[:3]
        executor_output = output[0]
        self._last = (fused.detach().float().cpu().numpy(),
                      odometry.detach().float().cpu().numpy(),
                      prev_action.detach().cpu().numpy(),
                      executor_output.logits.detach().float().cpu().numpy(),
                      executor_output.value.detach().float().cpu().numpy())

    @property
    def ready(self) -> bool:
        """Return True once the executor ran at least once since the tap was attached."""
        return self._last is not None

    def transition(self, action: int, temperature: float, policy_version: str, stamp: float,
                   episode: int, row: int = 0, instruction: str = '',
                   image: Optional[np.ndarray] = None) -> Transition:
        """Return the transition of the last call's `row` that took `action`."""
        if self._last is None:
            raise RuntimeError('the executor has not run since the tap was attached')
        fused, odometry, prev, logits, value = self._last
        scaled = logits[row].astype(np.float64) / temperature
        log_probs = scaled - scaled.max() - np.log(np.exp(scaled - scaled.max()).sum())
        return Transition(fused[row].copy(), odometry[row].copy(), int(prev[row]),
                          int(action), float(log_probs[action]), float(value[row]),
                          policy_version, float(stamp), int(episode), float(temperature),
                          instruction, image)

    def close(self) -> None:
        """Detach the hook."""
        self._handle.remove()
