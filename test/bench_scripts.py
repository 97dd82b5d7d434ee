# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""Import a script of bench/ (not a package) as a module, for its tests."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / 'bench'


def load_bench_script(name: str):
    """Return bench/NAME.py, imported as module NAME."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
