"""
Run one instruction-following episode in-process: world, policy, judge.

Episode *i* of an evaluation with seed S uses scene seed S + i, so two policies evaluated
with the same seed and instruction list face identical episodes (DESIGN.md §5).
"""

from dataclasses import dataclass, field
import math
import random
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from vlit_ros.core.actions import ACTIONS
from vlit_ros.sim.scene import RobotSpec, Scene
from vlit_ros.sim.tasks import EpisodeJudge, FAMILIES, generate_instruction, Instruction
from vlit_ros.sim.world import World

# Seeds at or above this are for training data; evaluation seeds stay below it.
TRAINING_SEED_BASE = 1_000_000
# How the robot is moving when a `stop` instruction arrives: (v m/s, w rad/s).
_STOP_START_TWISTS = ((0.4, 0.0), (0.3, 0.6), (0.3, -0.6), (0.0, 0.8), (-0.2, 0.0))


class Observation:
    """
    What a policy sees: `image` (H x W x 3 uint8 RGB), `odom` and `t`.

    `odom` is (x, y, yaw, v, w) in the frame where the instruction began (x ahead, y left,
    yaw counter-clockwise); `t` is seconds since the instruction. The image is rendered on
    first access, so policies that never look cost no rendering.
    """

    __slots__ = ('odom', 't', '_world', '_image')

    def __init__(self, world: World, odom: Tuple[float, ...], t: float):
        self.odom = odom
        self.t = t
        self._world = world
        self._image = None

    @property
    def image(self) -> np.ndarray:
        if self._image is None:
            self._image = self._world.render()
        return self._image


@dataclass
class EpisodeSpec:
    """Everything that defines an episode before the policy acts."""

    index: int
    seed: int
    family: str
    instruction: Instruction
    scene: Scene
    initial_twist: Tuple[float, float] = (0.0, 0.0)


@dataclass
class EpisodeResult:
    """What happened in an episode."""

    index: int
    seed: int
    family: str
    text: str
    task: dict
    success: bool
    reason: str
    duration: float
    steps: int
    total_reward: float
    actions: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {'index': self.index, 'seed': self.seed, 'family': self.family,
                'text': self.text, 'task': self.task, 'success': self.success,
                'reason': self.reason, 'duration_s': round(self.duration, 3),
                'steps': self.steps, 'total_reward': round(self.total_reward, 4)}


def make_episode(index: int, seed: int, instructions: Optional[List[Instruction]] = None,
                 robot: Optional[RobotSpec] = None, families=FAMILIES,
                 held_out: bool = False) -> EpisodeSpec:
    """
    Build episode `index`: scene seed + index, and an instruction from the list or drawn.

    Without a list, episode i belongs to family i mod len(families), and the phrasing is
    drawn from the built-in templates with a generator seeded by the scene seed.
    """
    scene_seed = seed + index
    scene = Scene.generate(scene_seed, robot=robot)
    if instructions:
        instruction = instructions[index % len(instructions)]
        # Validate now, so a goto naming an object absent from the scene fails clearly.
        if instruction.task.family == 'goto':
            instruction.task.target(scene)
    else:
        family = families[index % len(families)]
        instruction = generate_instruction(scene, family, random.Random(scene_seed),
                                           held_out=held_out)
    initial = (0.0, 0.0)
    if instruction.task.family == 'stop':
        initial = _STOP_START_TWISTS[scene_seed % len(_STOP_START_TWISTS)]
    return EpisodeSpec(index, scene_seed, instruction.task.family, instruction, scene, initial)


