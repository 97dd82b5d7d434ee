"""
Summarise `vlit-ros bench --json` files as one markdown table (median / p95 ms per stage).

Usage: python bench/bench_table.py RESULT.json [RESULT.json ...]
"""

import argparse
import json
from pathlib import Path

STAGES = ('preprocess', 'vision', 'fusion', 'executor', 'frame')


def variant(result: dict) -> str:
    """Return a short label of how a result was run, e.g. 'default cuda bf16 compile graph'."""
    model = Path(result['checkpoint']).name if result['checkpoint'] else 'default'
    parts = [model, result['device'], result['precision']]
    if result['compile']:
        parts.append('compile')
    if result['cuda_graph']:
        parts.append('graph')
    return ' '.join(parts)


def rows(result: dict):
    """Yield one markdown table row per batch size of a result."""
    for entry in result['batches']:
        cells = [f'{entry["stages"][s]["median_ms"]:.2f} / {entry["stages"][s]["p95_ms"]:.2f}'
                 for s in STAGES]
        memory = entry['peak_memory_mb']
        yield (f'| {variant(result)} | {entry["batch"]} | {entry["threads"]} | '
               + ' | '.join(cells) + f' | {entry["frame_per_item_ms"]:.3f} | '
               + ('n/a' if memory is None else f'{memory:.1f}') + ' |')


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('results', nargs='+', type=Path, help='bench JSON files')
    args = parser.parse_args()
    results = [json.loads(path.read_text()) for path in args.results]
    first = results[0]
    print(f'{first["device_name"]}, torch {first["torch_version"]}; '
          f'{first["shipped_weights_mb"]:.1f} MB shipped weights\n')
    print('| variant | batch | threads | ' + ' | '.join(STAGES) +
          ' | frame per item | peak MB |')
    print('|' + ' --- |' * (len(STAGES) + 5))
    for result in results:
        for row in rows(result):
            print(row)
    print('\ninstruction encoding (median / p95 ms): ' + ', '.join(
        f'{variant(r)} {r["text_encoding"]["median_ms"]:.2f} / {r["text_encoding"]["p95_ms"]:.2f}'
        for r in results))


if __name__ == '__main__':
    main()
