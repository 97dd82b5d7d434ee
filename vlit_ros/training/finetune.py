"""
`vlit-ros finetune`: instruction tuning by imitation of the expert, then DAgger.

Stage 2 of training (DESIGN.md §4). The model (from a pretrained checkpoint, or built from a
preset) learns the expert's action by cross-entropy on gen-data's trajectory frames
(behaviour cloning). Then each DAgger round rolls the learner out in the simulator on fresh
training scenes, labels every visited state with the expert, adds the frames to the data and
trains on the aggregate.

What makes this learnable in a CPU budget:

- batches mix the families in fixed shares, so the short families are not drowned by goto;
- frames where the expert changes action are drawn more often (`--change-weight`): they are
  the few that decide when to stop or steer, and without them the model learns to repeat
  its previous action;
- a training-only auxiliary head regresses, from the fused state, where the named object is
  (bearing, distance, in view or not) and how far the instruction asks to turn or drive
  (`--auxiliary-weight`); the head is not part of the checkpoint;
- the model's grounding head learns, patch by patch, where the named object is from its
  ground-truth box in the image (binary cross-entropy, `--grounding-weight`), and its task
  head the requested angle and distance (squared error, `--task-weight`): dense labels that
  teach the vision encoder colours and shapes far faster than the action loss alone;
- the grounding head also answers a second, relabelled query per frame: another object of
  the scene, drawn and named at random, with its own box (`--query-weight`;
  `datasets.grounding_queries`), so that it learns to say "no" of an object the robot was
  not sent to, close up as well as far away;
- two more training-only heads, both linear, name colour and shape: one per patch token
  (which object, if any, the patch shows: `--patch-attributes-weight`;
  `datasets.scene_object_boxes`), one from the relabelled query's sentence embedding (which
  object it names: `--text-attributes-weight`). The map compares exactly those features,
  and without these labels neither side kept the shape: in most scenes the colour alone
  names the target;
- before cloning, the task head alone is fitted to the dataset's distinct instructions
  (`--task-warmup-steps`, text only, seconds), so from the first step the executor sees the
  requested angle and distance it must learn to compare with odometry;
- with `--paraphrase P`, that share of the goto frames of each batch get their instruction
  rephrased (`phrasings.GotoParaphraser`): other phrasings, or random words around the
  object's name, so the text side learns to read the name and to ignore words it has never
  seen (the unseen phrasings stay unseen);
- an executor with map memory (`--map-memory`, `core.model.memory`) is trained on the
  memory its own map would leave: halfway through cloning, and whenever the data is loaded
  after that (each DAgger round, a run that starts from a trained policy), the current
  model's grounding map is run over every frame and each frame's memory recomputed from
  the maps of the earlier frames of its episode (`refresh_map_memory`). Before the first
  refresh the memory reads zeros and its weights stay at zero;
- with `--zoom-map` (`FusionConfig.zoom_map`, `core.model.zoom`) the grounding map the
  executor reads, in training, DAgger's rollouts and every later use of the checkpoint, is
  merged with the map of a 2x zoom of the image centre, so far targets near the heading
  show on it; the grounding losses stay on the full images' map.

The run is a sequence of stages (cloning, then per round: rollouts, training), each ending
with a checkpoint, so an interrupted run resumes where it stopped; the rollouts of a round
are written as shards under `OUT/dagger/` and reused on resume.
"""

import argparse
import dataclasses
from dataclasses import dataclass, fields
import math
from pathlib import Path
import random
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from vlit_ros.core.actions import ACTIONS
from vlit_ros.core.model import (as_image_batch, load_checkpoint, load_weights_from_bytes,
                                 ModelConfig, PretrainingModel, save_checkpoint, VLITModel)
from vlit_ros.core.model.checkpoint import read_checkpoint_info, WEIGHTS_FILE
from vlit_ros.core.model.memory import memory_features, patch_bearings
from vlit_ros.core.model.zoom import zoom_boxes
from vlit_ros.core.policy import ModelPolicy
from vlit_ros.core.task_parameters import (MOVE_DISTANCE_SCALE_M, TASK_PARAMETERS,
                                           TURN_ANGLE_SCALE_RAD)
from vlit_ros.sim.episode import make_episode, TRAINING_SEED_BASE
from vlit_ros.sim.expert import ExpertRules
from vlit_ros.sim.scene import Scene
from vlit_ros.sim.tasks import FAMILIES
from vlit_ros.training import loop
from vlit_ros.training.datagen import (add_expert_arguments, check_expert_labels,
                                       expert_rules_of, FAMILY_PLAN)
from vlit_ros.training.datasets import (ATTRIBUTE_CLASSES, AUXILIARY_TARGETS, GROUNDING_LABELS,
                                        grounding_labels, IGNORE_LABEL, patch_attribute_labels,
                                        TrajectorySet)
from vlit_ros.training.phrasings import GotoParaphraser, tokenizer_words, training_instruction
from vlit_ros.training.presets import (add_conv_stem_argument, model_config, PRESETS,
                                       TEXT_ENCODERS)
