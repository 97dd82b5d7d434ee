"""
`vlit-ros eval`: run a policy on simulated episodes in-process (no ROS) and report success.

Episode i uses scene seed S + i and, with `--instructions`, line i mod L of the file, so two
policies evaluated with the same file, episodes and seed face identical episodes.
"""

import argparse
import json
import math
from pathlib import Path
import sys
import time
from typing import Dict, List, Optional, Sequence

import cv2
from tqdm import tqdm

from vlit_ros.policies import load_policy
from vlit_ros.sim.episode import EpisodeResult, make_episode, run_episode, \
    run_episodes_batched, TRAINING_SEED_BASE
from vlit_ros.sim.scene import RobotSpec, SHIFT_DESCRIPTION
from vlit_ros.sim.tasks import FAMILIES, GotoTask, load_instructions, parse_families
from vlit_ros.sim.video import compose_frame, EpisodeVideo
from vlit_ros.sim.world import World


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--policy', default='model',
                        help='model | expert | random | PATH.py:Class (default: model)')
    parser.add_argument('--checkpoint', default=None,
                        help='checkpoint directory for --policy model '
                             '(default: the shipped checkpoint)')
    parser.add_argument('--episodes', type=int, default=100,
                        help='number of episodes; without --instructions they cycle through '
                             'the families goto, turn, move, stop (default: 100)')
    parser.add_argument('--seed', type=int, default=0,
                        help='episode i uses scene seed SEED + i (default: 0)')
    parser.add_argument('--instructions', default=None, metavar='FILE.jsonl',
                        help='instruction file: episode i uses line i mod L')
    parser.add_argument('--families', default=','.join(FAMILIES),
                        help='comma-separated families for generated instructions '
                             f'(default: {",".join(FAMILIES)})')
    parser.add_argument('--held-out-phrasings', action='store_true',
                        help='draw goto phrasings from the held-out set never used in training')
    parser.add_argument('--world', choices=('nominal', 'shifted'), default='nominal',
                        help='shifted: ' + SHIFT_DESCRIPTION.replace('%', '%%'))
    parser.add_argument('--device', default='cpu', help='torch device for --policy model')
    parser.add_argument('--temperature', type=float, default=None, metavar='T',
                        help='--policy model samples its actions from softmax(logits / T), '
                             'seeded by --sample-seed, as the follower does while learning '
                             '(default: greedy)')
    parser.add_argument('--sample-seed', type=int, default=0,
                        help='seed of the action sampling with --temperature (default: 0)')
    parser.add_argument('--zoom-map', action='store_true',
                        help='--policy model: merge the grounding map with a 2x zoom of the '
                             'image centre (twice the vision work; not what the checkpoint '
                             'was trained with; docs/TRAINING.md, twenty-sixth session)')
    parser.add_argument('--batch', type=int, default=16,
                        help='episodes run in lockstep with one batched forward pass a step, '
                             'for --policy model (default: 16; 1: one at a time)')
    parser.add_argument('--json', default=None, metavar='OUT.json', help='write results here')
    parser.add_argument('--video', default=None, metavar='DIR',
                        help='write one MP4 per episode into DIR')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')


def summarize(results: Sequence[EpisodeResult]) -> Dict:
    """Success rate overall and per family, and mean time to success."""
    per_family = {}
    for family in FAMILIES:
        rows = [r for r in results if r.family == family]
        if not rows:
            continue
        wins = [r for r in rows if r.success]
        per_family[family] = {
            'episodes': len(rows),
            'successes': len(wins),
            'success_rate': len(wins) / len(rows),
            'mean_time_to_success_s': (sum(r.duration for r in wins) / len(wins)
                                       if wins else None),
        }
    total = len(results)
    return {
        'episodes_total': total,
        'success_rate': sum(r.success for r in results) / total if total else 0.0,
        'per_family': per_family,
    }


def format_table(summary: Dict, title: str = '') -> str:
    """Render a summary as a plain-text table."""
    lines = []
    if title:
        lines.append(title)
    lines.append(f'{"family":<8} {"episodes":>8} {"success":>9} {"mean time":>10}')
    lines.append('-' * 38)
    for family, row in summary['per_family'].items():
        mean = row['mean_time_to_success_s']
        mean_text = f'{mean:8.1f} s' if mean is not None else '       - '
        lines.append(f'{family:<8} {row["episodes"]:>8} {row["success_rate"]:>8.1%} '
                     f'{mean_text:>10}')
    lines.append('-' * 38)
    lines.append(f'{"all":<8} {summary["episodes_total"]:>8} {summary["success_rate"]:>8.1%}')
    return '\n'.join(lines)


