"""
The InstructionExecutor and the instruction-following model built on it.

- `odometry_features`: (x, y, yaw, v, w) in the instruction frame, the unwrapped yaw since
  the instruction and the time since it -> 8 features of order one.
- `InstructionExecutor`: MLP over [fused state, odometry features, previous action
  one-hot] -> logits over `ACTIONS` and a value estimate. With `fusion_state` off in its
  config it skips the fusion Transformer's part of the fused state and reads the
  instruction through the sentence embedding, the grounding map and the task parameters.
  When the fused state ends with the task head's requested angle and distance, the
  executor also gets what remains of them
  (`progress_features`): requested minus driven distance, requested minus turned angle, raw
  and squashed near zero. "Stop when this crosses zero" is then one threshold instead of a
  comparison of two inputs the MLP would have to learn from a few frames per episode.
  With `map_memory` in its config (and a grounding head) it also reads the map memory
  (`core.model.memory`): where the model's own map was strongest on earlier frames. The
  memory features follow the odometry features in one input (`odometry_width` columns).
  With `map_peak` it also reads the map's peak (`peak_features`): the highest probability,
  the column and row of its patch, and the probability times the column. Far away the map
  points at the target with probabilities near 0.2, a signal the MLP reads poorly among 48
  inputs; the peak's column is of order one however weak the map.
- `VLITModel`: `VisionLanguageModel` + `InstructionExecutor`; `forward(batch)` for
  imitation and policy-gradient training, `select_action(batch)` for acting.

Training batches are mappings:

| key | value |
| --- | --- |
| `image` | uint8 (B, H, W, 3) array or tensor |
| `text` | B instruction strings, or `texts` (distinct strings) with `text_index` (B,) |
| `odom` | (B, 5) x, y, yaw, v, w in the frame where the instruction began |
| `t` | (B,) seconds since the instruction |
| `yaw_total` | optional (B,) unwrapped yaw since the instruction (default: `odom` yaw) |
| `prev_action` | optional (B,) action indices taken one frame before (default: start action) |
| `memory` | optional (B, 5) map memory before the frame (default: nothing seen yet) |
| `action` | optional (B,) target action indices; the loss is their cross-entropy |
"""

import math
from typing import Any, Mapping, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from vlit_ros.core.actions import ACTION_INDEX, NUM_ACTIONS
from vlit_ros.core.model.config import ExecutorConfig, ModelConfig
from vlit_ros.core.model.fusion import task_parameters_of, VisionLanguageModel
from vlit_ros.core.model.layers import init_weights
from vlit_ros.core.model.memory import MEMORY_FEATURES
from vlit_ros.core.model.text import TextFeatures
from vlit_ros.core.model.vision import as_image_batch
from vlit_ros.core.task_parameters import MOVE_DISTANCE_SCALE_M, TURN_ANGLE_SCALE_RAD

ODOMETRY_FEATURES = 8
# Remaining distance (m) and angle (rad), and each through tanh(gain * x): 4 features.
PROGRESS_FEATURES = 4
# Gains of the squashed copies: 0.25 m or 0.25 rad remaining gives tanh(1) = 0.76.
_PROGRESS_GAIN = 4.0
# The map's highest probability, its patch's column and row, probability x column.
PEAK_FEATURES = 4


def odometry_features(odom, t, config: ExecutorConfig, yaw_total=None):
    """
    Return (B, 8) executor features from odometry (B, 5) and time (B,).

    Features: x and y over `distance_scale_m`, sin and cos of yaw, the unwrapped yaw over pi
    (turns of up to 360 degrees are ambiguous from sin/cos alone), v, w, and t over
    `time_scale_s`. Takes torch tensors or numpy arrays and returns the same kind: a policy
    acting on one robot computes them in numpy, where a dozen tiny torch operations would
    cost more than the arithmetic.
    """
    ops = np if isinstance(odom, np.ndarray) else torch
    yaw = odom[..., 2]
    if yaw_total is None:
        yaw_total = yaw
    return ops.stack([odom[..., 0] / config.distance_scale_m,
                      odom[..., 1] / config.distance_scale_m, ops.sin(yaw), ops.cos(yaw),
                      yaw_total / math.pi, odom[..., 3], odom[..., 4],
                      t / config.time_scale_s], -1)


