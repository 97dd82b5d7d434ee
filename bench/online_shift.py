"""
Online learning in the shifted world, start to finish (the demonstration of issue 6).

    python bench/online_shift.py --out runs/online_shift              # 45 min of learning
    python bench/online_shift.py --out runs/look --minutes 3 --eval-episodes 16   # a look
    python bench/online_shift.py --out runs/x --trainer-param learning_rate=3e-4   # settings

1. *Before*: evaluates the starting checkpoint on `goto` in the shifted world (camera yawed
   50 degrees, left wheel 55% weaker: `scene.SHIFT_DESCRIPTION`) and in the nominal one,
   in-process with the rules of `vlit-ros eval --families goto --seed EVAL_SEED`.
2. *Learning*: brings up the graph of `vlit-ros run sim:=mujoco shifted:=true learn:=true
   families:=goto`: sim, task, instruction_follower and trainer as separate processes over
   ROS 2, on simulated time at `--speed` times real time. The task node plays goto episodes
   from scene seed LEARN_SEED on and publishes the reward of every step; the follower samples
   its actions and publishes its experience; the trainer learns with PPO and sends new
   weights, which the follower checks and swaps in. After `--minutes` of wall time the graph
   gets SIGINT and the trainer saves its last policy.
3. *After*: evaluates the trainer's checkpoint the same way, on the same scenes.
4. Writes into `--out`: `results.json` and `results.md` (the before/after table),
   `learning_curves.png` (the trainer's: episode reward, success rate, KL and policy version
   over wall time), `learner/` (the learned checkpoint) and `logs/` (one log per node).

The learner's scenes (seeds from LEARN_SEED) and the evaluation scenes (seeds EVAL_SEED to
EVAL_SEED + episodes - 1) do not overlap. Give the machine to this script alone: the
follower has to keep up with the simulator, and a loaded CPU makes its decisions late.
"""

import argparse
import json
import math
import os
from pathlib import Path
import re
import shutil
import sys
import time

from tqdm import tqdm

from vlit_ros import bringup
from vlit_ros.evaluation import evaluate
from vlit_ros.nodes.trainer_node import PARAMETERS as TRAINER_PARAMETERS, TrainerSettings
from vlit_ros.policies import load_policy
from vlit_ros.run import GraphRunner
from vlit_ros.sim.scene import RobotSpec

EVAL_SEED = 1
LEARN_SEED = 3_000_000
DEFAULT_MINUTES = 45.0
DEFAULT_EVAL_EPISODES = 100
# Simulated seconds per wall second while learning: what the follower keeps up with on two
# cores beside the simulator and the trainer (`vlit-ros demo` plays at 4).
DEFAULT_SPEED = 3.0
# Sampling temperature of the follower while learning: below 1, the sampled episodes stay close
# to the greedy policy that is evaluated (at 1 it succeeds far less often than greedy).
DEFAULT_TEMPERATURE = 0.5
# The bar: shifted goto to at least 85%, nominal goto down by at most 5 points.
SHIFTED_TARGET = 0.85
NOMINAL_DROP = 0.05
EPISODE_LINE = re.compile(r'episode (\d+)/\d+ \[(\w+)\] .*: (SUCCESS|FAIL) \(')
ROLLING = 50


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', required=True, help='output directory (created)')
    parser.add_argument('--checkpoint', default='',
                        help='starting checkpoint (default: the shipped one)')
    parser.add_argument('--minutes', type=float, default=DEFAULT_MINUTES,
                        help=f'wall minutes of learning (default: {DEFAULT_MINUTES:g})')
    parser.add_argument('--speed', type=float, default=DEFAULT_SPEED,
                        help=f'simulated seconds per wall second (default: {DEFAULT_SPEED:g})')
    parser.add_argument('--eval-episodes', type=int, default=DEFAULT_EVAL_EPISODES,
                        help=f'goto episodes per world and evaluation '
                             f'(default: {DEFAULT_EVAL_EPISODES})')
    parser.add_argument('--temperature', type=float, default=DEFAULT_TEMPERATURE,
                        help='softmax temperature of the sampled actions while learning '
                             f'(default: {DEFAULT_TEMPERATURE:g})')
    parser.add_argument('--train-fusion', action='store_true',
                        help="the trainer also updates the fusion layers (trainer's "
                             'train_fusion)')
    parser.add_argument('--trainer-param', action='append', default=[], metavar='NAME=VALUE',
                        help='a learning setting of the trainer node (repeatable), e.g. '
                             'learning_rate=3e-4 target_kl=0.1: '
                             + ', '.join(sorted(TUNABLE)))
    args = parser.parse_args(argv)
    if min(args.minutes, args.speed, args.temperature) <= 0 or args.eval_episodes < 1:
        parser.error('--minutes, --speed and --temperature must be positive, '
                     '--eval-episodes at least 1')
    try:
        args.trainer_params = trainer_settings(args.trainer_param)
    except ValueError as exc:
        parser.error(str(exc))
    return args


