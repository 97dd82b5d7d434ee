"""
`vlit-ros gen-data`: render training data into sharded datasets on disk.

Two kinds of shards, each a safetensors file of arrays plus a JSON file of texts:

- `captions/`: camera views with ground-truth captions ("a red cube close on the left, a
  blue sphere far ahead") and a hard negative per view (one colour, shape or side changed),
  for vision-language pretraining; `--visual-genome DIR` converts Visual Genome region
  descriptions into the same kind of shards.
- `trajectories/`: expert episodes at 10 Hz over all instruction families and the training
  phrasings, with perturbations (random-action bursts, overshooting the goal) labelled with
  the expert's action so the data covers recovery states, for instruction tuning.

Scene seeds start at `TRAINING_SEED_BASE` (evaluation seeds stay below it). Every shard is
a pure function of its index and the configuration, so runs are deterministic whatever the
number of workers, and an interrupted run resumes by skipping the shards already finished.
"""

import argparse
from concurrent.futures import as_completed, ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
import multiprocessing
import os
from pathlib import Path
import random
import sys
import threading
import time
from typing import Dict, List, Tuple

import numpy as np
from tqdm import tqdm

from vlit_ros.core.actions import ACTIONS
from vlit_ros.sim.episode import make_episode, TRAINING_SEED_BASE
from vlit_ros.sim.expert import ExpertPolicy, ExpertRules
from vlit_ros.sim.scene import RobotSpec, Scene
from vlit_ros.sim.tasks import GotoTask
from vlit_ros.sim.world import World
from vlit_ros.training import captions
from vlit_ros.training.phrasings import training_instruction
from vlit_ros.training.recording import FrameBuffer, NoisyExpertChooser, record_episode
from vlit_ros.training.shards import (DATASET_VERSION, MANIFEST, read_json, shard_finished,
                                      write_json, write_shard)

# Offsets from the seed base, so caption scenes, trajectory scenes and DAgger scenes never
# share a seed (DAgger's range lives in finetune.py).
CAPTION_SEED_OFFSET = 0
TRAJECTORY_SEED_OFFSET = 200_000
# Families of the episodes in a trajectory scene cycle through this plan: goto is the
# longest and the only visual family, so it gets half of the episodes.
FAMILY_PLAN: Tuple[str, ...] = ('goto', 'turn', 'goto', 'move', 'goto', 'stop')
# Between two captioned views the robot drives this many steps toward a random object.
_TOUR_LEG_STEPS = (3, 25)
# Share of tour steps with a random action instead of the expert's.
_TOUR_RANDOM = 0.3


