"""
In-memory datasets read from gen-data shards (and DAgger shards): captions and trajectories.

Images stay uint8 (N x H x W x 3) until a batch is drawn; they are resized once at load time
when the model's input size differs from the stored one.
"""

from collections import OrderedDict
from dataclasses import dataclass
import hashlib
import json
import math
from pathlib import Path
import random
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from vlit_ros.core.task_parameters import MOVE_DISTANCE_SCALE_M, TURN_ANGLE_SCALE_RAD
from vlit_ros.sim.scene import COLORS, MAX_OBJECTS, ObjectSpec, Scene, SHAPES
from vlit_ros.sim.tasks import goto_instruction, GotoTask, MoveTask, task_from_dict, TurnTask
from vlit_ros.training.captions import image_box, visible_objects
from vlit_ros.training.shards import iter_shards, read_shard


def resize_images(images: np.ndarray, size: Optional[Tuple[int, int]]) -> np.ndarray:
    """Resize N x H x W x 3 images to (height, width) unless they already have that size."""
    if size is None or tuple(images.shape[1:3]) == tuple(size):
        return images
    height, width = size
    interpolation = cv2.INTER_AREA if images.shape[1] > height else cv2.INTER_LINEAR
    out = np.empty((images.shape[0], height, width, 3), np.uint8)
    for i, image in enumerate(images):
        out[i] = cv2.resize(image, (width, height), interpolation=interpolation)
    return out


@dataclass
class CaptionSet:
    """Images with a true caption and a false (hard negative) caption each."""

    images: np.ndarray
    captions: List[str]
    negatives: List[str]

    def __len__(self) -> int:
        return len(self.captions)

    @classmethod
    def load(cls, roots: Iterable[Path], size: Optional[Tuple[int, int]] = None,
             limit: Optional[int] = None) -> 'CaptionSet':
        """Read the caption shards of one or more dataset directories (at most `limit`)."""
        images, texts, negatives = [], [], []
        count = 0
        for root in roots:
            for arrays, meta in iter_shards(root, 'captions'):
                take = len(meta['captions']) if limit is None else \
                    min(len(meta['captions']), limit - count)
                images.append(resize_images(arrays['image'][:take], size))
                texts += meta['captions'][:take]
                negatives += meta['negatives'][:take]
                count += take
                if limit is not None and count >= limit:
                    break
        if not texts:
            raise ValueError(f'no caption shards in {", ".join(str(r) for r in roots)}')
        return cls(np.concatenate(images), texts, negatives)


# Per-frame arrays of a trajectory set.
_FRAME_ARRAYS = ('image', 'odom', 'pose', 'yaw_total', 't', 'expert_action', 'taken_action',
                 'step')
# Auxiliary regression targets of a frame (see `auxiliary_targets`).
AUXILIARY_TARGETS = ('goto_bearing', 'goto_log_distance', 'goto_visible', 'turn_angle',
                     'move_distance')


