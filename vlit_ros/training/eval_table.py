"""
`vlit-ros eval-table`: the results table, every policy side by side, from one command.

Rows are policies (the default checkpoint, the expert, random, and ablation checkpoints);
columns are the four families on generated instructions (episode i is family i mod 4, scene
seed SEED + i) and goto with phrasings never seen in training (`test/data/goto_unseen.jsonl`,
built for seed 500000). Prints a Markdown table and writes the numbers as JSON.
"""

import argparse
import json
from pathlib import Path
import sys
from typing import Dict, List, Optional, Tuple

from vlit_ros.checkpoints import DEFAULT_CHECKPOINT
from vlit_ros.evaluation import evaluate
from vlit_ros.policies import load_policy
from vlit_ros.sim.tasks import FAMILIES, load_instructions
from vlit_ros.training.phrasings import UNSEEN_GOTO_SEED

DEFAULT_UNSEEN = Path(__file__).resolve().parents[2] / 'test' / 'data' / 'goto_unseen.jsonl'
COLUMNS = FAMILIES + ('goto_unseen',)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--checkpoint', default=None,
                        help='checkpoint of the "model" row (default: the shipped one)')
    parser.add_argument('--ablation', action='append', default=[], metavar='NAME=DIR',
                        help='an extra model row (repeatable), e.g. no_dagger=runs/x')
    parser.add_argument('--episodes-per-family', type=int, default=200,
                        help='episodes per family and for the unseen phrasings (default: 200)')
    parser.add_argument('--seed', type=int, default=1,
                        help='scene seed of the generated episodes (default: 1)')
    parser.add_argument('--unseen', default=str(DEFAULT_UNSEEN), metavar='FILE.jsonl',
                        help='goto instructions in unseen phrasings (default: the test file)')
    parser.add_argument('--unseen-seed', type=int, default=UNSEEN_GOTO_SEED,
                        help=f'seed the unseen file was built for (default: {UNSEEN_GOTO_SEED})')
    parser.add_argument('--policies', default='model,expert,random',
                        help='built-in rows, comma-separated (default: model,expert,random)')
    parser.add_argument('--device', default='cpu', help='torch device for model rows')
    parser.add_argument('--batch', type=int, default=16,
                        help='model rows: episodes run in lockstep, one forward pass a step '
                             '(default: 16)')
    parser.add_argument('--json', default=None, metavar='OUT.json', help='write results here')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')


def evaluate_row(policy_spec: str, checkpoint: Optional[str], args) -> Dict[str, float]:
    """Success rate per column for one policy."""
    unseen = load_instructions(args.unseen)
    policy = load_policy(policy_spec, checkpoint=checkpoint, device=args.device, seed=args.seed)
    generated = evaluate(policy, args.episodes_per_family * len(FAMILIES), args.seed,
                         progress=not args.quiet, batch=args.batch)
    held_out = evaluate(policy, args.episodes_per_family, args.unseen_seed, unseen,
                        progress=not args.quiet, batch=args.batch)
    row = {f: generated['per_family'][f]['success_rate'] for f in FAMILIES}
    row['goto_unseen'] = held_out['per_family']['goto']['success_rate']
    return row


def format_markdown(rows: List[Tuple[str, Dict[str, float]]], episodes: int) -> str:
    header = ['policy'] + [c.replace('_', ' ') for c in COLUMNS]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
    for name, row in rows:
        cells = [name] + [f'{100.0 * row[c]:.1f}%' for c in COLUMNS]
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines.append(f'\n{episodes} episodes per column.')
    return '\n'.join(lines)


def run(args: argparse.Namespace) -> int:
    rows: List[Tuple[str, Dict[str, float]]] = []
    try:
        default = args.checkpoint or str(DEFAULT_CHECKPOINT)
        specs = [(p.strip(), default if p.strip() == 'model' else None)
                 for p in args.policies.split(',') if p.strip()]
        for entry in args.ablation:
            name, sep, directory = entry.partition('=')
            if not sep or not name or not directory:
                raise ValueError(f'--ablation wants NAME=DIR, got {entry!r}')
            specs.append((f'model ({name})', directory))
        for name, checkpoint in specs:
            policy = 'model' if name.startswith('model') else name
            print(f'evaluating {name}' + (f' ({checkpoint})' if checkpoint else ''),
                  file=sys.stderr)
            rows.append((name, evaluate_row(policy, checkpoint, args)))
    except ValueError as exc:
        print(f'vlit-ros eval-table: error: {exc}', file=sys.stderr)
        return 2
    print(format_markdown(rows, args.episodes_per_family))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            'seed': args.seed, 'unseen_seed': args.unseen_seed, 'unseen': args.unseen,
            'episodes_per_column': args.episodes_per_family,
            'rows': [{'policy': n, **r} for n, r in rows]}, indent=2) + '\n')
        print(f'wrote {path}')
    return 0
