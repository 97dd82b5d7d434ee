"""
`vlit-ros train-all`: gen-data, pretrain and finetune (with DAgger) in one command.

    vlit-ros train-all --out runs/default --install vlit_ros/checkpoints/default

reproduces the shipped default checkpoint from scratch. Each stage is the stand-alone
command with the defaults shown by `--help`, so a stage can also be rerun on its own; every
stage resumes, so rerunning an interrupted train-all continues where it stopped. `--install`
copies the inference checkpoint (config.json, model.safetensors), the report and a training
card into a directory. After DAgger, a `polish` stage clones the expert once more from the
DAgger result, on the expert data plus every DAgger round at a lower learning rate
(`--polish-steps`, 0 to skip). Ablations: `--no-pretrain`, `--dagger-rounds 0`,
`--text-encoder minilm` (frozen MiniLM instead of the built-in text encoder).
"""

import argparse
import gc
import json
from pathlib import Path
import shutil
import sys
import time
from typing import Any, List, Tuple

from vlit_ros.core.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from vlit_ros.training import datagen, finetune, pretrain
from vlit_ros.training.datasets import GROUNDING_LABELS
from vlit_ros.training.presets import add_conv_stem_argument, TEXT_ENCODERS
from vlit_ros.training.shards import MANIFEST, read_json, write_json

# Behaviour-cloning steps after DAgger (the `polish` stage) and where its data is pooled.
POLISH_STEPS = 3000
# DAgger rounds of train-all: more than `vlit-ros finetune`'s default (3). Rounds 4-6 roll
# out the learner almost alone (expert probability 0.04, 0.02, 0.01), on states only its own
# mistakes reach; with them goto rose from 49.0% to 57.0% (200 episodes, seeds 101-300).
DAGGER_ROUNDS = 6
POOLED = 'dagger_data'
# Pretraining steps of train-all: fewer than `vlit-ros pretrain`'s default, so that the
# whole run fits the one-hour budget on a 2-core machine with the polish stage.
PRETRAIN_STEPS = 450


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', required=True,
                        help='run directory: data/, pretrain/, finetune/, train_all.json')
    parser.add_argument('--data', default=None, metavar='DIR',
                        help='gen-data directory (default: OUT/data; reused when complete)')
    parser.add_argument('--workers', type=int, default=2, help='gen-data processes (default: 2)')
    parser.add_argument('--trajectory-scenes', type=int, default=None, metavar='N',
                        help='gen-data --trajectory-scenes: scenes of expert trajectories '
                             "(default: gen-data's)")
    parser.add_argument('--seed', type=int, default=0, help='training seed (default: 0)')
    parser.add_argument('--threads', type=int, default=0,
                        help='torch CPU threads (default: 0, torch decides)')
    parser.add_argument('--text-encoder', choices=TEXT_ENCODERS, default='builtin',
                        help='text encoder (default: builtin, the small Transformer trained '
                             'with the rest, which the shipped checkpoint uses; minilm: '
                             'frozen all-MiniLM-L6-v2)')
    parser.add_argument('--no-pretrain', action='store_true',
                        help='ablation: fine-tune from a randomly initialised model')
    parser.add_argument('--grounding-labels', choices=GROUNDING_LABELS, default='coverage',
                        help='labels of the grounding map in fine-tuning and polish '
                             '(vlit-ros finetune --grounding-labels; default: coverage)')
    for name in ('patch-attributes', 'text-attributes'):
        default = getattr(finetune.LossWeights(), name.replace('-', '_'))
        parser.add_argument(f'--{name}-weight', type=float, default=default,
                            help=f'fine-tuning and polish: vlit-ros finetune --{name}-weight '
                                 f'(default: {default:g}, as the shipped checkpoint was '
                                 'trained; 0 turns the loss off)')
    parser.add_argument('--no-fusion-state', action='store_true',
                        help="the executor skips the fusion Transformer's state (vlit-ros "
                             'finetune --no-fusion-state)')
    add_conv_stem_argument(parser)
    parser.add_argument('--paraphrase', type=float, default=finetune.PARAPHRASE_SHARE,
                        metavar='P',
                        help='fine-tuning and polish: vlit-ros finetune --paraphrase, the share '
                             'of goto frames whose instruction is rephrased (default: '
                             f'{finetune.PARAPHRASE_SHARE:g}, as the shipped checkpoint was '
                             'trained; 0: none)')
    parser.add_argument('--map-memory', action='store_true',
                        help='the executor also reads where its own grounding map was '
                             'strongest on earlier frames (vlit-ros finetune --map-memory)')
    parser.add_argument('--map-peak', action='store_true',
                        help="the executor also reads the grounding map's peak (vlit-ros "
                             'finetune --map-peak)')
    parser.add_argument('--zoom-map', action='store_true',
                        help='the grounding map is merged with that of a 2x zoom of the image '
                             'centre (vlit-ros finetune --zoom-map)')
    parser.add_argument('--pretrain-steps', type=int, default=PRETRAIN_STEPS,
                        help=f'pretraining steps (default: {PRETRAIN_STEPS})')
    parser.add_argument('--finetune-steps', type=int, default=None,
                        help='behaviour-cloning steps (default: as vlit-ros finetune)')
    parser.add_argument('--dagger-rounds', type=int, default=DAGGER_ROUNDS,
                        help=f'DAgger rounds (default: {DAGGER_ROUNDS}; 0: none)')
    parser.add_argument('--dagger-temperature', type=float, default=0.0,
                        help='DAgger rollouts sample the learner at this temperature '
                             '(vlit-ros finetune --dagger-temperature; default: 0, greedy)')
    datagen.add_expert_arguments(parser, "gen-data's and DAgger's expert label goto with")
    parser.add_argument('--polish-steps', type=int, default=POLISH_STEPS,
                        help='after DAgger: behaviour cloning from its result on the expert '
                             'data plus every DAgger round, at a lower learning rate '
                             f'(default: {POLISH_STEPS}; 0: none)')
    parser.add_argument('--install', default=None, metavar='DIR',
                        help='copy the final checkpoint, report and a training card here')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')


