# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""
Why goto episodes fail: where the robot stops, and how well the grounding map finds the target.

    python bench/goto_diagnostics.py --checkpoint vlit_ros/checkpoints/default --episodes 40

Rolls the checkpoint out on generated goto episodes (scene seeds SEED, SEED + 1, ...), and for
each prints the outcome, the distance from the target where the robot ended, and the object
it ended nearest to, and the grounding map's highest probability on its last view. Every
third frame it also scores the model's grounding map against the
target's ground-truth box: on frames where the target covers a patch, how often the map's
highest patch is on it; on frames where it does not, how often some patch is above 0.5.

Failures are sorted into three kinds: the target was never in view from where the robot
looked, in view but never found by the map, or found by the map and lost again. For the
first kind the expert is replayed on the same episode: whether its camera-only search (before
it falls back on ground truth) brought the target into view tells a robot that searched
badly from a target hidden behind other objects. `--timelines` prints each failure's actions
frame by frame, with where the target was in view and the map's highest probability (0-9).
"""

import argparse
from collections import Counter
import json
import math
import sys

import numpy as np
import torch

from vlit_ros.core.actions import ACTIONS
from vlit_ros.core.policy import ModelPolicy
from vlit_ros.sim.episode import make_episode, run_episode
from vlit_ros.sim.expert import ExpertPolicy
from vlit_ros.sim.world import World
from vlit_ros.training.captions import image_box
from vlit_ros.training.datasets import grounding_labels, NO_BOX, object_boxes

# Frames between two grounding checks, and the share of a patch the target must cover.
EVERY = 3
COVERED = 0.3
# One letter per action in the timelines.
_LETTERS = dict(zip(ACTIONS, 'SFlrLRB'))


def grounding_probabilities(model, images: np.ndarray, text: str) -> np.ndarray:
    """Return the grounding map's probabilities (frames, patches) for one instruction."""
    with torch.no_grad():
        logits = model.vlm.grounding_logits(torch.from_numpy(images), [text] * len(images))
    return torch.sigmoid(logits).numpy()


def expert_search_sees_target(world: World, spec, target, grid) -> bool:
    """Replay the expert on `spec`; return whether its camera-only search sees the target."""
    expert = ExpertPolicy()
    poses = []
    run_episode(world, expert, spec, on_step=lambda w, obs, action, reward: None if
                expert.search_exhausted else poses.append(w.pose()))
    if not poses:
        return False
    in_view = grounding_labels(object_boxes(spec.scene, target, np.array(poses)), grid)
    return bool((in_view.max(-1) > COVERED).any())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--checkpoint', default='vlit_ros/checkpoints/default')
    parser.add_argument('--episodes', type=int, default=40)
    parser.add_argument('--seed', type=int, default=3000)
    parser.add_argument('--json', default=None, metavar='OUT.json')
    parser.add_argument('--timelines', action='store_true',
                        help='print every failure frame by frame')
    args = parser.parse_args(argv)
    policy = ModelPolicy.from_checkpoint(args.checkpoint)
    if policy.model.vlm.fusion.grounding is None:
        print('this checkpoint has no grounding head', file=sys.stderr)
        return 2
    rows, on_target, visible, false_alarms, empty = [], 0, 0, 0, 0
    grid = policy.model.vlm.vision.grid
    with World() as world:
        for index in range(args.episodes):
            spec = make_episode(index, args.seed, families=('goto',))
            frames = []
            result = run_episode(world, policy, spec,
                                 on_step=lambda w, obs, action, reward: frames.append(
                                     (obs.image.copy(), w.pose(), action)))
            result_pose = world.pose()
            target = spec.instruction.task.target(spec.scene)
            sampled = frames[::EVERY]
            boxes = np.array([image_box(spec.scene, pose, target) or NO_BOX
                              for _, pose, _ in sampled], np.float32)
            labels = grounding_labels(boxes, grid)
            all_probabilities = grounding_probabilities(
                policy.model, np.stack([image for image, _, _ in frames]),
                spec.instruction.text)
            # What the map said about the last view: low where the robot ended at another
            # object means the map knew and the executor stopped anyway.
            final = float(all_probabilities[-1].max())
            probabilities = all_probabilities[::EVERY]
            for label, probability in zip(labels, probabilities):
                if label.max() > COVERED:
                    visible += 1
                    on_target += int(label[probability.argmax()] > 0.0)
                else:
                    empty += 1
                    false_alarms += int(probability.max() > 0.5)
            # Every frame: in view (not hidden) and found by the map (its highest patch on
            # the target, above 0.5).
            in_view = grounding_labels(object_boxes(
                spec.scene, target, np.array([pose for _, pose, _ in frames])), grid)
            shown = in_view.max(-1) > COVERED
            found = shown & (all_probabilities.max(-1) > 0.5) & \
                (in_view[np.arange(len(frames)), all_probabilities.argmax(-1)] > 0.0)
            nearest = min(spec.scene.objects, key=lambda o: math.hypot(
                o.x - result_pose[0], o.y - result_pose[1]))
            expert_saw = None
            if not shown.any():
                expert_saw = expert_search_sees_target(world, spec, target, grid)
            judge = result.reason
            rows.append({'text': spec.instruction.text, 'target': target.name,
                         'outcome': judge,
                         'target_distance_m': round(math.hypot(
                             target.x - result_pose[0], target.y - result_pose[1]), 2),
                         'nearest': nearest.name, 'final_map_max': round(final, 3),
                         'frames': len(frames), 'frames_target_in_view': int(shown.sum()),
                         'frames_target_found': int(found.sum()),
                         'expert_search_saw_target': expert_saw})
            print(f'{judge:24s} {rows[-1]["target_distance_m"]:5.2f} m from {target.name:16s} '
                  f'nearest {nearest.name:16s} map max {final:.2f} in view {shown.sum():3d} '
                  f'found {found.sum():3d} of {len(frames):3d} "{spec.instruction.text}"',
                  flush=True)
            if args.timelines and judge != 'success':
                print('   actions ' + ''.join(_LETTERS[action] for _, _, action in frames))
                print('   in view ' + ''.join('v' if s else '.' for s in shown))
                levels = (str(min(9, int(10 * p))) for p in all_probabilities.max(-1))
                print('   map max ' + ''.join(levels), flush=True)
    failures = [row for row in rows if row['outcome'] != 'success']
    summary = {
        'episodes': len(rows),
        'outcomes': dict(Counter(row['outcome'] for row in rows)),
        'ended_nearest_another_object': sum(row['nearest'] != row['target'] for row in rows),
        # of those, how many ended looking at a view whose map had no patch above 0.5
        'ended_at_another_object_map_below_half': sum(
            row['nearest'] != row['target'] and row['final_map_max'] < 0.5 for row in rows),
        'failures_target_never_in_view': sum(
            row['frames_target_in_view'] == 0 for row in failures),
        # of those, how many the expert's camera-only search brought into view
        'failures_never_in_view_expert_search_saw_it': sum(
            bool(row['expert_search_saw_target']) for row in failures),
        'failures_in_view_never_found': sum(
            row['frames_target_in_view'] > 0 and row['frames_target_found'] == 0
            for row in failures),
        'failures_found_then_lost': sum(row['frames_target_found'] > 0 for row in failures),
        'grounding_on_target': on_target / max(visible, 1), 'frames_target_visible': visible,
        'grounding_false_alarm': false_alarms / max(empty, 1), 'frames_target_absent': empty}
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, 'w') as out:
            json.dump({'summary': summary, 'episodes': rows}, out, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