class ExecutorOutput(NamedTuple):
    """Action logits (B, NUM_ACTIONS) in the order of `ACTIONS` and value estimates (B,)."""

    logits: torch.Tensor
    value: torch.Tensor


class ActionChoice(NamedTuple):
    """An action per row with its log-probability, the value, and the full distribution."""

    action: torch.Tensor
    log_prob: torch.Tensor
    value: torch.Tensor
    probabilities: torch.Tensor


class InstructionExecutor(nn.Module):
    """MLP: [fused state, odometry features, previous action one-hot] -> logits, value."""

    def __init__(self, state_dim: int, config: ExecutorConfig, task_parameters: bool = False,
                 fusion_state_dim: int = 0, grounding: bool = False,
                 map_start: int = 0, patch_column: Optional[torch.Tensor] = None,
                 patch_row: Optional[torch.Tensor] = None):
        """
        Build the MLP for fused states of `state_dim`.

        `task_parameters`: the fused state's last two entries are the task head's requested
        angle and distance (scaled as in `core.task_parameters`); with
        `config.progress_features` the executor then also reads what remains of them.
        `fusion_state_dim`: the fused state starts with that many entries of the fusion
        Transformer's state, which the executor skips when `config.fusion_state` is false.
        `grounding`: the model has a grounding map; with `config.map_memory` the odometry
        input is followed by the map memory's features, whose weights start at zero (a new
        executor first acts as one without memory).
        `map_start`, `patch_column`, `patch_row`: where the map's probabilities start in the
        fused state and each patch's column and row on [-1, 1] (`CrossModalFusion`), which
        `config.map_peak` needs.
        """
        super().__init__()
        self.progress = bool(task_parameters and config.progress_features)
        self.memory = bool(grounding and config.map_memory)
        # columns of the odometry input: odometry features, then the memory's
        self.odometry_width = ODOMETRY_FEATURES + (MEMORY_FEATURES if self.memory else 0)
        self.distance_scale_m = config.distance_scale_m
        self.skip = 0 if config.fusion_state else fusion_state_dim
        if not 0 <= self.skip < state_dim:
            raise ValueError(f'cannot skip {self.skip} of {state_dim} fused-state entries')
        self.peak = bool(grounding and config.map_peak)
        if self.peak:
            if patch_column is None or patch_row is None or \
                    patch_column.shape != patch_row.shape or patch_column.dim() != 1 or \
                    not 0 <= map_start <= state_dim - patch_column.numel():
                raise ValueError("map_peak needs the map's start in the fused state and the "
                                 'column and row of each of its patches')
            self.map_start = map_start
            self.register_buffer('patch_column', patch_column.detach().clone().float(),
                                 persistent=False)
            self.register_buffer('patch_row', patch_row.detach().clone().float(),
                                 persistent=False)
        layers = []
        width = state_dim - self.skip + self.odometry_width + NUM_ACTIONS + \
            (PROGRESS_FEATURES if self.progress else 0) + (PEAK_FEATURES if self.peak else 0)
        for _ in range(config.layers):
            layers += [nn.Linear(width, config.hidden), nn.GELU(), nn.Dropout(config.dropout)]
            width = config.hidden
        self.body = nn.Sequential(*layers)
        self.policy_head = nn.Linear(width, NUM_ACTIONS)
        self.value_head = nn.Linear(width, 1)
        init_weights(self)
        if self.memory:
            first = state_dim - self.skip + ODOMETRY_FEATURES
            with torch.no_grad():
                self.body[0].weight[:, first:first + MEMORY_FEATURES].zero_()

    def forward(self, fused: torch.Tensor, odometry: torch.Tensor, prev_action: torch.Tensor,
                target_actions: Optional[torch.Tensor] = None
                ) -> Tuple[ExecutorOutput, Optional[torch.Tensor]]:
        """Return (logits and value, cross-entropy to `target_actions` or None)."""
        hidden = self.features(fused, odometry, prev_action)
        output = ExecutorOutput(self.policy_head(hidden), self.value_head(hidden).squeeze(-1))
        loss = None
        if target_actions is not None:
            loss = F.cross_entropy(output.logits.float(), target_actions)
        return output, loss

    def features(self, fused: torch.Tensor, odometry: torch.Tensor,
                 prev_action: torch.Tensor) -> torch.Tensor:
        """Return the body's output (B, hidden), which the policy and value heads read."""
        previous = F.one_hot(prev_action, NUM_ACTIONS).to(fused.dtype)
        odometry = odometry.to(fused.dtype)
        parts = [fused[..., self.skip:], odometry, previous]
        if self.progress:
            parts.append(self.progress_features(fused, odometry))
        if self.peak:
            parts.append(self.peak_features(fused))
        return self.body(torch.cat(parts, -1))

    def peak_features(self, fused: torch.Tensor) -> torch.Tensor:
        """
        Return (B, 4): the map's highest probability p, its patch's column and row, p x column.

        From the grounding map's probabilities in the fused state; columns are + to the left.
        """
        probabilities = fused[..., self.map_start:self.map_start + self.patch_column.numel()]
        strength, index = probabilities.max(-1)
        column = self.patch_column.to(fused.dtype)[index]
        row = self.patch_row.to(fused.dtype)[index]
        return torch.stack([strength, column, row, strength * column], -1)

    def progress_features(self, fused: torch.Tensor, odometry: torch.Tensor) -> torch.Tensor:
        """
        Return (B, 4): distance (m) and angle (rad) still to go, then tanh(gain * each).

        From the fused state's task parameters (`fusion.task_parameters_of`) and the
        odometry features' x over `distance_scale_m` and unwrapped yaw over pi.
        """
        requested = task_parameters_of(fused)
        distance = requested[..., 1] * MOVE_DISTANCE_SCALE_M - \
            odometry[..., 0] * self.distance_scale_m
        angle = requested[..., 0] * TURN_ANGLE_SCALE_RAD - odometry[..., 4] * math.pi
        remaining = torch.stack([distance, angle], -1)
        return torch.cat([remaining, torch.tanh(_PROGRESS_GAIN * remaining)], -1)