def run_episode(world: World, policy, spec: EpisodeSpec,
                on_step: Optional[Callable[[World, Observation, str, float], None]] = None
                ) -> EpisodeResult:
    """
    Play one episode with `policy` and judge it.

    `on_step(world, obs, action, reward)` is called after each step (videos, data logging).
    """
    world.reset(scene=spec.scene, initial_twist=spec.initial_twist)
    judge = EpisodeJudge(spec.instruction.task, spec.scene, world.pose())
    text = spec.instruction.text
    if getattr(policy, 'privileged', False):
        policy.reset(text, task=spec.instruction.task, world=world)
    else:
        policy.reset(text)
    actions: List[str] = []
    total = 0.0
    t0 = world.time
    while not judge.done:
        odom = world.odometry()
        obs = Observation(world, odom.as_tuple(), world.time - t0)
        action = policy.act(obs)
        if action not in ACTIONS:
            raise ValueError(f'policy {type(policy).__name__} returned {action!r}; expected '
                             f'one of {", ".join(ACTIONS)}')
        world.step(action)
        reward = judge.update(world.time - t0, world.pose(), world.body_velocity(), action)
        if not math.isfinite(reward):
            raise RuntimeError(f'non-finite reward {reward} in episode {spec.index}')
        total += reward
        actions.append(action)
        if on_step is not None:
            on_step(world, obs, action, reward)
    outcome = judge.outcome
    return EpisodeResult(spec.index, spec.seed, spec.family, text,
                         spec.instruction.task.to_dict(), outcome.success, outcome.reason,
                         outcome.duration, len(actions), total, actions)


class _Running:
    """One episode of a batch in progress: its world, judge and record so far."""

    def __init__(self, world: World, spec: EpisodeSpec):
        self.world = world
        self.spec = spec
        world.reset(scene=spec.scene, initial_twist=spec.initial_twist)
        self.judge = EpisodeJudge(spec.instruction.task, spec.scene, world.pose())
        self.t0 = world.time
        self.actions: List[str] = []
        self.total = 0.0
        self.last: Optional[Observation] = None

    def observe(self) -> Observation:
        if self.judge.done:
            # A finished episode shows its last frame until the whole batch is done; its
            # action is ignored.
            return self.last
        self.last = Observation(self.world, self.world.odometry().as_tuple(),
                                self.world.time - self.t0)
        return self.last

    def result(self) -> EpisodeResult:
        outcome = self.judge.outcome
        spec = self.spec
        return EpisodeResult(spec.index, spec.seed, spec.family, spec.instruction.text,
                             spec.instruction.task.to_dict(), outcome.success, outcome.reason,
                             outcome.duration, len(self.actions), self.total, self.actions)


def run_episodes_batched(worlds: Sequence[World], policy,
                         specs: Sequence[EpisodeSpec]) -> List[EpisodeResult]:
    """
    Play `len(specs)` episodes in lockstep, one per world, with one batched policy call a step.

    For policies with `reset_batch(texts)` and `act_batch(observations)` (the model): the
    network sees every robot's frame in one forward pass, several times cheaper per frame
    than batch 1. Each episode is judged exactly as `run_episode` judges it.
    """
    if len(worlds) < len(specs):
        raise ValueError(f'{len(specs)} episodes need as many worlds, got {len(worlds)}')
    running = [_Running(world, spec) for world, spec in zip(worlds, specs)]
    policy.reset_batch([spec.instruction.text for spec in specs])
    while not all(episode.judge.done for episode in running):
        observations = [episode.observe() for episode in running]
        choices = policy.act_batch(observations)
        for episode, action in zip(running, choices):
            if episode.judge.done:
                continue
            if action not in ACTIONS:
                raise ValueError(f'policy {type(policy).__name__} returned {action!r}; '
                                 f'expected one of {", ".join(ACTIONS)}')
            world = episode.world
            world.step(action)
            reward = episode.judge.update(world.time - episode.t0, world.pose(),
                                          world.body_velocity(), action)
            if not math.isfinite(reward):
                raise RuntimeError(f'non-finite reward {reward} in episode '
                                   f'{episode.spec.index}')
            episode.total += reward
            episode.actions.append(action)
    return [episode.result() for episode in running]
