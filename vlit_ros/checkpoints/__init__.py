"""Checkpoints shipped with the package; `default/` is what `--policy model` loads by default."""

from pathlib import Path

# The instruction-following checkpoint `vlit-ros train-all` produces (see docs/TRAINING.md).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / 'default'
