# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""
Does the grounding map tell shapes of one colour apart: a probe by distance.

    python bench/shape_grounding.py --scenes 60
    python bench/shape_grounding.py --scenes 60 --checkpoint runs/x/polish --json out.json

Half of the shipped checkpoint's goto failures end at an object of the named colour and
another shape (`goto_diagnostics.py`). This probe puts the robot in front of each object of
evaluation scenes (seeds from `--seed`, disjoint from training) at several distances, facing
it, renders the camera image, and asks the map three questions about the object's patches:
its own name ("go to the blue cube": the map should say yes), its colour with another shape
("go to the blue sphere": no) and its shape with another colour ("go to the red cube": no).
A view counts when the object is in view and no other object's box overlaps its box. Per
distance it reports the median of the map's highest probability on the object's patches for
each question, how often it is 0.5 or more, and how often the own name scores above each
wrong one (50% is chance). The map is trained on coverage labels, so a far object's patches
are labelled by the share of them it covers (about 0.15 at 3 m): far away, compare the
questions with one another rather than with 0.5.

`--features` also asks whether the image features hold shape at all: a linear classifier of
each view's object (shape, and colour for comparison), trained on the features of the
object's patches in the views of the first three quarters of the scenes and scored on the
rest, for the vision encoder's output and for the projector's (what the map reads).
"""

import argparse
import dataclasses
import json
import math
from pathlib import Path
import random
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from vlit_ros.core.model import VLITModel
from vlit_ros.policies import load_grounding_model
from vlit_ros.sim.scene import COLORS, ObjectSpec, Scene, SHAPES
from vlit_ros.sim.world import World
from vlit_ros.training.captions import image_box
from vlit_ros.training.datasets import grounding_labels

# Camera-to-object distances probed (m).
DISTANCES = (1.0, 1.5, 2.0, 3.0, 4.0)
# The map says "yes" of an object when its highest probability on the object's patches is
# at least this.
YES = 0.5
# Clearance kept between the robot's centre and the arena walls (m).
CLEARANCE = 0.45
QUESTIONS = ('own name', 'same colour, other shape', 'same shape, other colour')


def view_pose(scene: Scene, obj: ObjectSpec, distance: float, rng: random.Random
              ) -> Optional[Tuple[float, float, float]]:
    """Return a free pose `distance` m from `obj`, facing it, or None when none is found."""
    half = scene.arena_size / 2.0 - CLEARANCE
    for _ in range(24):
        bearing = rng.uniform(-math.pi, math.pi)
        x = obj.x + distance * math.cos(bearing)
        y = obj.y + distance * math.sin(bearing)
        if abs(x) > half or abs(y) > half:
            continue
        if any(other.clearance(x, y) < scene.robot.radius + 0.1 for other in scene.objects):
            continue
        return x, y, math.atan2(obj.y - y, obj.x - x)
    return None


def questions(obj: ObjectSpec, rng: random.Random) -> List[str]:
    """Return the three texts asked about `obj`, in `QUESTIONS` order."""
    other_shape = rng.choice([s for s in SHAPES if s != obj.shape])
    other_colour = rng.choice([c for c in COLORS if c != obj.color])
    return [f'go to the {obj.color} {obj.shape}', f'go to the {obj.color} {other_shape}',
            f'go to the {other_colour} {obj.shape}']


def collect_views(seeds: Sequence[int], distances: Sequence[float], progress: bool = True
                  ) -> List[Dict]:
    """Render each object of each scene from each distance: a list of views."""
    views: List[Dict] = []
    with World() as world:
        for seed in tqdm(seeds, desc='scenes', unit='scene', disable=not progress,
                         dynamic_ncols=True):
            scene = Scene.generate(seed)
            rng = random.Random(seed)
            for obj in scene.objects:
                for distance in distances:
                    pose = view_pose(scene, obj, distance, rng)
                    if pose is None:
                        continue
                    placed = dataclasses.replace(scene, robot_x=round(pose[0], 4),
                                                 robot_y=round(pose[1], 4),
                                                 robot_yaw=round(pose[2], 4))
                    box = image_box(placed, pose, obj)
                    if box is None or any(
                            _overlaps(box, image_box(placed, pose, other))
                            for other in scene.objects if other is not obj):
                        continue
                    world.reset(scene=placed)
                    views.append({'seed': seed, 'object': obj.name, 'distance': distance,
                                  'image': world.render(), 'box': box,
                                  'texts': questions(obj, rng)})
    return views


def _overlaps(box, other) -> bool:
    return other is not None and other[0] < box[1] and box[0] < other[1] and \
        other[2] < box[3] and box[2] < other[3]


def object_patches(views: List[Dict], grid: Tuple[int, int]) -> np.ndarray:
    """Return (views, patches): how much of each patch each view's object box fills."""
    return grounding_labels(np.array([v['box'] for v in views], np.float32), grid,
                            'presence')


