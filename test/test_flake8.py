# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

from pathlib import Path

from ament_flake8.main import main_with_errors
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    # The package's own sources only: the virtual environment lives in the same folder.
    paths = [str(ROOT / p) for p in ('vlit_ros', 'test', 'launch', 'bench', 'setup.py')
             if (ROOT / p).exists()]
    rc, errors = main_with_errors(argv=paths)
    assert rc == 0, \
        'Found %d code style errors / warnings:\n' % len(errors) + '\n'.join(errors)
