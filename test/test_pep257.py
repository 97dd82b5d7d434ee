# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

from pathlib import Path

from ament_pep257.main import main
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    paths = [str(ROOT / p) for p in ('vlit_ros', 'test', 'launch', 'bench', 'setup.py')
             if (ROOT / p).exists()]
    rc = main(argv=paths)
    assert rc == 0, 'Found code style errors / warnings'