def answers(model: VLITModel, views: List[Dict], batch: int = 64) -> np.ndarray:
    """Return (views, questions): the map's highest probability on the object's patches."""
    vlm = model.vlm
    out = np.zeros((len(views), len(QUESTIONS)), np.float32)
    with torch.no_grad():
        for start in range(0, len(views), batch):
            chunk = views[start:start + batch]
            # The images are encoded once; only the question changes.
            tokens = vlm.image_tokens(vlm.preprocess(torch.from_numpy(
                np.stack([v['image'] for v in chunk]))))
            touched = object_patches(chunk, vlm.vision.grid) > 0.0
            for q in range(len(QUESTIONS)):
                logits = vlm.fusion.grounding_logits(
                    tokens, vlm.encode_instructions([v['texts'][q] for v in chunk]))
                probabilities = torch.sigmoid(logits.float()).numpy()
                out[start:start + len(chunk), q] = np.where(touched, probabilities, 0.0).max(-1)
    return out


def summarise(views: List[Dict], scores: np.ndarray, distances: Sequence[float]) -> Dict:
    """Per distance: median score per question, and how often the own name scores higher."""
    rows = []
    for distance in distances:
        keep = np.array([v['distance'] == distance for v in views], bool)
        count = int(keep.sum())
        row: Dict = {'distance_m': distance, 'views': count}
        if count:
            here = scores[keep]
            row['median'] = {name: round(float(np.median(here[:, q])), 4)
                             for q, name in enumerate(QUESTIONS)}
            row['yes'] = {name: round(float(np.mean(here[:, q] >= YES)), 4)
                          for q, name in enumerate(QUESTIONS)}
            row['own_above_other_shape'] = round(float(np.mean(here[:, 0] > here[:, 1])), 4)
            row['own_above_other_colour'] = round(float(np.mean(here[:, 0] > here[:, 2])), 4)
        rows.append(row)
    return {'views': len(views), 'rows': rows}


def format_table(summary: Dict, title: str) -> str:
    lines = [title, '', '| distance | views | median map: own name / same colour, other shape / '
             'same shape, other colour | map >= 0.5: own / other shape / other colour | '
             'own name above other shape | above other colour |',
             '| --- | --- | --- | --- | --- | --- |']
    for row in summary['rows']:
        if not row['views']:
            lines.append(f'| {row["distance_m"]:g} m | 0 | - | - | - | - |')
            continue
        medians = ' / '.join(f'{row["median"][q]:.2f}' for q in QUESTIONS)
        yes = ' / '.join(f'{100 * row["yes"][q]:.0f}%' for q in QUESTIONS)
        lines.append(f'| {row["distance_m"]:g} m | {row["views"]} | {medians} | {yes} | '
                     f'{100 * row["own_above_other_shape"]:.0f}% | '
                     f'{100 * row["own_above_other_colour"]:.0f}% |')
    return '\n'.join(lines)


