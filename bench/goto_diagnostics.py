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
"""

import argparse
from collections import Counter
import json
import math
import sys

import numpy as np
import torch

from vlit_ros.core.policy import ModelPolicy
from vlit_ros.sim.episode import make_episode, run_episode
from vlit_ros.sim.world import World
from vlit_ros.training.captions import image_box
from vlit_ros.training.datasets import grounding_labels, NO_BOX

# Frames between two grounding checks, and the share of a patch the target must cover.
EVERY = 3
COVERED = 0.3


def grounding_probabilities(model, images: np.ndarray, text: str) -> np.ndarray:
    """Return the grounding map's probabilities (frames, patches) for one instruction."""
    vlm = model.vlm
    with torch.no_grad():
        tokens = vlm.image_tokens(vlm.preprocess(torch.from_numpy(images)))
        features = vlm.encode_instructions([text] * len(images))
        return torch.sigmoid(vlm.fuse_details(tokens, features).grounding).numpy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--checkpoint', default='vlit_ros/checkpoints/default')
    parser.add_argument('--episodes', type=int, default=40)
    parser.add_argument('--seed', type=int, default=3000)
    parser.add_argument('--json', default=None, metavar='OUT.json')
    args = parser.parse_args(argv)
    policy = ModelPolicy.from_checkpoint(args.checkpoint)
    if policy.model.vlm.fusion.grounding is None:
        print('this checkpoint has no grounding head', file=sys.stderr)
        return 2
    rows, on_target, visible, false_alarms, empty = [], 0, 0, 0, 0
    with World() as world:
        for index in range(args.episodes):
            spec = make_episode(index, args.seed, families=('goto',))
            frames = []
            result = run_episode(world, policy, spec,
                                 on_step=lambda w, obs, action, reward: frames.append(
                                     (obs.image.copy(), w.pose())))
            result_pose = world.pose()
            target = spec.instruction.task.target(spec.scene)
            sampled = frames[::EVERY]
            boxes = np.array([image_box(spec.scene, pose, target) or NO_BOX
                              for _, pose in sampled], np.float32)
            labels = grounding_labels(boxes, policy.model.vlm.vision.grid)
            probabilities = grounding_probabilities(
                policy.model, np.stack([image for image, _ in sampled] + [frames[-1][0]]),
                spec.instruction.text)
            # What the map said about the last view: low where the robot ended at another
            # object means the map knew and the executor stopped anyway.
            final, probabilities = float(probabilities[-1].max()), probabilities[:-1]
            for label, probability in zip(labels, probabilities):
                if label.max() > COVERED:
                    visible += 1
                    on_target += int(label[probability.argmax()] > 0.0)
                else:
                    empty += 1
                    false_alarms += int(probability.max() > 0.5)
            nearest = min(spec.scene.objects, key=lambda o: math.hypot(
                o.x - result_pose[0], o.y - result_pose[1]))
            judge = result.reason
            rows.append({'text': spec.instruction.text, 'target': target.name,
                         'outcome': judge,
                         'target_distance_m': round(math.hypot(
                             target.x - result_pose[0], target.y - result_pose[1]), 2),
                         'nearest': nearest.name, 'final_map_max': round(final, 3)})
            print(f'{judge:24s} {rows[-1]["target_distance_m"]:5.2f} m from {target.name:16s} '
                  f'nearest {nearest.name:16s} map max {final:.2f} '
                  f'"{spec.instruction.text}"', flush=True)
    summary = {
        'episodes': len(rows),
        'outcomes': dict(Counter(row['outcome'] for row in rows)),
        'ended_nearest_another_object': sum(row['nearest'] != row['target'] for row in rows),
        # of those, how many ended looking at a view whose map had no patch above 0.5
        'ended_at_another_object_map_below_half': sum(
            row['nearest'] != row['target'] and row['final_map_max'] < 0.5 for row in rows),
        'grounding_on_target': on_target / max(visible, 1), 'frames_target_visible': visible,
        'grounding_false_alarm': false_alarms / max(empty, 1), 'frames_target_absent': empty}
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, 'w') as out:
            json.dump({'summary': summary, 'episodes': rows}, out, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