from vlit_ros.training.report import family_rates, write_report
from vlit_ros.training.shards import read_json, shard_finished, write_json, write_shard

# DAgger scenes: seeds from here on (gen-data's scenes use offsets 0 and 200,000).
DAGGER_SEED_OFFSET = 400_000
DAGGER_SEEDS_PER_ROUND = 20_000
# Share of each family in a batch.
FAMILY_SHARES: Dict[str, float] = {'goto': 0.5, 'turn': 0.2, 'move': 0.2, 'stop': 0.1}
# Scene seed of the evaluation that ends a run (an evaluation seed, below the training ones).
EVAL_SEED = 100_000
# Share of each batch's goto frames whose instruction is rephrased (`--paraphrase`).
PARAPHRASE_SHARE = 0.5


def check_paraphrase_share(share: float) -> None:
    """Refuse a `--paraphrase` share outside [0, 1] (NaN included)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f'--paraphrase must be between 0 and 1, got {share}')


@dataclass(frozen=True)
class DaggerSchedule:
    """How many DAgger rounds, and what each does."""

    rounds: int
    episodes: int
    steps: int
    beta: float
    parallel: int
    # the learner samples its rollout actions from softmax(logits / temperature); 0: greedy
    temperature: float = 0.0
    # the labelling expert's rules (far search, observable turns)
    expert: ExpertRules = ExpertRules()

    def round_end(self, bc_steps: int, round_index: int) -> int:
        """Return the global step at which training on round `round_index` ends."""
        return bc_steps + (round_index + 1) * self.steps

    def beta_of(self, round_index: int) -> float:
        """Expert-execution probability of a round: halves every round."""
        return self.beta * 0.5 ** round_index


def build_model(args) -> VLITModel:
    """
    Build the VLITModel from a pretrained checkpoint (`--init`) or from a preset.

    `--no-fusion-state`, `--map-memory`, `--map-peak` and `--zoom-map` configure a new
    executor and what it reads; an `--init` VLITModel keeps its own (the options may repeat
    what it is, not change it).
    """
    if args.init:
        pretrained = load_checkpoint(args.init)
        if args.conv_stem is not None and \
                pretrained.config.vision.conv_stem != args.conv_stem:
            raise ValueError(f'--conv-stem configures a new model; {args.init} has '
                             f'conv_stem {pretrained.config.vision.conv_stem}')
        if isinstance(pretrained, PretrainingModel):
            config = _with_executor_input(pretrained.config, args)
            # The zoom adds no weights: the pretrained fusion reads it as configured.
            pretrained.vlm.fusion.zoom_map = config.fusion.zoom_map
            return VLITModel(config, vlm=pretrained.vlm)
        if args.no_fusion_state and pretrained.config.executor.fusion_state:
            raise ValueError(f'--no-fusion-state configures a new executor, but {args.init} '
                             f'already has one that reads the fusion state; leave the option '
                             f'out to continue it, or start from a pretraining checkpoint')
        if args.map_memory and not pretrained.executor.memory:
            raise ValueError(f'--map-memory configures a new executor, but {args.init} '
                             f'already has one without map memory; leave the option out to '
                             f'continue it, or start from a pretraining checkpoint')
        if args.map_peak and not pretrained.executor.peak:
            raise ValueError(f'--map-peak configures a new executor, but {args.init} '
                             f"already has one that does not read the map's peak; leave the "
                             f'option out to continue it, or start from a pretraining '
                             f'checkpoint')
        if args.zoom_map and not pretrained.config.fusion.zoom_map:
            raise ValueError(f'--zoom-map configures a new model, but {args.init} was trained '
                             f'without the zoomed map; leave the option out to continue it, '
                             f'or start from a pretraining checkpoint')
        return pretrained
    return VLITModel(_with_executor_input(
        model_config(args.preset, args.text_encoder, args.conv_stem), args))


def _with_executor_input(config: ModelConfig, args) -> ModelConfig:
    """Return `config` with what finetune's options say a new executor reads."""
    return dataclasses.replace(
        config, executor=dataclasses.replace(config.executor,
                                             fusion_state=not args.no_fusion_state,
                                             map_memory=args.map_memory,
                                             map_peak=args.map_peak),
        fusion=dataclasses.replace(config.fusion, zoom_map=args.zoom_map))