@dataclass(frozen=True)
class GenDataConfig:
    """What `gen-data` renders; shards are a pure function of this and their index."""

    # scenes toured for captioned views, and views rendered per scene
    caption_scenes: int = 400
    views_per_scene: int = 20
    # scenes for expert trajectories, and episodes per scene (families cycle FAMILY_PLAN)
    trajectory_scenes: int = 600
    episodes_per_scene: int = 2
    # scenes per shard (a shard is the unit of parallelism and of resumption)
    scenes_per_shard: int = 20
    # per-step probability of starting a perturbation burst in expert trajectories
    noise: float = 0.05
    # probability that the robot overshoots when the expert first says stop
    overshoot: float = 0.5
    # first scene seed; must not reach into evaluation seeds
    seed_base: int = TRAINING_SEED_BASE
    # label goto with the expert's far search (`ExpertPolicy(far_search=True)`)
    expert_far_search: bool = False
    # the expert's turns a camera-only learner can copy (`ExpertRules.observable_turns`)
    expert_observable_turns: bool = False
    # the expert's short sweep (`ExpertRules.short_sweep`)
    expert_short_sweep: bool = False
    # far targets closed in on in arcs after the search (`ExpertRules.far_arcs`)
    expert_far_arcs: bool = False
    # those arcs only where the way is clear (`ExpertRules.clear_arcs`)
    expert_clear_arcs: bool = False

    def __post_init__(self):
        for name in ('caption_scenes', 'trajectory_scenes'):
            if getattr(self, name) < 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}')
        for name in ('views_per_scene', 'episodes_per_scene', 'scenes_per_shard'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        if not 0.0 <= self.noise < 1.0:
            raise ValueError(f'noise must be in [0, 1), got {self.noise}')
        if not 0.0 <= self.overshoot <= 1.0:
            raise ValueError(f'overshoot must be in [0, 1], got {self.overshoot}')
        if self.seed_base < TRAINING_SEED_BASE:
            raise ValueError(f'seed_base {self.seed_base} reaches into evaluation seeds '
                             f'(training seeds start at {TRAINING_SEED_BASE})')

    @property
    def expert_rules(self) -> ExpertRules:
        return expert_rules_of(self)

    def shard_count(self, kind: str) -> int:
        scenes = self.caption_scenes if kind == 'captions' else self.trajectory_scenes
        return -(-scenes // self.scenes_per_shard)

    def shard_scenes(self, kind: str, shard: int) -> range:
        """Scene indices (not seeds) covered by one shard."""
        scenes = self.caption_scenes if kind == 'captions' else self.trajectory_scenes
        start = shard * self.scenes_per_shard
        return range(start, min(start + self.scenes_per_shard, scenes))


def shard_name(index: int) -> str:
    return f'shard_{index:05d}'


# -- caption shards -----------------------------------------------------------------------

def _tour_views(world: World, scene: Scene, rng: random.Random, views: int):
    """Drive around a scene toward random objects and yield (image, pose) now and then."""
    world.reset(scene=scene)
    # Tours only need to wander; the search of a camera-only robot adds nothing here.
    expert = ExpertPolicy(observable_search=False)
    for _ in range(views):
        target = scene.objects[rng.randrange(len(scene.objects))]
        expert.reset('tour', task=GotoTask(target.color, target.shape), world=world)
        for _ in range(rng.randint(*_TOUR_LEG_STEPS)):
            action = expert.act(_PoseOnlyObservation(world))
            if action == 'stop' or rng.random() < _TOUR_RANDOM:
                action = rng.choice(ACTIONS[1:])
            world.step(action)
        yield world.render(), world.pose()


class _PoseOnlyObservation:
    """The odometry-only observation the expert needs to steer a tour."""

    def __init__(self, world: World):
        self.odom = world.odometry().as_tuple()


def caption_shard(config: GenDataConfig, shard: int, robot: RobotSpec):
    """Render one caption shard: arrays and metadata."""
    images, texts, negatives, kinds, seeds = [], [], [], [], []
    with World(robot=robot) as world:
        for scene_index in config.shard_scenes('captions', shard):
            seed = config.seed_base + CAPTION_SEED_OFFSET + scene_index
            scene = Scene.generate(seed, robot=robot)
            rng = random.Random(seed)
            for image, pose in _tour_views(world, scene, rng, config.views_per_scene):
                seen = captions.visible_objects(scene, pose)
                negative, kind = captions.hard_negative(seen, rng)
                images.append(image)
                texts.append(captions.caption(seen))
                negatives.append(negative)
                kinds.append(kind)
                seeds.append(seed)
    arrays = {'image': np.stack(images)}
    meta = {'kind': 'captions', 'records': len(texts), 'captions': texts,
            'negatives': negatives, 'negative_kinds': kinds, 'seeds': seeds,
            'source': 'simulator'}
    return arrays, meta


# -- trajectory shards --------------------------------------------------------------------

def trajectory_shard(config: GenDataConfig, shard: int, robot: RobotSpec):
    """Roll out the noisy expert for one trajectory shard: arrays and metadata."""
    buffer = FrameBuffer()
    with World(robot=robot) as world:
        for scene_index in config.shard_scenes('trajectories', shard):
            seed = config.seed_base + TRAJECTORY_SEED_OFFSET + scene_index
            scene = Scene.generate(seed, robot=robot)
            rng = random.Random(seed)
            for slot in range(config.episodes_per_scene):
                episode = scene_index * config.episodes_per_scene + slot
                family = FAMILY_PLAN[episode % len(FAMILY_PLAN)]
                instruction = training_instruction(scene, family, rng)
                spec = make_episode(0, seed, [instruction], robot=robot)
                record_episode(world, spec, buffer, episode,
                               NoisyExpertChooser(rng, config.noise, config.overshoot),
                               rules=config.expert_rules)
    arrays = buffer.arrays((robot.image_height, robot.image_width, 3))
    meta = {'kind': 'trajectories', 'records': len(buffer), 'episodes': buffer.episodes}
    return arrays, meta


_BUILDERS = {'captions': caption_shard, 'trajectories': trajectory_shard}


def _build_shard(out: str, kind: str, shard: int, config: dict) -> Tuple[str, int, int]:
    """Worker entry point: build and write one shard, return (kind, shard, records)."""
    cfg = GenDataConfig(**config)
    arrays, meta = _BUILDERS[kind](cfg, shard, RobotSpec())
    write_shard(Path(out) / kind / shard_name(shard), arrays, meta)
    return kind, shard, meta['records']


def made_with(config: dict) -> dict:
    """Return a manifest's gen-data settings; one added since the data were made: its default."""
    return {**asdict(GenDataConfig()), **config}


# The expert's goto rules (`ExpertRules`, off by default) as options of gen-data, finetune and
# train-all, each `--expert-` and the rule's name: what the rule does.
EXPERT_OPTIONS = {
    'far_search': 'its far search (targets beyond what the map finds count as unseen, and an '
                  'empty sweep is followed by driving ahead and sweeping again)',
    'observable_turns': 'turns that follow the last command, which the learner reads (the '
                        'sweep, and the turn back to a target out of view after the search), '
                        'not the measured yaw rate and ground truth',
    'short_sweep': 'a sweep of 60 degrees each way (not 95), done once both sides are nearly '
                   'reached',
    'far_arcs': 'arcs that close in on a target beyond 3 m after the search, instead of turns '
                'on the spot',
    'clear_arcs': 'those arcs only where the way ahead and to the side is clear of objects '
                  '(with --expert-far-arcs)',
}


def add_expert_arguments(parser: argparse.ArgumentParser, whose: str) -> None:
    """Add `--expert-RULE` for every rule of `EXPERT_OPTIONS`; `whose` begins each help."""
    for rule, what in EXPERT_OPTIONS.items():
        parser.add_argument('--expert-' + rule.replace('_', '-'), action='store_true',
                            help=f'{whose} {what}')


def expert_rules_of(options) -> ExpertRules:
    """Return the rules of parsed options or a `GenDataConfig` (`expert_RULE` attributes)."""
    return ExpertRules(**{rule.name: bool(getattr(options, 'expert_' + rule.name))
                          for rule in fields(ExpertRules)})


def expert_flags(options) -> List[str]:
    """Return the `--expert-RULE` options that give parsed options' rules to another stage."""
    return ['--expert-' + rule.name.replace('_', '-') for rule in fields(ExpertRules)
            if getattr(options, 'expert_' + rule.name)]


def check_expert_labels(roots, rules: ExpertRules) -> None:
    """
    Refuse DAgger labels from another expert than the one that labelled the data.

    `roots` are gen-data directories (others, without a gen-data manifest, are skipped);
    `rules` are the DAgger expert's (`finetune --expert-far-search`,
    `--expert-observable-turns`, `--expert-short-sweep`, `--expert-far-arcs`,
    `--expert-clear-arcs`).
    """
    for root in roots:
        path = Path(root) / MANIFEST
        config = read_json(path).get('config') if path.is_file() else None
        if not isinstance(config, dict) or 'trajectory_scenes' not in config:
            continue
        made = made_with(config)
        labelled = ExpertRules(**{rule.name: bool(made['expert_' + rule.name])
                                  for rule in fields(ExpertRules)})
        if labelled != rules:
            raise ValueError(f'{root} was labelled by the expert with {labelled} and DAgger '
                             f'would label with {rules}: give finetune the --expert-... '
                             'options exactly when gen-data had them')


def _exit_with_parent(parent_pid: int, period: float = 1.0) -> None:
    """
    Worker initializer: end this worker when the process that started it is gone.

    A pool's workers hold both ends of their task queue, so a parent killed outright
    (SIGKILL, an out-of-memory kill) never closes it and they would wait forever.
    """
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(period)
        os._exit(1)

    threading.Thread(target=watch, name='exit-with-parent', daemon=True).start()


def generate(out: Path, config: GenDataConfig, workers: int = 1,
             progress: bool = True) -> dict:
    """
    Render every unfinished shard, then write the manifest; return the manifest.

    A directory made with another configuration is refused rather than mixed.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        previous = read_json(manifest_path)
        if made_with(previous.get('config') or {}) != asdict(config):
            raise ValueError(f'{out} holds data made with another configuration '
                             f'({previous.get("config")}); use a new --out directory')
    else:
        write_json(manifest_path, {'version': DATASET_VERSION, 'config': asdict(config),
                                   'complete': False})
    jobs = [(kind, shard) for kind in _BUILDERS for shard in range(config.shard_count(kind))]
    todo = [(k, s) for k, s in jobs if not shard_finished(out / k / shard_name(s))]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc='gen-data shards',
               unit='shard', disable=not progress, dynamic_ncols=True)
    if workers > 1 and len(todo) > 1:
        # Spawned, not forked: each worker opens its own rendering context.
        context = multiprocessing.get_context('spawn')
        with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                 initializer=_exit_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(_build_shard, str(out), k, s, asdict(config))
                       for k, s in todo]
            for future in as_completed(futures):
                future.result()
                bar.update()
    else:
        for kind, shard in todo:
            _build_shard(str(out), kind, shard, asdict(config))
            bar.update()
    bar.close()
    manifest = _manifest(out, config)
    write_json(manifest_path, manifest)
    return manifest


def _manifest(out: Path, config: GenDataConfig) -> dict:
    counts: Dict[str, int] = {}
    shards: Dict[str, List[str]] = {}
    seeds: Dict[str, List[int]] = {}
    episodes = 0
    for kind in _BUILDERS:
        names = [shard_name(s) for s in range(config.shard_count(kind))]
        shards[kind] = names
        counts[kind] = 0
        for name in names:
            meta = read_json(out / kind / (name + '.json'))
            counts[kind] += meta['records']
            episodes += len(meta.get('episodes', []))
        offset = CAPTION_SEED_OFFSET if kind == 'captions' else TRAJECTORY_SEED_OFFSET
        scenes = config.caption_scenes if kind == 'captions' else config.trajectory_scenes
        first = config.seed_base + offset
        seeds[kind] = [first, first + scenes - 1] if scenes else []
    robot = RobotSpec()
    return {
        'version': DATASET_VERSION,
        'complete': True,
        'config': asdict(config),
        'image_shape': [robot.image_height, robot.image_width, 3],
        'counts': {'caption_views': counts['captions'],
                   'trajectory_frames': counts['trajectories'],
                   'trajectory_episodes': episodes},
        'seed_ranges': seeds,
        'shards': shards,
    }


# -- command line -------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = GenDataConfig()
    parser.add_argument('--out', required=True, help='dataset directory (created; resumed '
                                                     'when it exists)')
    parser.add_argument('--caption-scenes', type=int, default=defaults.caption_scenes,
                        help=f'scenes toured for captioned views '
                             f'(default: {defaults.caption_scenes})')
    parser.add_argument('--views-per-scene', type=int, default=defaults.views_per_scene,
                        help=f'captioned views per scene (default: {defaults.views_per_scene})')
    parser.add_argument('--trajectory-scenes', type=int, default=defaults.trajectory_scenes,
                        help=f'scenes for expert trajectories '
                             f'(default: {defaults.trajectory_scenes})')
    parser.add_argument('--episodes-per-scene', type=int, default=defaults.episodes_per_scene,
                        help=f'expert episodes per trajectory scene '
                             f'(default: {defaults.episodes_per_scene})')
    parser.add_argument('--scenes-per-shard', type=int, default=defaults.scenes_per_shard,
                        help=f'scenes per shard (default: {defaults.scenes_per_shard})')
    parser.add_argument('--noise', type=float, default=defaults.noise,
                        help=f'per-step probability of a random-action burst in expert '
                             f'trajectories (default: {defaults.noise})')
    parser.add_argument('--overshoot', type=float, default=defaults.overshoot,
                        help=f'probability of driving on past the first stop of the expert '
                             f'(default: {defaults.overshoot})')
    parser.add_argument('--seed-base', type=int, default=defaults.seed_base,
                        help=f'first scene seed, >= {TRAINING_SEED_BASE} '
                             f'(default: {defaults.seed_base})')
    add_expert_arguments(parser, 'the expert labels goto with')
    parser.add_argument('--workers', type=int, default=1, help='parallel processes')
    parser.add_argument('--visual-genome', default=None, metavar='DIR',
                        help='instead of rendering, convert Visual Genome region descriptions '
                             '(DIR/region_descriptions.json and DIR/images/) into caption '
                             'shards')
    parser.add_argument('--max-regions', type=int, default=None,
                        help='with --visual-genome: convert at most this many regions')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')


def run(args: argparse.Namespace) -> int:
    try:
        if args.visual_genome:
            from vlit_ros.training.visual_genome import convert_visual_genome
            manifest = convert_visual_genome(Path(args.visual_genome), Path(args.out),
                                             max_regions=args.max_regions,
                                             progress=not args.quiet)
        else:
            config = GenDataConfig(
                caption_scenes=args.caption_scenes, views_per_scene=args.views_per_scene,
                trajectory_scenes=args.trajectory_scenes,
                episodes_per_scene=args.episodes_per_scene,
                scenes_per_shard=args.scenes_per_shard, noise=args.noise,
                overshoot=args.overshoot,
                seed_base=args.seed_base,
                **{'expert_' + rule.name: getattr(args, 'expert_' + rule.name)
                   for rule in fields(ExpertRules)})
            manifest = generate(Path(args.out), config, workers=max(1, args.workers),
                                progress=not args.quiet)
    except ValueError as exc:
        print(f'vlit-ros gen-data: error: {exc}', file=sys.stderr)
        return 2
    counts = ', '.join(f'{k.replace("_", " ")}: {v}' for k, v in manifest['counts'].items())
    print(f'wrote {args.out} ({counts})')
    return 0