def _tensor(value, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    return torch.as_tensor(value, dtype=dtype, device=device)


class VLITModel(nn.Module):
    """The instruction-following model: vision-language model + InstructionExecutor."""

    architecture = 'VLITModel'

    def __init__(self, config: ModelConfig, vlm: Optional[VisionLanguageModel] = None):
        """Build from `config`; pass `vlm` to reuse a (pretrained) vision-language model."""
        super().__init__()
        self.config = config
        self.vlm = vlm if vlm is not None else VisionLanguageModel(config)
        fusion = self.vlm.fusion
        self.executor = InstructionExecutor(
            self.vlm.state_dim, config.executor,
            task_parameters=fusion.task_head is not None,
            fusion_state_dim=config.fusion.dim,
            grounding=fusion.grounding is not None,
            map_start=fusion.map_start, patch_column=fusion.patch_column,
            patch_row=fusion.patch_row)
        self.start_action = ACTION_INDEX[config.executor.start_action]

    @property
    def device(self) -> torch.device:
        return next(self.executor.parameters()).device

    def frame_forward(self, images: torch.Tensor, text: TextFeatures, odometry: torch.Tensor,
                      prev_action: torch.Tensor, zoom: Optional[bool] = None
                      ) -> Tuple[ExecutorOutput, torch.Tensor]:
        """
        Run the per-frame path on tensors already on the model's device.

        `images` uint8 (B, H, W, 3), `text` encoded instructions, `odometry` the (B,
        `executor.odometry_width`) odometry and memory features, `prev_action` (B,) indices.
        Returns the executor's output and the grounding map's probabilities (B, patches),
        (B, 0) without a grounding head, which the map memory reads. `zoom`: merge the map
        with the centre zoom's (default: as configured, `fusion.zoom_map`).
        """
        details = self.vlm.fuse_images(images, text, zoom)
        grounding = torch.sigmoid(details.grounding) if details.grounding is not None \
            else details.state.new_zeros((details.state.shape[0], 0))
        return self.executor(details.state, odometry, prev_action)[0], grounding

    def zoomed_frame_forward(self, images: torch.Tensor, text: TextFeatures,
                             odometry: torch.Tensor, prev_action: torch.Tensor
                             ) -> Tuple[ExecutorOutput, torch.Tensor]:
        """
        `frame_forward` with the grounding map merged with a 2x zoom of the image centre.

        For a checkpoint trained without it (`fusion.zoom_map` false; for one trained with
        it, this is `frame_forward`). The zoom (`core.model.zoom`) is scored by the same
        encoder and grounding head, and the merged map replaces the map and its summary in
        the fused state; the rest of the state comes from the full image. Twice the vision
        work per frame.
        """
        return self.frame_forward(images, text, odometry, prev_action, zoom=True)

    def batch_text(self, batch: Mapping[str, Any]) -> TextFeatures:
        """Encode a batch's instructions, each distinct text once (through the cache)."""
        if 'text' in batch:
            return self.vlm.encode_instructions(list(batch['text']))
        texts = batch['texts']
        index = _tensor(batch['text_index'], torch.long, torch.device('cpu'))
        distinct, inverse = torch.unique(index, return_inverse=True)
        features = self.vlm.encode_instructions([texts[i] for i in distinct.tolist()])
        return features.index(inverse.to(features.tokens.device))

    def batch_odometry(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """
        Return a batch's executor odometry input (B, `executor.odometry_width`).

        The odometry features, then the memory features when the executor reads them.
        """
        device = self.device
        yaw_total = batch.get('yaw_total')
        odometry = odometry_features(
            _tensor(batch['odom'], torch.float32, device), _tensor(batch['t'], torch.float32,
                                                                   device),
            self.config.executor,
            None if yaw_total is None else _tensor(yaw_total, torch.float32, device))
        if not self.executor.memory:
            return odometry
        memory = batch.get('memory')
        memory = odometry.new_zeros((odometry.shape[0], MEMORY_FEATURES)) if memory is None \
            else _tensor(memory, torch.float32, device)
        if memory.shape != (odometry.shape[0], MEMORY_FEATURES):
            raise ValueError(f'memory features must be (batch, {MEMORY_FEATURES}), got '
                             f'{tuple(memory.shape)}')
        return torch.cat([odometry, memory], -1)

    def forward(self, batch: Mapping[str, Any]
                ) -> Tuple[ExecutorOutput, Optional[torch.Tensor]]:
        """Return (logits and values, cross-entropy to `batch['action']` or None)."""
        device = self.device
        images = as_image_batch(batch['image'], device)
        size = images.shape[0]
        prev_action = batch.get('prev_action')
        prev_action = torch.full((size,), self.start_action, dtype=torch.long, device=device) \
            if prev_action is None else _tensor(prev_action, torch.long, device)
        targets = batch.get('action')
        if targets is not None:
            targets = _tensor(targets, torch.long, device)
        fused = self.vlm.fuse_images(images, self.batch_text(batch)).state
        return self.executor(fused, self.batch_odometry(batch), prev_action, targets)

    @torch.no_grad()
    def select_action(self, obs_batch: Mapping[str, Any], greedy: bool = True,
                      temperature: float = 1.0,
                      generator: Optional[torch.Generator] = None) -> ActionChoice:
        """
        Choose an action per row of a batch (same keys as `forward`, `action` ignored).

        The distribution is softmax(logits / temperature); greedy takes its mode, otherwise
        an action is sampled (with `generator` when given). `log_prob` is the chosen action's
        log-probability under that distribution.
        """
        if not (math.isfinite(temperature) and temperature > 0.0):
            raise ValueError(f'temperature must be a positive number, got {temperature!r}')
        output, _ = self({key: value for key, value in obs_batch.items() if key != 'action'})
        log_probs = F.log_softmax(output.logits.float() / temperature, dim=-1)
        probabilities = log_probs.exp()
        if greedy:
            action = probabilities.argmax(-1)
        else:
            action = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
        return ActionChoice(action, log_probs.gather(1, action.unsqueeze(1)).squeeze(1),
                            output.value.float(), probabilities)
