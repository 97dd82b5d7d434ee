"""
`ModelPolicy`: the trained model behind the policy plug-in interface of DESIGN.md §5.

    policy = ModelPolicy.from_checkpoint('runs/finetune', device='cpu')
    policy.reset('go to the red cube')      # encodes the instruction once (cached)
    action = policy.act(obs)                 # obs.image, obs.odom, obs.t -> 'forward'
    policy.last_probabilities                # the distribution behind that action

Several robots at once: `reset_batch([...])` with one instruction per robot, then
`act_batch([obs, ...])` with one observation per robot, in the same order; every robot
keeps its own previous action, unwrapped yaw and, for an executor that reads it, map memory
(where its grounding map was strongest, `core.model.memory`). Not thread-safe: one thread
drives a policy (the follower's inference thread does).
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from vlit_ros.core.actions import action_index, ACTIONS
from vlit_ros.core.geometry import wrap_angle
from vlit_ros.core.model.checkpoint import CheckpointError, load_checkpoint, \
    load_weights_from_bytes, read_checkpoint_info
from vlit_ros.core.model.executor import odometry_features, VLITModel
from vlit_ros.core.model.inference import FrameRunner
from vlit_ros.core.model.memory import MapMemory, patch_bearings
from vlit_ros.core.model.vision import as_image_batch


class _Robot:
    """What the policy remembers about one robot since its instruction began."""

    __slots__ = ('instruction', 'prev_action', 'yaw_total', 'last_yaw', 'memory')

    def __init__(self, instruction: str, start_action: int, memory_decay_s: float):
        self.instruction = instruction
        self.prev_action = start_action
        self.yaw_total = 0.0
        self.last_yaw = 0.0
        self.memory = MapMemory(memory_decay_s)


def _check_instruction(instruction) -> str:
    """Return the instruction, or raise ValueError if it is not a non-blank string."""
    if not isinstance(instruction, str):
        raise ValueError(f'an instruction must be a string, got {type(instruction).__name__}')
    if not instruction.strip():
        raise ValueError('the instruction is empty or only whitespace; say what the robot '
                         'should do, e.g. "go to the red cube"')
    return instruction


class ModelPolicy:
    """Follows instructions with a `VLITModel` (greedy by default, or sampling)."""

    def __init__(self, model: VLITModel, device: Union[str, torch.device] = 'cpu', *,
                 greedy: bool = True, temperature: float = 1.0, seed: Optional[int] = None,
                 precision: str = 'auto', compile_model: bool = False,
                 cuda_graph: bool = False, version: Optional[str] = None,
                 zoom_map: bool = False):
        """
        Wrap `model` on `device`.

        `greedy=False` samples from softmax(logits / temperature) with a generator seeded by
        `seed`. `precision`, `compile_model` and `cuda_graph` are `FrameRunner`'s (CUDA
        only for the last two). `version` names the weights (default: 'untracked').
        `zoom_map` merges the grounding map with a 2x zoom of the image centre
        (`VLITModel.zoomed_frame_forward`) for a checkpoint trained without it; one trained
        with it (`fusion.zoom_map`) always does.
        """
        if not isinstance(model, VLITModel):
            raise TypeError(f'ModelPolicy needs a VLITModel, got {type(model).__name__}')
        if not (math.isfinite(temperature) and temperature > 0.0):
            raise ValueError(f'temperature must be a positive number, got {temperature!r}')
        self.model = model.to(device).eval()
        self.runner = FrameRunner(self.model, precision, compile_model, cuda_graph, zoom_map)
        executor = self.model.config.executor
        self._bearings = patch_bearings(self.model.vlm.vision.grid, executor.camera_hfov_deg) \
            if self.model.executor.memory else None
        self.greedy = greedy
        self.temperature = temperature
        self.version = version or 'untracked'
        self._rng = np.random.default_rng(seed)
        self._robots: List[_Robot] = []
        self._text = None
        self._probabilities: Optional[np.ndarray] = None
        self._values: Optional[np.ndarray] = None

    @classmethod
    def from_checkpoint(cls, path, device: Union[str, torch.device] = 'cpu',
                        **kwargs) -> 'ModelPolicy':
        """Load an instruction-following checkpoint (`VLITModel`); version = weights hash."""
        if not path:
            raise ValueError("policy 'model' needs a checkpoint directory (--checkpoint)")
        info = read_checkpoint_info(path)
        if info['architecture'] != VLITModel.architecture:
            raise CheckpointError(f'{path} holds a {info["architecture"]}, which has no '
                                  f'trained executor; fine-tune it into a '
                                  f'{VLITModel.architecture} first')
        kwargs.setdefault('version', str(info['weights_sha256'])[:12])
        return cls(load_checkpoint(path), device, **kwargs)

    # -- instructions ------------------------------------------------------------------

    def reset(self, instruction: str) -> None:
        """Start following `instruction` (one robot); the previous action starts over."""
        self.reset_batch([instruction])

    def reset_batch(self, instructions: Sequence[str]) -> None:
        """Start one instruction per robot, for `act_batch`."""
        if isinstance(instructions, str) or not instructions:
            raise ValueError('reset_batch takes a non-empty sequence of instructions')
        instructions = [_check_instruction(text) for text in instructions]
        self._text = self.model.vlm.encode_instructions(instructions,
                                                        pad_to=self.runner.text_length)
        start = self.model.start_action
        decay = self.model.config.executor.memory_decay_s
        self._robots = [_Robot(text, start, decay) for text in instructions]
        self._probabilities = None
        self._values = None

    # -- acting ------------------------------------------------------------------------

    def act(self, obs) -> str:
        """Return the action for one observation (`image`, `odom`, `t`)."""
        if len(self._robots) > 1:
            raise ValueError(f'this policy follows {len(self._robots)} robots; use act_batch')
        return self.act_batch([obs])[0]

    def act_batch(self, observations: Sequence) -> List[str]:
        """Return one action per robot for one observation per robot."""
        if self._text is None:
            raise RuntimeError('call reset(instruction) before act()')
        if len(observations) != len(self._robots):
            raise ValueError(f'{len(observations)} observations for {len(self._robots)} '
                             f'robots (one per instruction given to reset_batch)')
        device = self.runner.device
        images = as_image_batch([obs.image for obs in observations], device)
        odom = np.asarray([obs.odom for obs in observations], dtype=np.float64)
        t = np.asarray([obs.t for obs in observations], dtype=np.float64)
        if odom.shape != (len(observations), 5) or not np.isfinite(odom).all() or \
                not np.isfinite(t).all():
            raise ValueError('each observation needs finite odom (x, y, yaw, v, w) and t')
        for robot, yaw in zip(self._robots, odom[:, 2]):
            robot.yaw_total += wrap_angle(float(yaw) - robot.last_yaw)
            robot.last_yaw = float(yaw)
        yaw_total = np.array([robot.yaw_total for robot in self._robots])
        odometry = odometry_features(odom, t, self.model.config.executor, yaw_total)
        if self._bearings is not None:
            odometry = np.concatenate([odometry, np.stack([
                robot.memory.features(x, y, robot.yaw_total, now)
                for robot, x, y, now in zip(self._robots, odom[:, 0], odom[:, 1], t)])], 1)
        odometry = torch.from_numpy(odometry.astype(np.float32)).to(device)
        prev = torch.tensor([robot.prev_action for robot in self._robots], device=device)
        probabilities, values, grounding = self.runner(images, self._text, odometry, prev)
        if self._bearings is not None:
            maps = grounding.cpu().numpy()
            for row, robot in enumerate(self._robots):
                robot.memory.update(maps[row], self._bearings, float(odom[row, 0]),
                                    float(odom[row, 1]), robot.yaw_total, float(t[row]))
        probabilities = probabilities.cpu().numpy().astype(np.float64)
        self._probabilities = probabilities
        self._values = values.cpu().numpy().astype(np.float64)
        chosen = [self._choose(row) for row in probabilities]
        for robot, index in zip(self._robots, chosen):
            robot.prev_action = index
        return [ACTIONS[index] for index in chosen]

    def _choose(self, probabilities: np.ndarray) -> int:
        if self.greedy:
            return int(probabilities.argmax())
        # p^(1/T) renormalised is softmax(logits / T).
        weights = np.power(np.clip(probabilities, 1e-30, None), 1.0 / self.temperature)
        return int(self._rng.choice(len(ACTIONS), p=weights / weights.sum()))

    def note_taken_action(self, action: str, robot: int = 0) -> None:
        """
        Record the action a robot actually took when it differs from the policy's choice.

        The executor conditions on the previous action taken, so a caller that samples from
        `last_probabilities` itself or overrides the choice (a safety stop) reports it here.
        """
        self._robots[robot].prev_action = action_index(action)

    # -- what the last decision was based on -------------------------------------------

    @property
    def last_probabilities(self) -> Optional[Tuple[float, ...]]:
        """Return the distribution behind the last `act` (in `ACTIONS` order), or None."""
        if self._probabilities is None:
            return None
        return tuple(float(p) for p in self._probabilities[0])

    @property
    def last_batch_probabilities(self) -> Optional[np.ndarray]:
        """Return the distributions behind the last `act_batch` (robots x actions), or None."""
        return None if self._probabilities is None else self._probabilities.copy()

    @property
    def last_values(self) -> Optional[np.ndarray]:
        """Return the value estimates of the last decision, one per robot, or None."""
        return None if self._values is None else self._values.copy()

    def action_probabilities(self, robot: int = 0) -> Dict[str, float]:
        """Return the last decision's distribution for one robot as {action: probability}."""
        if self._probabilities is None:
            raise RuntimeError('no decision yet: call act() first')
        return {name: float(p) for name, p in zip(ACTIONS, self._probabilities[robot])}

    # -- policy updates ----------------------------------------------------------------

    def update_weights(self, data: bytes, version: str) -> None:
        """
        Load new weights (safetensors bytes of `weights_to_bytes`) without a restart.

        Validated first: on CheckpointError the old weights stay. Instructions in progress
        are re-encoded, since a trainable text encoder may have changed.
        """
        load_weights_from_bytes(self.model, data, 'policy update')
        self.version = version
        if self._robots:
            self._text = self.model.vlm.encode_instructions(
                [robot.instruction for robot in self._robots], pad_to=self.runner.text_length)