def auxiliary_targets(episode: dict, poses: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """
    Return (targets, mask), both (frames, 5), of one episode's frames from ground truth.

    goto: the target's bearing from the optical axis (over half the field of view) and log
    distance while it is in view, and whether it is in view; turn: the requested angle over
    pi; move: the requested distance over 2 m. Other entries are masked out. They train an
    auxiliary head on the fused state, so that state learns to carry what the executor
    needs: where the named object is, and how far to turn or drive.
    """
    frames = poses.shape[0]
    targets = np.zeros((frames, len(AUXILIARY_TARGETS)), np.float32)
    mask = np.zeros_like(targets, dtype=bool)
    task = task_from_dict(episode['task'])
    if isinstance(task, TurnTask):
        targets[:, 3] = math.radians(task.angle_deg) / TURN_ANGLE_SCALE_RAD
        mask[:, 3] = True
    elif isinstance(task, MoveTask):
        targets[:, 4] = task.distance_m / MOVE_DISTANCE_SCALE_M
        mask[:, 4] = True
    elif isinstance(task, GotoTask):
        scene = Scene.generate(episode['seed'])
        target = task.target(scene)
        half_fov = math.radians(scene.robot.camera_hfov_deg / 2.0)
        for row, pose in enumerate(poses):
            seen = [v for v in visible_objects(scene, tuple(float(p) for p in pose))
                    if (v.color, v.shape) == (target.color, target.shape)]
            mask[row, 2] = True
            if seen:
                targets[row, :3] = (math.radians(seen[0].bearing_deg) / half_fov,
                                    math.log(max(seen[0].distance, 0.1)), 1.0)
                mask[row, :2] = True
    return targets, mask


# A frame whose instruction names no object, or whose named object is out of view.
NO_BOX = (0.0, 0.0, 0.0, 0.0)


def target_boxes(episode: dict, poses: np.ndarray) -> np.ndarray:
    """
    Return (frames, 4) boxes (left, right, top, bottom) of the named object in each image.

    In image fractions, from `object_boxes`; `NO_BOX` where the instruction names no object
    (turn, move, stop). They are the grounding head's training labels.
    """
    task = task_from_dict(episode['task'])
    if not isinstance(task, GotoTask):
        return np.zeros((poses.shape[0], 4), np.float32)
    scene = Scene.generate(episode['seed'])
    return object_boxes(scene, task.target(scene), poses)


def _covers(cover, box) -> bool:
    """Return whether box `cover` (left, right, top, bottom) contains box `box` whole."""
    return cover[0] <= box[0] and cover[1] >= box[1] and cover[2] <= box[2] and \
        cover[3] >= box[3]


def object_boxes(scene: Scene, target, poses: np.ndarray) -> np.ndarray:
    """
    Return (frames, 4) boxes of one object of `scene` in the image seen from each pose.

    From `image_box`; `NO_BOX` where the object is out of view, and where a nearer object's
    box covers its box whole (hidden).
    """
    boxes = np.zeros((poses.shape[0], 4), np.float32)
    others = [o for o in scene.objects if o is not target]
    for row, pose in enumerate(poses):
        pose = tuple(float(p) for p in pose)
        box = image_box(scene, pose, target)
        if box is None:
            continue
        distance = math.hypot(target.x - pose[0], target.y - pose[1])
        hidden = False
        for other in others:
            if math.hypot(other.x - pose[0], other.y - pose[1]) >= distance:
                continue
            cover = image_box(scene, pose, other)
            if cover is not None and _covers(cover, box):
                hidden = True
                break
        if not hidden:
            boxes[row] = box
    return boxes


# Attribute classes of the training-only attribute heads (see `attribute_class`).
ATTRIBUTE_CLASSES = 1 + len(COLORS) * len(SHAPES)
# Patches whose largest object presence lies between these are left out of the per-patch
# attribute loss: they hold a sliver of an object, neither clearly it nor clearly empty.
_EMPTY_PRESENCE, _OBJECT_PRESENCE = 0.05, 0.5
# The ignored label of `patch_attribute_labels` (torch's cross-entropy default).
IGNORE_LABEL = -100


def attribute_class(obj: ObjectSpec) -> int:
    """Return an object's attribute class: 1 + its (colour, shape) pair's index; 0 is none."""
    return 1 + list(COLORS).index(obj.color) * len(SHAPES) + SHAPES.index(obj.shape)


def scene_object_boxes(scene: Scene, poses: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """
    Return every object's boxes (frames, MAX_OBJECTS, 4) and classes (frames, MAX_OBJECTS).

    Boxes as `image_box` gives them in the image seen from each pose, classes as
    `attribute_class`. Per frame the objects are ordered farthest first, so a nearer object
    comes later and wins a patch both cover; `NO_BOX` and class 0 fill the slots of objects
    out of view, hidden whole behind a nearer one (as `object_boxes`), or absent.
    """
    if len(scene.objects) > MAX_OBJECTS:
        raise ValueError(f'scene {scene.seed} has {len(scene.objects)} objects; attribute '
                         f'labels hold at most {MAX_OBJECTS}')
    frames = poses.shape[0]
    boxes = np.zeros((frames, MAX_OBJECTS, 4), np.float32)
    classes = np.zeros((frames, MAX_OBJECTS), np.int64)
    kinds = [attribute_class(o) for o in scene.objects]
    for row, pose in enumerate(poses):
        pose = tuple(float(p) for p in pose)
        seen = []
        for obj, kind in zip(scene.objects, kinds):
            box = image_box(scene, pose, obj)
            if box is not None:
                seen.append((math.hypot(obj.x - pose[0], obj.y - pose[1]), box, kind))
        seen.sort(key=lambda item: -item[0])
        slot = 0
        for index, (distance, box, kind) in enumerate(seen):
            if any(_covers(cover, box) for near, cover, _ in seen[index + 1:]
                   if near < distance):
                continue
            boxes[row, slot], classes[row, slot] = box, kind
            slot += 1
    return boxes, classes


# Frames in a row that share one relabelled grounding query (see `grounding_queries`).
QUERY_SPAN = 10


def grounding_queries(episode: dict, poses: np.ndarray
                      ) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """
    Return (texts per frame, boxes (frames, 4), classes (frames,)): relabelled queries.

    A second grounding query per frame, its object's box and its object's attribute class
    (`attribute_class`). Every frame of every family shows a scene, so it can teach the
    grounding map about any object in it, not only the one its instruction names: for each
    run of `QUERY_SPAN` frames, an object of the scene is drawn, named with a training
    phrasing (`goto_instruction`: training templates and referring expressions), and
    labelled with its box in each image (`object_boxes`). Expert data alone never shows the
    robot close to an object it was not sent to, so without these queries the map learns "a
    large object ahead is the target" and says so of the wrong object. Deterministic per
    episode.
    """
    scene = Scene.generate(episode['seed'])
    rng = random.Random(f"{episode['seed']}:{episode['first_frame']}:{episode['text']}")
    frames = poses.shape[0]
    texts: List[str] = []
    boxes = np.zeros((frames, 4), np.float32)
    classes = np.zeros(frames, np.int64)
    for start in range(0, frames, QUERY_SPAN):
        span = slice(start, min(start + QUERY_SPAN, frames))
        target = scene.objects[rng.randrange(len(scene.objects))]
        text = goto_instruction(target, scene, rng).text
        boxes[span] = object_boxes(scene, target, poses[span])
        classes[span] = attribute_class(target)
        texts += [text] * (span.stop - span.start)
    return texts, boxes, classes


GROUNDING_LABELS = ('coverage', 'presence')


def grounding_labels(boxes: np.ndarray, grid: Tuple[int, int],
                     kind: str = 'coverage') -> np.ndarray:
    """
    Return (B, rows * cols) soft labels of boxes (B, 4), one per patch.

    `coverage`: the share of each patch the box covers, so an object smaller than a patch
    (a far one) is labelled by its size: about 0.15 for one 3 m away. `presence`: per axis,
    the covered extent over the smaller of the box's and the patch's, so a patch that holds
    the whole object is labelled 1 however small it is, and large boxes are labelled as by
    coverage. Patches are in the vision encoder's token order (row by row from the top
    left); an empty box labels every patch 0.
    """
    if kind not in GROUNDING_LABELS:
        raise ValueError(f'grounding labels must be one of {", ".join(GROUNDING_LABELS)}, '
                         f'got {kind!r}')
    rows, cols = grid

    def overlap(low, high, cells):
        edges = np.arange(cells + 1, dtype=np.float32) / cells
        covered = np.minimum(high[:, None], edges[None, 1:]) - \
            np.maximum(low[:, None], edges[None, :-1])
        if kind == 'presence':
            extent = np.minimum(high - low, 1.0 / cells)
            return np.clip(covered / np.maximum(extent, 1e-6)[:, None], 0.0, 1.0)
        return np.clip(covered * cells, 0.0, 1.0)

    across = overlap(boxes[:, 0], boxes[:, 1], cols)
    down = overlap(boxes[:, 2], boxes[:, 3], rows)
    return (down[:, :, None] * across[:, None, :]).reshape(len(boxes), rows * cols)


def patch_attribute_labels(boxes: np.ndarray, classes: np.ndarray,
                           grid: Tuple[int, int]) -> np.ndarray:
    """
    Return (B, rows * cols) attribute classes per patch of `scene_object_boxes` output.

    A patch takes the class of the nearest object whose presence (`grounding_labels`) on it
    is at least one half, 0 where every object's presence is under 0.05, and
    `IGNORE_LABEL` in between.
    """
    batch, slots = classes.shape
    labels = np.zeros((batch, grid[0] * grid[1]), np.int64)
    sliver = np.zeros(labels.shape, bool)
    for slot in range(slots):
        present = classes[:, slot] > 0
        if not present.any():
            continue
        presence = grounding_labels(boxes[:, slot], grid, 'presence') * present[:, None]
        owned = presence >= _OBJECT_PRESENCE
        labels = np.where(owned, classes[:, slot, None], labels)
        sliver |= (presence > _EMPTY_PRESENCE) & ~owned
    return np.where(sliver & (labels == 0), IGNORE_LABEL, labels)


def concatenate_releasing(parts: List[np.ndarray]) -> np.ndarray:
    """
    Return np.concatenate(parts), emptying `parts` as each is copied.

    Each part is released once copied (when nothing else holds it), and the output's pages
    are only touched as they are filled, so the peak is about one copy of the data instead
    of two: for the images of a DAgger-aggregated dataset, gigabytes.
    """
    if not parts:
        raise ValueError('nothing to concatenate')
    shapes = {part.shape[1:] for part in parts}
    if len(shapes) > 1:
        raise ValueError(f'cannot concatenate arrays of shapes {sorted(shapes)} per row')
    out = np.empty((sum(part.shape[0] for part in parts),) + parts[0].shape[1:],
                   np.result_type(*parts))
    start = 0
    parts.reverse()
    while parts:
        part = parts.pop()
        out[start:start + part.shape[0]] = part
        start += part.shape[0]
        del part
    return out


@dataclass(frozen=True)
class ShardLabels:
    """The labels `TrajectorySet` derives from one shard's episodes and poses."""

    auxiliary: np.ndarray
    auxiliary_mask: np.ndarray
    target_box: np.ndarray
    query_texts: List[str]
    query_box: np.ndarray
    query_class: np.ndarray
    # (frames, MAX_OBJECTS, 4) and (frames, MAX_OBJECTS); no slots without `all_objects`
    object_box: np.ndarray
    object_class: np.ndarray


# Labels of recently read shards, by content: a DAgger round reloads every earlier shard,
# and recomputing their labels in Python took most of a reload (~20 s per 80,000 frames).
_LABEL_MEMO: 'OrderedDict[str, ShardLabels]' = OrderedDict()
_LABEL_MEMO_SHARDS = 512


def shard_labels(episodes: List[dict], poses: np.ndarray, all_objects: bool) -> ShardLabels:
    """
    Return one shard's labels from its episodes (meta) and poses (frames, 3).

    Auxiliary targets, target boxes, relabelled queries and, with `all_objects`, every
    object's boxes and classes; see `auxiliary_targets`, `target_boxes`,
    `grounding_queries` and `scene_object_boxes`. They depend on nothing else, so they are
    remembered by a digest of both for the shards read last.
    """
    digest = hashlib.sha256(json.dumps(episodes, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(poses, np.float64).tobytes())
    key = f'{digest.hexdigest()}:{bool(all_objects)}'
    labels = _LABEL_MEMO.get(key)
    if labels is not None:
        _LABEL_MEMO.move_to_end(key)
        return labels
    frames = poses.shape[0]
    targets = np.zeros((frames, len(AUXILIARY_TARGETS)), np.float32)
    mask = np.zeros_like(targets, dtype=bool)
    box = np.zeros((frames, 4), np.float32)
    query_texts: List[str] = [''] * frames
    query_box = np.zeros((frames, 4), np.float32)
    query_class = np.zeros(frames, np.int64)
    slots = MAX_OBJECTS if all_objects else 0
    scene_boxes = np.zeros((frames, slots, 4), np.float32)
    scene_classes = np.zeros((frames, slots), np.int64)
    for episode in episodes:
        span = slice(episode['first_frame'], episode['first_frame'] + episode['frames'])
        targets[span], mask[span] = auxiliary_targets(episode, poses[span])
        box[span] = target_boxes(episode, poses[span])
        query_texts[span], query_box[span], query_class[span] = grounding_queries(
            episode, poses[span])
        if all_objects:
            scene_boxes[span], scene_classes[span] = scene_object_boxes(
                Scene.generate(episode['seed']), poses[span])
    labels = ShardLabels(targets, mask, box, query_texts, query_box, query_class,
                         scene_boxes, scene_classes)
    for array in (targets, mask, box, query_box, query_class, scene_boxes, scene_classes):
        array.flags.writeable = False
    _LABEL_MEMO[key] = labels
    while len(_LABEL_MEMO) > _LABEL_MEMO_SHARDS:
        _LABEL_MEMO.popitem(last=False)
    return labels


@dataclass
class TrajectorySet:
    """
    Frames of expert-labelled episodes: the imitation dataset.

    `text_index[i]` points into `texts`; `prev_action[i]` is the action taken at the frame
    before (`start_action` on an episode's first frame); `family[i]` indexes `families`;
    `auxiliary[i]` and `auxiliary_mask[i]` are the frame's auxiliary targets; `target_box[i]`
    is where the named object is in the image (`target_boxes`); `query_texts[
    query_text_index[i]]` and `query_box[i]` are the frame's relabelled grounding query
    (`grounding_queries`). `memory[i]`, set by training for an executor with map memory
    (`finetune.refresh_map_memory`), is the map memory before the frame; None until then.
    """

    arrays: Dict[str, np.ndarray]
    texts: List[str]
    text_index: np.ndarray
    prev_action: np.ndarray
    family: np.ndarray
    families: Tuple[str, ...]
    auxiliary: np.ndarray
    auxiliary_mask: np.ndarray
    target_box: np.ndarray
    query_texts: List[str]
    query_text_index: np.ndarray
    query_box: np.ndarray
    query_class: np.ndarray
    object_box: Optional[np.ndarray]
    object_class: Optional[np.ndarray]
    memory: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.text_index.shape[0])

    @classmethod
    def from_shards(cls, shards: Iterable[Tuple[Dict[str, np.ndarray], dict]],
                    families: Sequence[str], start_action: int,
                    size: Optional[Tuple[int, int]] = None,
                    all_objects: bool = False) -> 'TrajectorySet':
        columns: Dict[str, List[np.ndarray]] = {name: [] for name in _FRAME_ARRAYS}
        text_ids: Dict[str, int] = {}
        query_ids: Dict[str, int] = {}
        text_index, prev, family, auxiliary, auxiliary_mask, boxes = [], [], [], [], [], []
        query_index, query_boxes, query_classes, object_boxes_, object_classes = \
            [], [], [], [], []
        for arrays, meta in shards:
            frames = arrays['step'].shape[0]
            if frames == 0:
                continue
            per_frame_text = np.empty(frames, np.int64)
            per_frame_family = np.empty(frames, np.int64)
            for episode in meta['episodes']:
                span = slice(episode['first_frame'], episode['first_frame'] + episode['frames'])
                per_frame_text[span] = text_ids.setdefault(episode['text'], len(text_ids))
                per_frame_family[span] = families.index(episode['family'])
            labels = shard_labels(meta['episodes'], arrays['pose'], all_objects)
            targets, mask, box = labels.auxiliary, labels.auxiliary_mask, labels.target_box
            query = np.array([query_ids.setdefault(text, len(query_ids))
                              for text in labels.query_texts], np.int64)
            query_box, query_class = labels.query_box, labels.query_class
            scene_boxes, scene_classes = labels.object_box, labels.object_class
            boxes.append(box)
            query_index.append(query)
            query_boxes.append(query_box)
            query_classes.append(query_class)
            object_boxes_.append(scene_boxes)
            object_classes.append(scene_classes)
            auxiliary.append(targets)
            auxiliary_mask.append(mask)
            taken = arrays['taken_action']
            shifted = np.concatenate([[start_action], taken[:-1]])
            prev.append(np.where(arrays['step'] == 0, start_action, shifted))
            text_index.append(per_frame_text)
            family.append(per_frame_family)
            for name in _FRAME_ARRAYS:
                column = arrays[name]
                columns[name].append(resize_images(column, size) if name == 'image' else column)
        if not text_index:
            raise ValueError('no trajectory frames found')
        return cls({k: concatenate_releasing(v) for k, v in columns.items()}, list(text_ids),
                   np.concatenate(text_index), np.concatenate(prev).astype(np.int64),
                   np.concatenate(family), tuple(families), np.concatenate(auxiliary),
                   np.concatenate(auxiliary_mask), np.concatenate(boxes), list(query_ids),
                   np.concatenate(query_index), np.concatenate(query_boxes),
                   np.concatenate(query_classes),
                   np.concatenate(object_boxes_) if all_objects else None,
                   np.concatenate(object_classes) if all_objects else None)

    @classmethod
    def load(cls, roots: Iterable[Path], families: Sequence[str], start_action: int,
             size: Optional[Tuple[int, int]] = None,
             extra_shards: Iterable[Path] = (), all_objects: bool = False
             ) -> 'TrajectorySet':
        """Read the trajectory shards of dataset directories plus extra shard paths."""
        def shards():
            for root in roots:
                yield from iter_shards(root, 'trajectories')
            for stem in extra_shards:
                yield read_shard(stem)
        return cls.from_shards(shards(), families, start_action, size, all_objects)

    def family_counts(self) -> Dict[str, int]:
        return {f: int((self.family == i).sum()) for i, f in enumerate(self.families)}