class FamilyBatches:
    """
    Draws batches with fixed family shares, deterministically per (seed, step, rank).

    Within a family, frames where the expert changes action (its label differs from the
    previous action) are drawn `change_weight` times as often as the others. They are the
    few frames that decide when to stop or turn; without the extra weight the model learns
    to repeat its previous action, which is right almost everywhere else.
    """

    def __init__(self, data: TrajectorySet, batch_size: int, seed: int,
                 context: loop.DistributedContext, change_weight: float = 1.0,
                 paraphrase: float = 0.0, paraphraser: Optional[GotoParaphraser] = None):
        check_paraphrase_share(paraphrase)
        if paraphrase > 0 and paraphraser is None:
            raise ValueError('rephrasing goto instructions needs a GotoParaphraser')
        self.data = data
        self.seed = seed
        self.context = context
        self.paraphrase = paraphrase
        self.paraphraser = paraphraser
        self.pools: List[Tuple[np.ndarray, int, np.ndarray]] = []
        present = [f for f in FAMILIES if (data.family == FAMILIES.index(f)).any()]
        total = sum(FAMILY_SHARES[f] for f in present)
        remaining = batch_size
        changes = data.arrays['expert_action'] != data.prev_action
        for position, family in enumerate(present):
            rows = np.flatnonzero(data.family == FAMILIES.index(family))
            count = remaining if position == len(present) - 1 else \
                max(1, round(batch_size * FAMILY_SHARES[family] / total))
            count = min(count, remaining)
            remaining -= count
            weights = np.where(changes[rows], change_weight, 1.0)
            if count:
                self.pools.append((rows, count, weights / weights.sum()))

    def indices(self, step: int) -> np.ndarray:
        parts = []
        for index, (rows, count, probabilities) in enumerate(self.pools):
            rng = np.random.default_rng([self.seed, step, self.context.rank, index])
            parts.append(rows[rng.choice(len(rows), size=count, p=probabilities)])
        return np.concatenate(parts)

    def instructions(self, step: int, rows: np.ndarray) -> Tuple[List[str], np.ndarray]:
        """
        Return the batch's instructions as (distinct texts, index per row).

        With `paraphrase` > 0 that share of the goto rows, drawn per (seed, step, rank), get
        their instruction rephrased by the paraphraser.
        """
        index = self.data.text_index[rows]
        if not self.paraphrase:
            return self.data.texts, index
        rng = np.random.default_rng([self.seed, step, self.context.rank, len(self.pools)])
        chosen = (self.data.family[rows] == self.data.families.index('goto')) & \
            (rng.random(len(rows)) < self.paraphrase)
        texts = [self.data.texts[i] for i in index]
        for row in np.flatnonzero(chosen):
            texts[row] = self.paraphraser(texts[row], rng)
        distinct = list(dict.fromkeys(texts))
        position = {text: k for k, text in enumerate(distinct)}
        return distinct, np.array([position[text] for text in texts], np.int64)

    def batch(self, step: int) -> dict:
        rows = self.indices(step)
        arrays = self.data.arrays
        texts, text_index = self.instructions(step, rows)
        batch = {'image': arrays['image'][rows], 'texts': texts,
                 'text_index': text_index, 'odom': arrays['odom'][rows],
                 't': arrays['t'][rows], 'yaw_total': arrays['yaw_total'][rows],
                 'prev_action': self.data.prev_action[rows],
                 'action': arrays['expert_action'][rows],
                 'auxiliary': self.data.auxiliary[rows],
                 'auxiliary_mask': self.data.auxiliary_mask[rows],
                 'target_box': self.data.target_box[rows],
                 'query_texts': self.data.query_texts,
                 'query_text_index': self.data.query_text_index[rows],
                 'query_box': self.data.query_box[rows],
                 'query_class': self.data.query_class[rows]}
        if self.data.object_class is not None:
            batch['object_box'] = self.data.object_box[rows]
            batch['object_class'] = self.data.object_class[rows]
        if self.data.memory is not None:
            batch['memory'] = self.data.memory[rows]
        return batch


def auxiliary_head(state_dim: int) -> nn.Module:
    """Return the training-only head that regresses the auxiliary targets from the state."""
    return nn.Sequential(nn.Linear(state_dim, 128), nn.GELU(),
                         nn.Linear(128, len(AUXILIARY_TARGETS)))


class AuxiliaryHeads(nn.Module):
    """
    The training-only heads; none of them is part of the checkpoint.

    Each is None when its loss weight is 0: `state` regresses the auxiliary targets from
    the fused state; `patches` names the object (colour and shape, or none) each normalised
    patch token shows; `text` names the colour and shape of the object a query's sentence embedding
    refers to. The last two are linear, so that what they read has to be in the features
    the grounding head compares: the map cannot tell a blue cube from a blue sphere unless
    both the patch tokens and the sentence embedding carry the shape.
    """

    def __init__(self, state_dim: int, text_dim: int, weights: 'LossWeights'):
        super().__init__()
        self.state = auxiliary_head(state_dim) if weights.auxiliary > 0 else None
        self.patches = nn.Linear(text_dim, ATTRIBUTE_CLASSES) \
            if weights.patch_attributes > 0 else None
        self.text = nn.Linear(text_dim, ATTRIBUTE_CLASSES - 1) \
            if weights.text_attributes > 0 else None
        # Sentence embeddings are unit-norm: scaled, their components are O(1) like the
        # normalised patch tokens', and the classifier learns at the same pace.
        self.text_scale = math.sqrt(text_dim)

    def text_logits(self, sentence: torch.Tensor) -> torch.Tensor:
        """Return the attribute logits (B, classes - 1) of sentence embeddings (B, D)."""
        return self.text(sentence.float() * self.text_scale)