# Trainer parameters `--trainer-param` may set: the learning settings. What the script
# decides itself (the checkpoint, the output directory, resuming, the fusion layers through
# --train-fusion) is not among them.
TUNABLE = {spec.name: spec for spec in TRAINER_PARAMETERS
           if spec.name not in ('checkpoint', 'output_dir', 'resume', 'train_fusion', 'device')
           and isinstance(spec.default, (int, float)) and not isinstance(spec.default, bool)}


def trainer_settings(assignments) -> dict:
    """Parse NAME=VALUE trainer settings, typed and range-checked as the node would."""
    settings = {}
    for assignment in assignments:
        name, sep, text = assignment.partition('=')
        spec = TUNABLE.get(name.strip())
        if not sep or spec is None:
            raise ValueError(f'--trainer-param {assignment!r}: expected NAME=VALUE with NAME '
                             f'one of {", ".join(sorted(TUNABLE))}')
        kind = type(spec.default)
        try:
            value = float(text) if kind is float else int(text, 10)
        except ValueError:
            raise ValueError(f'--trainer-param {name}: {text!r} is not '
                             f'{"a number" if kind is float else "an integer"}') from None
        if spec.minimum is not None and not spec.minimum <= value <= spec.maximum:
            raise ValueError(f'--trainer-param {name}: {value} is outside '
                             f'[{spec.minimum:g}, {spec.maximum:g}]')
        if math.isinf(value):
            raise ValueError(f'--trainer-param {name}: {value} is not finite')
        settings[spec.name] = value
    # Together, as the node checks them at start-up (max_buffered above rollout_steps, ...).
    defaults = {spec.name: spec.default for spec in TRAINER_PARAMETERS}
    try:
        TrainerSettings(**dict(defaults, **settings)).learner_config()
    except ValueError as exc:
        raise ValueError(f'--trainer-param: {exc}') from None
    return settings


def goto_success(checkpoint: str, shifted: bool, episodes: int) -> dict:
    """Goto success of a checkpoint in one world, on scene seeds EVAL_SEED onwards."""
    policy = load_policy('model', checkpoint=checkpoint or None, seed=EVAL_SEED)
    robot = RobotSpec().shifted() if shifted else None
    summary = evaluate(policy, episodes, EVAL_SEED, robot=robot, families=('goto',),
                       batch=8)
    row = summary['per_family']['goto']
    return {'episodes': row['episodes'], 'successes': row['successes'],
            'success_rate': row['success_rate']}


def evaluate_both(checkpoint: str, episodes: int, label: str) -> dict:
    results = {}
    for world in ('shifted', 'nominal'):
        print(f'== {label}: goto in the {world} world, {episodes} episodes from seed '
              f'{EVAL_SEED}', flush=True)
        results[world] = goto_success(checkpoint, world == 'shifted', episodes)
        print(f'   {results[world]["success_rate"]:.1%}', flush=True)
    return results


def learning_graph(args, learner_dir: Path) -> bringup.Graph:
    config = bringup.BringupConfig(
        sim='mujoco', learn=True, shifted=True, families=('goto',), seed=LEARN_SEED,
        episodes=100_000, real_time_factor=args.speed, checkpoint=args.checkpoint)
    # A trainer that trains the fusion layers needs each transition's image and instruction.
    graph = bringup.describe(config).with_parameters(
        'instruction_follower', temperature=args.temperature,
        experience_images=args.train_fusion)
    return graph.with_parameters('trainer', output_dir=str(learner_dir), resume=False,
                                 train_fusion=args.train_fusion, **args.trainer_params)


def episode_outcomes(task_log: Path) -> list:
    """Successes (True/False) of the episodes the task node has logged so far."""
    try:
        text = task_log.read_text(errors='replace')
    except OSError:
        return []
    return [m.group(3) == 'SUCCESS' for m in EPISODE_LINE.finditer(text)]