def object_features(model: VLITModel, views: List[Dict], batch: int = 64
                    ) -> Dict[str, torch.Tensor]:
    """Return per view the mean vision-encoder and projector features of the object's patches."""
    vlm = model.vlm
    out: Dict[str, List[torch.Tensor]] = {'vision encoder': [], 'projector': []}
    with torch.no_grad():
        for start in range(0, len(views), batch):
            chunk = views[start:start + batch]
            vision = vlm.vision(vlm.preprocess(torch.from_numpy(
                np.stack([v['image'] for v in chunk]))))[:, vlm.vision.leading_tokens:]
            weights = torch.from_numpy(object_patches(chunk, vlm.vision.grid))
            weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-6)
            out['vision encoder'].append(torch.einsum('bn,bnd->bd', weights, vision.float()))
            out['projector'].append(torch.einsum(
                'bn,bnd->bd', weights, vlm.projector(vision).float()))
    return {name: torch.cat(parts) for name, parts in out.items()}


def linear_probe(features: torch.Tensor, labels: torch.Tensor, train: torch.Tensor,
                 classes: int, steps: int = 500) -> float:
    """Return the held-out accuracy of a linear classifier trained on the `train` rows."""
    generator = torch.Generator().manual_seed(0)
    mean, std = features[train].mean(0), features[train].std(0) + 1e-6
    x = (features - mean) / std
    layer = torch.nn.Linear(x.shape[1], classes)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.01)
        layer.bias.zero_()
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(layer(x[train]), labels[train]).backward()
        optimizer.step()
    with torch.no_grad():
        return float((layer(x[~train]).argmax(1) == labels[~train]).float().mean())


def feature_probe(model: VLITModel, views: List[Dict]) -> Dict:
    """Held-out shape and colour accuracy of linear classifiers on the object's features."""
    seeds = sorted({v['seed'] for v in views})
    if len(seeds) < 2:
        raise ValueError('the feature probe needs views of at least two scenes')
    cut = seeds[max(1, (3 * len(seeds)) // 4) - 1]
    train = torch.tensor([v['seed'] <= cut for v in views])
    shape = torch.tensor([SHAPES.index(v['object'].split('_', 1)[1]) for v in views])
    colour = torch.tensor([list(COLORS).index(v['object'].split('_', 1)[0]) for v in views])
    result = {'train_views': int(train.sum()), 'test_views': int((~train).sum())}
    for name, features in object_features(model, views).items():
        result[name] = {'shape': round(linear_probe(features, shape, train, len(SHAPES)), 4),
                        'colour': round(linear_probe(features, colour, train, len(COLORS)), 4)}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[1].strip())
    parser.add_argument('--checkpoint', default=None,
                        help='VLITModel checkpoint (default: the shipped one)')
    parser.add_argument('--scenes', type=int, default=60, help='scenes (default: 60)')
    parser.add_argument('--seed', type=int, default=700000,
                        help='first scene seed (default: 700000, an evaluation seed)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default: 1)')
    parser.add_argument('--features', action='store_true',
                        help='also train linear shape and colour classifiers on the image '
                             'features of the objects (does the encoder see shape at all?)')
    parser.add_argument('--json', default=None, metavar='OUT.json')
    parser.add_argument('--quiet', action='store_true')
    args = parser.parse_args(argv)
    if args.scenes < 1:
        print(f'error: --scenes must be at least 1, got {args.scenes}', file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        model, checkpoint = load_grounding_model(args.checkpoint)
    except ValueError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    views = collect_views(range(args.seed, args.seed + args.scenes), DISTANCES,
                          not args.quiet)
    summary = summarise(views, answers(model, views), DISTANCES)
    summary.update({'checkpoint': str(checkpoint), 'seed': args.seed, 'scenes': args.scenes})
    print(format_table(summary, f'grounding map of {checkpoint}, objects of scenes '
                                f'{args.seed}-{args.seed + args.scenes - 1} seen face on'))
    if args.features:
        try:
            probe = feature_probe(model, views)
        except ValueError as exc:
            print(f'error: {exc}', file=sys.stderr)
            return 2
        summary['features'] = probe
        print(f'\nlinear classifiers of the object from its patch features, held-out accuracy '
              f'({probe["train_views"]} training views, {probe["test_views"]} held out; '
              f'chance: shape {1 / len(SHAPES):.0%}, colour {1 / len(COLORS):.0%}):')
        for name in ('vision encoder', 'projector'):
            print(f'  {name}: shape {probe[name]["shape"]:.1%}, colour '
                  f'{probe[name]["colour"]:.1%}')
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