# Auxiliary-target columns the task head regresses, in the order of its outputs.
_TASK_COLUMNS = [AUXILIARY_TARGETS.index(name) for name in TASK_PARAMETERS]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the losses added to the action cross-entropy."""

    auxiliary: float = 1.0
    grounding: float = 1.0
    query: float = 1.0
    task: float = 5.0
    # The shipped checkpoint's (fifteenth session, docs/TRAINING.md); 0 turns a loss off.
    patch_attributes: float = 1.0
    text_attributes: float = 0.5
    # Models with the zoomed map only (`--zoom-map`); off: it did not help (twenty-seventh
    # session, docs/TRAINING.md).
    zoom: float = 0.0

    def __post_init__(self):
        for field in fields(self):
            name, value = field.name, getattr(self, field.name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f'--{name.replace("_", "-")}-weight must be a non-negative '
                                 f'number, got {value}')


# What each weight of `LossWeights` weighs (for the command line).
_LOSS_WEIGHT_HELP = {
    'auxiliary': 'the auxiliary loss on the fused state (target bearing and distance, '
                 'requested angle or distance)',
    'grounding': 'the grounding loss: per patch, does it show the named object',
    'query': 'the grounding loss of the relabelled query of each frame: per patch, does it '
             'show another object of the scene, drawn and named at random',
    'task': 'the task-parameter loss: the requested angle and distance read from the '
            'instruction',
    'patch_attributes': 'the per-patch attribute loss: a linear classifier names the colour '
                        'and shape of the object each patch token shows (or none)',
    'text_attributes': 'the query attribute loss: a linear classifier names the colour and '
                       'shape of the object the relabelled query refers to from its sentence '
                       'embedding',
    'zoom': 'with the zoomed map (--zoom-map): both grounding losses (named object, '
            'relabelled query) on the map of the centre zoom, boxes mapped into it; the '
            "zoom's tokens carry no gradient, so they train the grounding head",
}


def _grounding_loss(logits: torch.Tensor, boxes: np.ndarray, grid,
                    labels_kind: str = 'coverage') -> torch.Tensor:
    """Binary cross-entropy of grounding logits (B, patches) against boxes (B, 4)."""
    labels = torch.as_tensor(grounding_labels(boxes, grid, labels_kind), device=logits.device)
    # Summed over patches, averaged over frames: a frame's few target patches count as much
    # as its many empty ones would if averaged.
    return F.binary_cross_entropy_with_logits(logits.float(), labels,
                                              reduction='sum') / labels.shape[0]


def imitation_losses(model: VLITModel, heads: Optional[AuxiliaryHeads], batch: dict,
                     weights: LossWeights, labels_kind: str = 'coverage'
                     ) -> Dict[str, torch.Tensor]:
    """
    Return the action cross-entropy plus the weighted extra losses, and metrics.

    `labels_kind`: the grounding labels (`datasets.grounding_labels`).

    The forward pass is `VLITModel.forward` spelled out, so that the fused state and the
    patch tokens also feed the training-only heads (`AuxiliaryHeads`), and the grounding
    logits and task parameters their losses. With the zoomed map (`fusion.zoom_map`) the
    executor reads the merged map, and the grounding losses score the full images' map.
    """
    device = model.device
    vlm = model.vlm
    images = as_image_batch(batch['image'], device)
    text = model.batch_text(batch)
    details = vlm.fuse_details(vlm.image_tokens(vlm.preprocess(images)), text)
    fused = details.state
    zoom_patches = zoom_logits = None
    if vlm.fusion.zoom_map:
        # `CrossModalFusion.with_zoom` spelled out: the zoom's map also has losses.
        zoom_patches = vlm.fusion.grounding_patches(vlm.zoom_tokens(images))
        zoom_logits = vlm.fusion.grounding(zoom_patches, text.pooled.to(zoom_patches.dtype))
        fused = vlm.fusion.with_grounding(
            details, vlm.fusion.merge_zoom(details.grounding, zoom_logits)).state
    targets = torch.as_tensor(batch['action'], device=device)
    output, action_loss = model.executor(
        fused, model.batch_odometry(batch),
        torch.as_tensor(batch['prev_action'], device=device), targets)
    losses = {'loss_action': action_loss.detach(),
              'accuracy': (output.logits.argmax(-1) == targets).float().mean().detach()}
    total = action_loss
    mask = torch.as_tensor(batch['auxiliary_mask'], device=device)
    wanted = torch.as_tensor(batch['auxiliary'], device=device)
    if heads is not None and heads.state is not None and weights.auxiliary > 0:
        error = (heads.state(fused) - wanted).pow(2) * mask
        auxiliary = error.sum() / mask.sum().clamp_min(1)
        losses['loss_auxiliary'] = auxiliary.detach()
        total = total + weights.auxiliary * auxiliary
    if details.grounding is not None and weights.grounding > 0:
        grounding = _grounding_loss(details.grounding, batch['target_box'], vlm.vision.grid,
                                    labels_kind)
        losses['loss_grounding'] = grounding.detach()
        total = total + weights.grounding * grounding
    wants_zoom = zoom_logits is not None and weights.zoom > 0
    wants_query = (details.grounding is not None and weights.query > 0) or wants_zoom or \
        (heads is not None and heads.text is not None and weights.text_attributes > 0)
    query = model.batch_text({'texts': batch['query_texts'],
                              'text_index': batch['query_text_index']}) \
        if wants_query and 'query_texts' in batch else None
    if details.grounding is not None and weights.query > 0 and query is not None:
        # The same images, asked about another object of the scene (`grounding_queries`).
        logits = vlm.fusion.grounding(details.patches, query.pooled)
        query_loss = _grounding_loss(logits, batch['query_box'], vlm.vision.grid, labels_kind)
        losses['loss_query'] = query_loss.detach()
        total = total + weights.query * query_loss
    if wants_zoom:
        size = vlm.fusion.image_size
        zoom_loss = _grounding_loss(zoom_logits, zoom_boxes(batch['target_box'], size),
                                    vlm.vision.grid, labels_kind)
        if query is not None:
            zoom_loss = zoom_loss + _grounding_loss(
                vlm.fusion.grounding(zoom_patches, query.pooled.to(zoom_patches.dtype)),
                zoom_boxes(batch['query_box'], size), vlm.vision.grid, labels_kind)
        losses['loss_zoom'] = zoom_loss.detach()
        total = total + weights.zoom * zoom_loss
    if heads is not None and heads.patches is not None and weights.patch_attributes > 0 \
            and 'object_class' in batch:
        labels = torch.as_tensor(patch_attribute_labels(
            batch['object_box'], batch['object_class'], vlm.vision.grid), device=device)
        logits = heads.patches(details.patches.float())
        # Summed over patches, averaged over frames, as the grounding loss.
        patch_loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                     ignore_index=IGNORE_LABEL, reduction='sum') / labels.shape[0]
        losses['loss_patch_attributes'] = patch_loss.detach()
        total = total + weights.patch_attributes * patch_loss
    if heads is not None and heads.text is not None and weights.text_attributes > 0 \
            and query is not None:
        wanted_class = torch.as_tensor(batch['query_class'], device=device) - 1
        text_loss = F.cross_entropy(heads.text_logits(query.pooled), wanted_class)
        losses['loss_text_attributes'] = text_loss.detach()
        total = total + weights.text_attributes * text_loss
    if details.task_parameters is not None and weights.task > 0:
        task_mask = mask[:, _TASK_COLUMNS]
        error = (details.task_parameters.float() - wanted[:, _TASK_COLUMNS]).pow(2) * task_mask
        task = error.sum() / task_mask.sum().clamp_min(1)
        losses['loss_task'] = task.detach()
        total = total + weights.task * task
    losses['loss'] = total
    return losses


@torch.no_grad()
def refresh_map_memory(model: VLITModel, data: TrajectorySet, batch_size: int = 256,
                       progress: bool = False) -> None:
    """
    Set `data.memory` to the map memory the model's own grounding map leaves on each frame.

    The map of every frame (its instruction against its image) is computed in eval mode,
    then each frame's memory from the maps of the earlier frames of its episode
    (`core.model.memory.memory_features`; an episode starts where `step` is 0).
    """
    from tqdm import tqdm
    vlm = model.vlm
    if vlm.fusion.grounding is None:
        raise ValueError('map memory needs a model with a grounding head')
    was_training = model.training
    model.eval()
    device = model.device
    frames = len(data)
    maps = np.zeros((frames, vlm.vision.num_tokens), np.float32)
    starts = range(0, frames, batch_size)
    for start in tqdm(starts, desc='map memory', unit='batch', disable=not progress,
                      leave=False):
        rows = slice(start, min(start + batch_size, frames))
        logits = vlm.grounding_logits(as_image_batch(data.arrays['image'][rows], device),
                                      [data.texts[i] for i in data.text_index[rows]])
        maps[rows] = torch.sigmoid(logits.float()).cpu().numpy()
    model.train(was_training)
    executor = model.config.executor
    arrays = data.arrays
    data.memory = memory_features(maps, patch_bearings(vlm.vision.grid,
                                                       executor.camera_hfov_deg),
                                  arrays['odom'], arrays['yaw_total'], arrays['t'],
                                  arrays['step'] == 0, executor.memory_decay_s)


def task_examples(data: TrajectorySet) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """
    Return the distinct instructions that ask for an angle or a distance.

    As (texts, targets, masks), the targets and masks (n, 2) in `TASK_PARAMETERS` order.
    """
    _, first = np.unique(data.text_index, return_index=True)
    masks = data.auxiliary_mask[first][:, _TASK_COLUMNS]
    keep = first[masks.any(1)]
    texts = [data.texts[i] for i in data.text_index[keep]]
    return (texts, data.auxiliary[keep][:, _TASK_COLUMNS],
            data.auxiliary_mask[keep][:, _TASK_COLUMNS])


def warm_up_task_head(model: VLITModel, data: TrajectorySet, steps: int,
                      lr: float = 1e-3) -> Optional[dict]:
    """
    Fit the task head alone to the data's distinct instructions, full batch, from the text.

    Returns its mean absolute errors after fitting (degrees, metres), or None when the model
    has no task head, no instruction asks for an angle or a distance, or `steps` is 0.
    Deterministic, so data-parallel ranks stay identical.
    """
    head = model.vlm.fusion.task_head
    texts, targets, masks = task_examples(data)
    if head is None or steps <= 0 or not texts:
        return None
    with torch.no_grad():
        text = model.vlm.encode_text(texts)
    wanted = torch.as_tensor(targets, device=text.pooled.device)
    mask = torch.as_tensor(masks, device=text.pooled.device, dtype=wanted.dtype)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        error = (model.vlm.fusion.task_parameters(text).float() - wanted).pow(2) * mask
        loss = error.sum() / mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        error = (model.vlm.fusion.task_parameters(text).float() - wanted).abs() * mask
    per_column = error.sum(0) / mask.sum(0).clamp_min(1)
    return {'instructions': len(texts), 'steps': steps,
            'turn_error_deg': round(math.degrees(float(per_column[0]) * TURN_ANGLE_SCALE_RAD),
                                    2),
            'move_error_m': round(float(per_column[1]) * MOVE_DISTANCE_SCALE_M, 3)}


def dagger_specs(seed_base: int, round_index: int, episodes: int,
                 context: loop.DistributedContext):
    """Return this rank's share of a round's episodes: (specs, global episode ids)."""
    specs, ids = [], []
    for k in range(context.rank, episodes, context.world_size):
        seed = seed_base + DAGGER_SEED_OFFSET + round_index * DAGGER_SEEDS_PER_ROUND + k
        scene = Scene.generate(seed)
        family = FAMILY_PLAN[k % len(FAMILY_PLAN)]
        instruction = training_instruction(scene, family, random.Random(seed))
        specs.append(make_episode(0, seed, [instruction]))
        ids.append(k)
    return specs, ids


def round_shards(out: Path, round_index: int, world_size: int) -> List[Path]:
    return [out / 'dagger' / f'round_{round_index:02d}' / f'rank_{rank:03d}'
            for rank in range(world_size)]


def run_rollouts(model: VLITModel, out: Path, round_index: int, schedule: DaggerSchedule,
                 args, context: loop.DistributedContext) -> dict:
    """Collect (or reuse) this rank's rollouts of a round; return a summary of them."""
    from vlit_ros.training.dagger import collect
    stem = round_shards(out, round_index, context.world_size)[context.rank]
    if not shard_finished(stem):
        specs, ids = dagger_specs(TRAINING_SEED_BASE, round_index, schedule.episodes, context)
        seed = args.seed * 1000 + round_index * 10 + context.rank
        sampling = {} if schedule.temperature == 0.0 else \
            {'greedy': False, 'temperature': schedule.temperature, 'seed': seed}
        policy = ModelPolicy(model, context.device, **sampling)
        buffer = collect(policy, specs, ids, schedule.beta_of(round_index), seed=seed,
                         parallel=schedule.parallel,
                         progress=context.is_main and not args.quiet,
                         rules=schedule.expert)
        model.train()
        image_shape = specs[0].scene.robot.image_height, specs[0].scene.robot.image_width, 3
        write_shard(stem, buffer.arrays(image_shape),
                    {'kind': 'trajectories', 'records': len(buffer),
                     'episodes': buffer.episodes, 'round': round_index,
                     'beta': schedule.beta_of(round_index)})
    meta = read_json(stem.with_suffix('.json'))
    learner = sum(e['learner_steps'] for e in meta['episodes'])
    return {'round': round_index, 'frames': meta['records'], 'learner_steps': learner,
            'episodes': len(meta['episodes'])}