def _stage_args(module, argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def data_dir(args: argparse.Namespace) -> Path:
    """Return the run's data directory: `--data`, or `data/` in the output directory."""
    return Path(args.data) if args.data else Path(args.out) / 'data'


def plan_stages(args: argparse.Namespace) -> List[Tuple[str, Any, List[str]]]:
    """Return the stages of a run: (name, module, its command-line arguments), in order."""
    out = Path(args.out)
    data = data_dir(args)
    common = ['--seed', str(args.seed), '--threads', str(args.threads)] + \
        (['--quiet'] if args.quiet else [])
    tuning = ['--grounding-labels', args.grounding_labels,
              '--patch-attributes-weight', str(args.patch_attributes_weight),
              '--text-attributes-weight', str(args.text_attributes_weight),
              '--paraphrase', str(args.paraphrase)]
    expert_options = datagen.expert_flags(args)
    stages = [('gen-data', datagen, ['--out', str(data), '--workers', str(args.workers)] +
               ([] if args.trajectory_scenes is None else
                ['--trajectory-scenes', str(args.trajectory_scenes)]) +
               expert_options + (['--quiet'] if args.quiet else []))]
    finetune_argv = ['--data', str(data), '--out', str(out / 'finetune'),
                     '--text-encoder', args.text_encoder] + common + tuning + \
        (['--no-fusion-state'] if args.no_fusion_state else []) + \
        (['--map-memory'] if args.map_memory else []) + \
        (['--map-peak'] if args.map_peak else []) + \
        (['--zoom-map'] if args.zoom_map else [])
    if not args.no_pretrain:
        pretrain_argv = ['--data', str(data), '--out', str(out / 'pretrain'),
                         '--text-encoder', args.text_encoder] + common
        pretrain_argv += ['--steps', str(args.pretrain_steps)]
        if args.conv_stem is not None:
            pretrain_argv += ['--conv-stem', str(args.conv_stem)]
        stages.append(('pretrain', pretrain, pretrain_argv))
        finetune_argv += ['--init', str(out / 'pretrain')]
    elif args.conv_stem is not None:
        finetune_argv += ['--conv-stem', str(args.conv_stem)]
    if args.finetune_steps is not None:
        finetune_argv += ['--steps', str(args.finetune_steps)]
    finetune_argv += ['--dagger-rounds', str(args.dagger_rounds)]
    if args.dagger_temperature:
        finetune_argv += ['--dagger-temperature', str(args.dagger_temperature)]
    finetune_argv += expert_options
    stages.append(('finetune', finetune, finetune_argv))
    polish = args.polish_steps > 0 and args.dagger_rounds != 0
    if polish:
        # The polish stage ends with the evaluation; the finetune stage's would be wasted.
        finetune_argv += ['--eval-episodes', '0']
        stages.append(('polish', finetune, [
            '--init', str(out / 'finetune'), '--data', str(data), '--data', str(out / POOLED),
            '--out', str(out / 'polish'), '--steps', str(args.polish_steps), '--lr', '3e-4',
            '--warmup', '100', '--dagger-rounds', '0'] + common + tuning))
    return stages


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = data_dir(args)
    stages = plan_stages(args)
    polish = any(name == 'polish' for name, _, _ in stages)
    times = {}
    started = time.perf_counter()
    for name, module, argv in stages:
        print(f'== {name}: vlit-ros {"finetune" if name == "polish" else name} '
              f'{" ".join(argv)}', flush=True)
        stage_started = time.perf_counter()
        if name == 'polish':
            pool_dagger_data(out / 'finetune', data, out / POOLED)
        code = module.run(_stage_args(module, argv))
        # A stage's dataset sits in reference cycles (closures, the trainer); collect it
        # now, or the polish stage loads its data beside the finetune stage's (12 GB peak).
        gc.collect()
        times[name] = round(time.perf_counter() - stage_started, 1)
        if code:
            print(f'vlit-ros train-all: {name} failed (exit {code})', file=sys.stderr)
            return code
    total = round(time.perf_counter() - started, 1)
    record = {'command': 'vlit-ros train-all ' + ' '.join(sys.argv[2:]),
              'stage_seconds': times, 'total_seconds': total,
              'stages': {name: argv for name, _, argv in stages},
              'polish_steps': args.polish_steps if polish else 0}
    write_json(out / 'train_all.json', record)
    print(f'train-all finished in {total / 60:.1f} min: ' +
          ', '.join(f'{k} {v / 60:.1f} min' for k, v in times.items()))
    if args.install:
        install(out, data, Path(args.install), record,
                'polish' if polish else 'finetune')
    return 0


def pool_dagger_data(finetune_dir: Path, data: Path, target: Path) -> int:
    """
    Make `target` a dataset directory listing every DAgger round's shards of a finetune run.

    The shards are linked, not copied; the manifest is the expert data's with the shard list
    replaced, so `--data DATA --data TARGET` trains on the expert data plus all rounds.
    Returns the number of shards.
    """
    rounds = (finetune_dir / 'dagger').glob('round_*/rank_*.json')
    stems = sorted(path.with_suffix('') for path in rounds)
    if not stems:
        raise ValueError(f'{finetune_dir} has no DAgger rounds to pool')
    folder = target / 'trajectories'
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for stem in stems:
        name = f'{stem.parent.name}_{stem.name}'
        for suffix in ('.json', '.safetensors'):
            link = folder / (name + suffix)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(stem.with_suffix(suffix).resolve())
        names.append(name)
    manifest = read_json(data / MANIFEST)
    manifest['shards'] = {'trajectories': names}
    write_json(target / MANIFEST, manifest)
    return len(names)


def install(out: Path, data: Path, target: Path, record: dict,
            final: str = 'finetune') -> None:
    """Copy the final checkpoint, its report and a training card into `target`."""
    source = out / final
    target.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE, 'report.png'):
        shutil.copyfile(source / name, target / name)
    training = json.loads((source / 'training.json').read_text())
    # The DAgger rounds are the finetune stage's, also when a polish stage follows it.
    training['dagger_rounds'] = json.loads(
        (out / 'finetune' / 'training.json').read_text())['dagger_rounds']
    manifest = json.loads((data / 'manifest.json').read_text())
    (target / 'README.md').write_text(training_card(record, training, manifest))
    print(f'installed the checkpoint in {target}')


