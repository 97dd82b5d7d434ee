"""
DAgger rollouts: the learner drives in the simulator, the expert labels every visited state.

Episodes run in waves of parallel worlds so the learner acts on a batch of frames at once
(`ModelPolicy.act_batch`). Each step executes the learner's action, or the expert's with
probability `beta` (the DAgger mixture). One override keeps the data informative: when the
learner says stop while the robot is at rest but the expert would still move, the episode
would end on the spot, so the expert's action is executed instead (the frame is labelled
with it all the same). Frames go into a `FrameBuffer`, the same layout gen-data writes.
"""

import random
from typing import List, Sequence

import numpy as np
from tqdm import tqdm

from vlit_ros.core.actions import ACTION_INDEX
from vlit_ros.core.geometry import wrap_angle
from vlit_ros.core.policy import ModelPolicy
from vlit_ros.sim.episode import EpisodeSpec, Observation
from vlit_ros.sim.expert import ExpertRules
from vlit_ros.sim.tasks import EpisodeJudge, STOPPED_ANGULAR_RADPS, STOPPED_LINEAR_MPS
from vlit_ros.sim.world import World
from vlit_ros.training.recording import FrameBuffer


class _FrozenObservation:
    """The last observation of a finished episode, shown to the batch until the wave ends."""

    __slots__ = ('image', 'odom', 't')

    def __init__(self, image, odom, t):
        self.image = image
        self.odom = odom
        self.t = t


class _Slot:
    """One episode in progress in one world."""

    def __init__(self, world: World, spec: EpisodeSpec, episode: int, rules: ExpertRules):
        self.world = world
        self.spec = spec
        self.episode = episode
        world.reset(scene=spec.scene, initial_twist=spec.initial_twist)
        self.judge = EpisodeJudge(spec.instruction.task, spec.scene, world.pose())
        self.expert = rules.policy()
        self.expert.reset(spec.instruction.text, task=spec.instruction.task, world=world)
        self.t0 = world.time
        self.step = 0
        self.yaw_total = 0.0
        self.last_yaw = 0.0
        self.learner_steps = 0
        self.frozen = None

    def observe(self):
        if self.frozen is not None:
            return self.frozen
        world = self.world
        return Observation(world, world.odometry().as_tuple(), world.time - self.t0)

    def at_rest(self) -> bool:
        v, w = self.world.body_velocity()
        return abs(v) < STOPPED_LINEAR_MPS and abs(w) < STOPPED_ANGULAR_RADPS


def collect(policy: ModelPolicy, specs: Sequence[EpisodeSpec], episode_ids: Sequence[int],
            beta: float, seed: int, parallel: int = 8, progress: bool = True,
            rules: ExpertRules = ExpertRules()) -> FrameBuffer:
    """
    Roll out `policy` on `specs` and return the expert-labelled frames.

    `rules` are the labelling expert's (`ExpertRules`).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f'beta must be in [0, 1], got {beta}')
    rng = random.Random(seed)
    buffer = FrameBuffer()
    worlds: List[World] = []
    bar = tqdm(total=len(specs), desc='dagger rollouts', unit='ep', disable=not progress,
               dynamic_ncols=True)
    try:
        for start in range(0, len(specs), parallel):
            wave = list(zip(specs[start:start + parallel], episode_ids[start:start + parallel]))
            while len(worlds) < len(wave):
                worlds.append(World())
            slots = [_Slot(world, spec, episode, rules)
                     for world, (spec, episode) in zip(worlds, wave)]
            _run_wave(policy, slots, beta, rng, buffer)
            bar.update(len(slots))
    finally:
        bar.close()
        for world in worlds:
            world.close()
    return buffer


def _run_wave(policy: ModelPolicy, slots: List[_Slot], beta: float, rng: random.Random,
              buffer: FrameBuffer) -> None:
    policy.reset_batch([slot.spec.instruction.text for slot in slots])
    # Frames of a wave interleave; they are regrouped per episode at the end.
    frames = {slot.episode: [] for slot in slots}
    while any(slot.frozen is None for slot in slots):
        observations = [slot.observe() for slot in slots]
        choices = policy.act_batch(observations)
        for index, (slot, obs, learner) in enumerate(zip(slots, observations, choices)):
            if slot.frozen is not None:
                continue
            yaw = obs.odom[2]
            slot.yaw_total += wrap_angle(yaw - slot.last_yaw)
            slot.last_yaw = yaw
            label = slot.expert.act(obs)
            image = obs.image
            executed = learner
            if rng.random() < beta or (learner == 'stop' and label != 'stop' and
                                       slot.at_rest()):
                executed = label
            else:
                slot.learner_steps += 1
            if executed != learner:
                policy.note_taken_action(executed, robot=index)
            frames[slot.episode].append({
                'image': image, 'odom': np.asarray(obs.odom, np.float32),
                'pose': np.asarray(slot.world.pose(), np.float32),
                'yaw_total': slot.yaw_total, 't': obs.t, 'expert_action': ACTION_INDEX[label],
                'taken_action': ACTION_INDEX[executed], 'episode': slot.episode,
                'step': slot.step})
            slot.step += 1
            slot.world.step(executed)
            world = slot.world
            slot.judge.update(world.time - slot.t0, world.pose(), world.body_velocity(),
                              executed)
            if slot.judge.done:
                slot.frozen = _FrozenObservation(image, obs.odom, obs.t)
    for slot in slots:
        first = len(buffer)
        for frame in frames[slot.episode]:
            buffer.add(**frame)
        outcome = slot.judge.outcome
        spec = slot.spec
        buffer.episodes.append({
            'episode': slot.episode, 'seed': spec.seed, 'family': spec.family,
            'text': spec.instruction.text, 'task': spec.instruction.task.to_dict(),
            'success': outcome.success, 'reason': outcome.reason, 'first_frame': first,
            'frames': len(buffer) - first, 'learner_steps': slot.learner_steps})