def evaluate_model(model: VLITModel, episodes: int, seed: int, device, progress: bool
                   ) -> Optional[dict]:
    """Success rates of the model on generated episodes (all families), or None for 0."""
    if episodes <= 0:
        return None
    from vlit_ros.evaluation import evaluate, format_table
    summary = evaluate(ModelPolicy(model, device), episodes, seed, progress=progress)
    model.train()
    print(format_table(summary, f'evaluation: {episodes} episodes, seed {seed}'))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--data', action='append', required=True, metavar='DIR',
                        help='gen-data directory with trajectory shards (repeatable)')
    parser.add_argument('--init', default=None, metavar='DIR',
                        help='start from this checkpoint (a pretrain output, usually); '
                             'without it the model is built from --preset')
    parser.add_argument('--preset', choices=PRESETS, default='cpu',
                        help='model size without --init (default: cpu)')
    parser.add_argument('--text-encoder', choices=TEXT_ENCODERS, default='minilm',
                        help='text encoder without --init (default: minilm)')
    parser.add_argument('--no-fusion-state', action='store_true',
                        help="the new executor skips the fusion Transformer's state and reads "
                             'the instruction through the sentence embedding, the grounding '
                             'map and the task parameters only')
    add_conv_stem_argument(parser)
    parser.add_argument('--map-memory', action='store_true',
                        help="the new executor also reads where the model's own grounding map "
                             'was strongest on earlier frames, carried forward by odometry '
                             '(core.model.memory)')
    parser.add_argument('--map-peak', action='store_true',
                        help="the new executor also reads the grounding map's peak: its "
                             'highest probability, where that patch is, and the two '
                             'multiplied (core.model.executor)')
    parser.add_argument('--zoom-map', action='store_true',
                        help='the new model merges its grounding map with the map of a 2x zoom '
                             'of the image centre, so far targets show on it (twice the vision '
                             'work per frame; core.model.zoom)')
    loop.add_common_arguments(parser, steps=3000, batch_size=64, lr=1e-3)
    parser.add_argument('--warmup', type=int, default=100, help='warm-up steps (default: 100)')
    parser.add_argument('--change-weight', type=float, default=5.0,
                        help='how much more often frames where the expert changes action are '
                             'drawn (default: 5)')
    parser.add_argument('--paraphrase', type=float, default=PARAPHRASE_SHARE, metavar='P',
                        help='share of the goto frames of each batch whose instruction is '
                             'rephrased: new phrasings, or random words around the name of '
                             'the object (phrasings.GotoParaphraser; default: '
                             f'{PARAPHRASE_SHARE:g}; 0: none)')
    for name, what in _LOSS_WEIGHT_HELP.items():
        default = getattr(LossWeights(), name)
        parser.add_argument(f'--{name.replace("_", "-")}-weight', type=float, default=default,
                            help=f'weight of {what} (default: {default:g}; 0: none)')
    parser.add_argument('--grounding-labels', choices=GROUNDING_LABELS, default='coverage',
                        help='labels of the grounding map: coverage (the share of each patch '
                             'the object covers) or presence (1 on a patch that holds the '
                             'whole object, however far; default: coverage)')
    parser.add_argument('--task-warmup-steps', type=int, default=600,
                        help='steps fitting the task head to the distinct instructions before '
                             'cloning (default: 600; 0: none)')
    parser.add_argument('--dagger-rounds', type=int, default=3,
                        help='DAgger rounds after cloning (default: 3; 0: cloning only)')
    parser.add_argument('--dagger-episodes', type=int, default=150,
                        help='learner episodes rolled out per round (default: 150)')
    parser.add_argument('--dagger-steps', type=int, default=600,
                        help='training steps after each round (default: 600)')
    parser.add_argument('--dagger-beta', type=float, default=0.3,
                        help='probability of executing the expert in round 1, halved each '
                             'round (default: 0.3)')
    parser.add_argument('--dagger-parallel', type=int, default=8,
                        help='worlds rolled out together (default: 8)')
    parser.add_argument('--dagger-temperature', type=float, default=0.0,
                        help='the learner samples its rollout actions from softmax(logits / '
                             'T), so a round visits more varied states (default: 0, greedy)')
    add_expert_arguments(parser, "DAgger's expert (give gen-data the same) labels with")
    parser.add_argument('--eval-episodes', type=int, default=100,
                        help='episodes of the closing evaluation (default: 100; 0: none)')