def evaluate(policy, episodes: int, seed: int, instructions=None,
             robot: Optional[RobotSpec] = None, families: Sequence[str] = FAMILIES,
             held_out: bool = False, video_dir: Optional[Path] = None,
             progress: bool = True, batch: int = 1) -> Dict:
    """
    Run `episodes` episodes and return the summary with per-episode records.

    With `batch` > 1 and a policy that acts on batches (the model), `batch` episodes run in
    lockstep in as many worlds, one forward pass a step for all of them; they are judged the
    same way, only faster. Videos are recorded one episode at a time.
    """
    if episodes < 1:
        raise ValueError(f'--episodes must be at least 1, got {episodes}')
    if batch < 1:
        raise ValueError(f'--batch must be at least 1, got {batch}')
    if seed + episodes > TRAINING_SEED_BASE:
        print(f'warning: scene seeds reach {seed + episodes - 1}, into the training range '
              f'(>= {TRAINING_SEED_BASE}); results may be optimistic', file=sys.stderr)
    if video_dir is not None or not _batch_capable(policy):
        batch = 1

    def spec(index):
        return make_episode(index, seed, instructions, robot=robot, families=families,
                            held_out=held_out)

    results: List[EpisodeResult] = []
    worlds = [World(robot=robot) for _ in range(min(batch, episodes))]
    started = time.perf_counter()
    bar = tqdm(total=episodes, desc='episodes', unit='ep', disable=not progress,
               dynamic_ncols=True)
    try:
        for start in range(0, episodes, batch):
            indices = range(start, min(start + batch, episodes))
            if batch > 1:
                results += run_episodes_batched(worlds, policy, [spec(i) for i in indices])
            else:
                results.append(_run_one(worlds[0], policy, spec(start), video_dir))
            bar.update(len(indices))
            bar.set_postfix(success=f'{sum(r.success for r in results) / len(results):.0%}',
                            refresh=False)
    finally:
        bar.close()
        for world in worlds:
            world.close()
    wall = time.perf_counter() - started
    sim_seconds = sum(r.duration for r in results)
    summary = summarize(results)
    summary.update({
        'seed': seed,
        'wall_time_s': round(wall, 2),
        'sim_time_s': round(sim_seconds, 2),
        'real_time_factor': round(sim_seconds / wall, 2) if wall > 0 else math.inf,
        'episodes': [r.to_dict() for r in results],
    })
    return summary


def _batch_capable(policy) -> bool:
    return not getattr(policy, 'privileged', False) and \
        callable(getattr(policy, 'reset_batch', None)) and \
        callable(getattr(policy, 'act_batch', None))


def _run_one(world: World, policy, spec, video_dir: Optional[Path]) -> EpisodeResult:
    video, on_step = (None, None) if video_dir is None else _video_recorder(video_dir, spec)
    result = run_episode(world, policy, spec, on_step=on_step)
    if video is not None:
        _finish_video(video, result)
    return result


def _video_recorder(video_dir: Path, spec):
    video = EpisodeVideo(Path(video_dir) / f'episode_{spec.index:04d}_{spec.family}.mp4')
    target = None
    task = spec.instruction.task
    if isinstance(task, GotoTask):
        obj = task.target(spec.scene)
        target = (obj.x, obj.y)
    trail = []

    def on_step(world, obs, action, reward):
        pose = world.pose()
        trail.append(pose[:2])
        video.add(compose_frame(obs.image, world.render_top(), spec.instruction.text, action,
                                obs.t, target_xy=target, trail=list(trail),
                                arena_size=spec.scene.arena_size))
    return video, on_step


def _finish_video(video: EpisodeVideo, result: EpisodeResult) -> None:
    """Hold the verdict on screen for a second and write the file."""
    status = 'SUCCESS' if result.success else f'FAIL ({result.reason})'
    frame = video.frames[-1].copy()
    color = (90, 230, 90) if result.success else (240, 90, 90)
    cv2.putText(frame, status, (frame.shape[1] - 250, 37), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
                color, 2, cv2.LINE_AA)
    video.frames.extend([frame] * 10)
    video.path = video.path.with_name(
        f'{video.path.stem}_{"ok" if result.success else "fail"}.mp4')
    video.write()


def run(args: argparse.Namespace) -> int:
    try:
        instructions = load_instructions(args.instructions) if args.instructions else None
        families = parse_families(args.families)
        policy = load_policy(args.policy, checkpoint=args.checkpoint, device=args.device,
                             seed=args.seed, temperature=args.temperature,
                             sample_seed=args.sample_seed, zoom_map=args.zoom_map)
    except ValueError as exc:
        print(f'vlit-ros eval: error: {exc}', file=sys.stderr)
        return 2
    robot = RobotSpec().shifted() if args.world == 'shifted' else None
    try:
        summary = evaluate(policy, args.episodes, args.seed, instructions, robot=robot,
                           families=families, held_out=args.held_out_phrasings,
                           video_dir=Path(args.video) if args.video else None,
                           progress=not args.quiet, batch=args.batch)
    except ValueError as exc:
        print(f'vlit-ros eval: error: {exc}', file=sys.stderr)
        return 2
    summary.update({'policy': args.policy, 'checkpoint': args.checkpoint,
                    'instructions': args.instructions, 'world': args.world,
                    'temperature': args.temperature, 'zoom_map': args.zoom_map,
                    'sample_seed': None if args.temperature is None else args.sample_seed})
    title = (f'policy={args.policy} episodes={args.episodes} seed={args.seed} '
             f'world={args.world}')
    if args.temperature is not None:
        title += f' temperature={args.temperature:g} sample-seed={args.sample_seed}'
    if args.zoom_map:
        title += ' zoom-map'
    print(format_table(summary, title))
    print(f'wall {summary["wall_time_s"]:.1f} s, simulated {summary["sim_time_s"]:.1f} s, '
          f'real-time factor {summary["real_time_factor"]:.1f}x')
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2) + '\n')
        print(f'wrote {path}')
    if args.video:
        print(f'videos in {args.video}')
    return 0