def learn(args, out: Path) -> dict:
    """Run the learning graph for `args.minutes`; return what the task node logged."""
    learner_dir = out / 'learner'
    logs = out / 'logs'
    for path in (learner_dir, logs):
        shutil.rmtree(path, ignore_errors=True)
    runner = GraphRunner(learning_graph(args, learner_dir), [bringup.default_params_file()],
                         log_dir=logs, echo=False)
    seconds = args.minutes * 60.0
    print(f'== learning: {", ".join(n.name for n in runner.graph.nodes)} for '
          f'{args.minutes:g} min at {args.speed:g}x real time (logs in {logs})', flush=True)
    started = time.monotonic()
    runner.start()
    ended = {}
    try:
        with tqdm(total=round(seconds), unit='s', desc='learning', dynamic_ncols=True,
                  mininterval=10.0) as bar:
            while time.monotonic() - started < seconds:
                ended = runner.exited()
                if ended:
                    break
                time.sleep(2.0)
                outcomes = episode_outcomes(logs / 'task.log')
                recent = outcomes[-ROLLING:]
                bar.set_postfix(episodes=len(outcomes), refresh=False, success=(
                    f'{sum(recent) / len(recent):.0%}' if recent else '-'))
                bar.update(min(round(time.monotonic() - started), bar.total) - bar.n)
    finally:
        codes = runner.shutdown()
    wall = time.monotonic() - started
    if ended:
        raise RuntimeError(f'the learning graph ended early ({ended}); see {logs}')
    if any(codes.values()):
        raise RuntimeError(f'a node failed on shutdown ({codes}); see {logs}')
    if not (learner_dir / 'model.safetensors').is_file():
        raise RuntimeError(f'the trainer saved no checkpoint in {learner_dir}; see {logs}')
    outcomes = episode_outcomes(logs / 'task.log')
    trainer_log = (logs / 'trainer.log').read_text(errors='replace')
    return {'wall_minutes': round(wall / 60.0, 1), 'episodes': len(outcomes),
            'success_first_50': _rate(outcomes[:ROLLING]),
            'success_last_50': _rate(outcomes[-ROLLING:]),
            'updates': trainer_log.count('updated: policy'),
            'rollbacks': trainer_log.count('rolled_back: policy'),
            'speed': args.speed, 'temperature': args.temperature, 'learn_seed': LEARN_SEED}


def _rate(outcomes):
    return round(sum(outcomes) / len(outcomes), 3) if outcomes else None


def table(before: dict, after: dict) -> str:
    rows = ['| goto | before | after | change |', '| --- | --- | --- | --- |']
    for world in ('shifted', 'nominal'):
        b, a = before[world]['success_rate'], after[world]['success_rate']
        rows.append(f'| {world} world | {b:.1%} | {a:.1%} | {100 * (a - b):+.1f} points |')
    return '\n'.join(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault('MUJOCO_GL', 'egl')
    started = time.monotonic()
    try:
        before = evaluate_both(args.checkpoint, args.eval_episodes, 'before')
        learning = learn(args, out)
        after = evaluate_both(str(out / 'learner'), args.eval_episodes, 'after')
    except (RuntimeError, ValueError, OSError, bringup.BringupError) as exc:
        print(f'online_shift: error: {exc}', file=sys.stderr)
        return 1
    shifted_ok = after['shifted']['success_rate'] >= SHIFTED_TARGET
    nominal_ok = after['nominal']['success_rate'] >= \
        before['nominal']['success_rate'] - NOMINAL_DROP
    results = {
        'command': 'python bench/online_shift.py ' + ' '.join(sys.argv[1:] if argv is None
                                                              else argv),
        'checkpoint': args.checkpoint or 'shipped', 'eval_seed': EVAL_SEED,
        'trainer_settings': dict(args.trainer_params, train_fusion=args.train_fusion),
        'before': before, 'after': after, 'learning': learning,
        'targets': {'shifted_at_least': SHIFTED_TARGET, 'nominal_drop_at_most': NOMINAL_DROP,
                    'shifted_met': shifted_ok, 'nominal_met': nominal_ok},
        'total_minutes': round((time.monotonic() - started) / 60.0, 1)}
    (out / 'results.json').write_text(json.dumps(results, indent=2) + '\n')
    markdown = table(before, after)
    (out / 'results.md').write_text(markdown + '\n')
    curves = out / 'learner' / 'learning_curves.png'
    if curves.is_file():
        shutil.copy(curves, out / 'learning_curves.png')
    print(markdown)
    print(f'learning: {learning["episodes"]} episodes, {learning["updates"]} updates in '
          f'{learning["wall_minutes"]} min; success over the first / last {ROLLING} '
          f'episodes {learning["success_first_50"]} / {learning["success_last_50"]}')
    print(f'targets: shifted >= {SHIFTED_TARGET:.0%}: {"met" if shifted_ok else "NOT met"}; '
          f'nominal drop <= {NOMINAL_DROP * 100:g} points: '
          f'{"met" if nominal_ok else "NOT met"}')
    print(f'wrote {out}/results.json, results.md, learning_curves.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