def run(args: argparse.Namespace) -> int:
    return loop.run_stage('finetune', args, _run)


def _run(args, context: loop.DistributedContext) -> int:
    out = Path(args.out)
    if args.task_warmup_steps < 0:
        raise ValueError(f'--task-warmup-steps must be 0 or more, got {args.task_warmup_steps}')
    started = time.perf_counter()
    if not (math.isfinite(args.dagger_temperature) and args.dagger_temperature >= 0.0):
        raise ValueError(f'--dagger-temperature must be 0 or more, got '
                         f'{args.dagger_temperature}')
    schedule = DaggerSchedule(args.dagger_rounds, args.dagger_episodes, args.dagger_steps,
                              args.dagger_beta, args.dagger_parallel, args.dagger_temperature,
                              expert_rules_of(args))
    model = build_model(args).to(context.device)
    start_action = model.start_action
    # Map memory is recomputed from the model's own map once the map has learnt something:
    # from halfway through cloning, or from the start for a trained policy.
    memory_from = None
    if model.executor.memory:
        trained = bool(args.init) and \
            read_checkpoint_info(args.init)['architecture'] == VLITModel.architecture
        memory_from = 0 if trained else args.steps // 2
    image_size = (model.config.vision.image_height, model.config.vision.image_width)
    roots = [Path(d) for d in args.data]
    check_paraphrase_share(args.paraphrase)  # before the paraphraser and the data load
    if schedule.rounds:
        check_expert_labels(roots, schedule.expert)
    paraphraser = GotoParaphraser(tokenizer_words()) if args.paraphrase > 0 else None

    def load_data(rounds_done: int) -> FamilyBatches:
        extra = [stem for r in range(rounds_done)
                 for stem in round_shards(out, r, context.world_size)]
        data = TrajectorySet.load(roots, FAMILIES, start_action, size=image_size,
                                  extra_shards=extra,
                                  all_objects=weights.patch_attributes > 0)
        if memory_from is not None and trainer.step >= memory_from:
            refresh(data)
        return FamilyBatches(data, args.batch_size, args.seed, context, args.change_weight,
                             args.paraphrase, paraphraser)

    def refresh(data: TrajectorySet) -> None:
        refresh_map_memory(model, data, progress=context.is_main and not args.quiet)

    weights = LossWeights(**{name: getattr(args, f'{name}_weight')
                             for name in _LOSS_WEIGHT_HELP})
    head = AuxiliaryHeads(model.vlm.state_dim, model.vlm.text_dim, weights).to(context.device)

    def loss_fn(m, step):
        return imitation_losses(m, head, batches.batch(step), weights, args.grounding_labels)

    trainer = loop.Trainer(model, loss_fn, lambda d: save_checkpoint(model, d), out, context,
                           'finetune', progress=not args.quiet, auxiliary=head)
    if trainer.resume():
        if not (out / WEIGHTS_FILE).is_file():
            raise ValueError(f'{out} has a training state but no checkpoint to resume from')
        load_weights_from_bytes(model, (out / WEIGHTS_FILE).read_bytes(), str(out))
        if context.is_main:
            print(f'resuming {out} at step {trainer.step}')
    rounds_done = int(trainer.extra.get('rounds_done', 0))
    trainer.extra.setdefault('rounds', [])
    batches = load_data(rounds_done)
    if context.is_main:
        counts = batches.data.family_counts()
        print(f'imitation data: {len(batches.data)} frames {counts}, '
              f'{len(batches.data.texts)} distinct instructions')
    if trainer.step == 0 and rounds_done == 0:
        fitted = warm_up_task_head(model, batches.data, args.task_warmup_steps)
        if fitted is not None:
            trainer.extra['task_warmup'] = fitted
            if context.is_main:
                print(f'task head fitted to {fitted["instructions"]} instructions: mean '
                      f'error {fitted["turn_error_deg"]} deg, {fitted["move_error_m"]} m')

    def clone_until(step: int) -> None:
        trainer.train(loop.LoopConfig(step, args.lr, args.warmup, 0, args.steps,
                                      log_every=args.log_every,
                                      checkpoint_every=args.checkpoint_every), 'cloning')

    if memory_from:
        # A new executor's memory: the first half of cloning without it, then the refresh
        # (already done by `load_data` when a resumed run is past the half).
        clone_until(memory_from)
        if batches.data.memory is None:
            refresh(batches.data)
    clone_until(args.steps)
    if trainer.step == args.steps and rounds_done == 0:
        trainer.checkpoint()
    for round_index in range(schedule.rounds):
        end = schedule.round_end(args.steps, round_index)
        if round_index >= rounds_done:
            summary = run_rollouts(model, out, round_index, schedule, args, context)
            context.barrier()
            rounds_done = round_index + 1
            trainer.extra['rounds_done'] = rounds_done
            trainer.extra['rounds'].append(dict(summary, step=trainer.step))
            trainer.checkpoint()
            # The old set goes first: holding both at once doubles the peak memory.
            batches = None
            batches = load_data(rounds_done)
            if context.is_main:
                print(f'DAgger round {round_index + 1}: {summary["frames"]} frames '
                      f'(rank 0), {len(batches.data)} in total')
        trainer.train(loop.LoopConfig(end, args.lr * 0.5, args.warmup // 2, end - schedule.steps,
                                      end, log_every=args.log_every,
                                      checkpoint_every=args.checkpoint_every),
                      f'DAgger round {round_index + 1}')
    trainer.checkpoint()
    trainer.close()
    if context.is_main:
        _finish(model, trainer, args, out, schedule, time.perf_counter() - started, context)
    return 0


