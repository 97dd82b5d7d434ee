"""Training reports: loss curves and an evaluation summary in one PNG next to a checkpoint."""

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402,I100  (the backend must be chosen first)


def loss_names(history: Sequence[dict]) -> List[str]:
    """Return the loss columns of a history (`loss`, `loss_*`), total loss first."""
    names = sorted({k for row in history for k in row if k.startswith('loss')})
    return sorted(names, key=lambda n: (n != 'loss', n))


def family_rates(summary: Dict) -> Dict[str, float]:
    """Return {family: success rate} of an evaluation summary."""
    return {f: row['success_rate'] for f, row in summary['per_family'].items()}


def write_report(path: Path, history: Sequence[dict], title: str,
                 rates: Optional[Dict[str, float]] = None, rates_title: str = '',
                 markers: Sequence[int] = (), marker_label: str = '') -> Path:
    """
    Plot the loss curves, and evaluation rates (in [0, 1]) as bars when given, into `path`.

    `markers` are steps drawn as vertical lines, e.g. the start of each DAgger round.
    """
    columns = 2 if rates else 1
    fig, axes = plt.subplots(1, columns, figsize=(5.2 * columns, 3.6), squeeze=False)
    ax = axes[0][0]
    steps = [row['step'] for row in history]
    for name in loss_names(history):
        values = [row.get(name) for row in history]
        points = [(s, v) for s, v in zip(steps, values) if v is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], label=name,
                    linewidth=2.0 if name == 'loss' else 1.0)
    for index, step in enumerate(markers):
        ax.axvline(step, color='grey', linestyle=':', linewidth=1,
                   label=marker_label if index == 0 and marker_label else None)
    ax.set_xlabel('step')
    ax.set_ylabel('loss')
    ax.set_yscale('log')
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if rates:
        ax = axes[0][1]
        percents = [100.0 * r for r in rates.values()]
        bars = ax.bar(list(rates), percents, color='#4c72b0')
        for bar, percent in zip(bars, percents):
            ax.text(bar.get_x() + bar.get_width() / 2, percent + 1, f'{percent:.0f}%',
                    ha='center', fontsize=8)
        ax.set_ylim(0, 110)
        ax.set_ylabel('%')
        ax.set_title(rates_title, fontsize=9)
        ax.tick_params(axis='x', labelsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