def training_card(record: dict, training: dict, manifest: dict) -> str:
    """Return the Markdown training card of an installed checkpoint."""
    lines = ['# Default checkpoint: training card', '',
             f'Produced by `{record["command"]}` in {record["total_seconds"] / 60:.1f} min '
             '(' + ', '.join(f'{k} {v / 60:.1f} min' for k, v in
                             record['stage_seconds'].items()) + ').', '',
             '## Data', '']
    counts = manifest['counts']
    seeds = manifest['seed_ranges']
    lines += [f'- {counts["caption_views"]} captioned views from scene seeds '
              f'{seeds["captions"][0]}-{seeds["captions"][1]}',
              f'- {counts["trajectory_episodes"]} expert episodes ({counts["trajectory_frames"]} '
              f'frames) from scene seeds {seeds["trajectories"][0]}-{seeds["trajectories"][1]}',
              f'- DAgger: {len(training["dagger_rounds"])} rounds on scene seeds from '
              f'{finetune.DAGGER_SEED_OFFSET + manifest["config"]["seed_base"]}'] + \
        ([f'- polish: {record["polish_steps"]} more cloning steps on the expert data plus '
          'every DAgger round'] if record.get('polish_steps') else []) + \
        ['', 'All training seeds are >= 1,000,000; evaluation seeds stay below.', '']
    evaluation = training.get('evaluation')
    if evaluation:
        lines += [f'## Closing evaluation ({evaluation["episodes_total"]} episodes, seed '
                  f'{evaluation["seed"]})', '', '| family | success |', '| --- | --- |']
        lines += [f'| {family} | {100 * row["success_rate"]:.0f}% |'
                  for family, row in evaluation['per_family'].items()]
        lines += ['', 'The full results table (200+ episodes per family, unseen phrasings, '
                  'ablations) is in docs/TRAINING.md.', '']
    lines += ['![loss curves and evaluation](report.png)', '']
    return '\n'.join(lines)