def _finish(model, trainer, args, out: Path, schedule: DaggerSchedule, seconds: float,
            context) -> None:
    evaluation = evaluate_model(model, args.eval_episodes, EVAL_SEED, context.device,
                                not args.quiet)
    markers = [schedule.round_end(args.steps, r) - schedule.steps for r in range(schedule.rounds)]
    rates, rates_title = None, ''
    if evaluation is not None:
        rates = family_rates(evaluation)
        rates_title = (f'success, {evaluation["episodes_total"]} episodes (seed {EVAL_SEED}): '
                       f'{100.0 * evaluation["success_rate"]:.0f}% overall')
    write_report(out / 'report.png', trainer.history, f'finetune: {out.name}', rates,
                 rates_title, markers=markers, marker_label='DAgger round')
    record = {'stage': 'finetune', 'steps': trainer.step, 'seconds_this_run': round(seconds, 1),
              'dagger_rounds': trainer.extra.get('rounds', []),
              'task_warmup': trainer.extra.get('task_warmup'),
              'args': {k: v for k, v in vars(args).items() if k != 'func'},
              'actions': list(ACTIONS)}
    if evaluation is not None:
        record['evaluation'] = {k: evaluation[k] for k in
                                ('seed', 'episodes_total', 'success_rate', 'per_family')}
    write_json(out / 'training.json', record)
    print(f'wrote {out} (checkpoint, report.png, training.json) in {seconds / 60:.1f} min')
