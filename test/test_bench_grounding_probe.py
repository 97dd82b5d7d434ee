# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""bench/grounding_probe.py: it trains, scores and scores checkpoints on held-out scenes."""

import json
from pathlib import Path

from bench_scripts import load_bench_script
import numpy as np
import pytest

from vlit_ros.sim.tasks import FAMILIES
from vlit_ros.training.datagen import GenDataConfig, generate
from vlit_ros.training.datasets import TrajectorySet

SHIPPED = Path(__file__).resolve().parents[1] / 'vlit_ros' / 'checkpoints' / 'default'
TINY = GenDataConfig(caption_scenes=0, views_per_scene=1, trajectory_scenes=2,
                     episodes_per_scene=3, scenes_per_shard=2)


@pytest.fixture(scope='module')
def probe():
    return load_bench_script('grounding_probe')


@pytest.fixture(scope='module')
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp('probe')
    generate(root / 'train', TINY, workers=1, progress=False)
    held_out = GenDataConfig(**{**TINY.__dict__, 'seed_base': 1_900_000})
    generate(root / 'test', held_out, workers=1, progress=False)
    return root


def test_queries_are_the_instructions_or_the_relabelled_ones(probe, datasets):
    data = TrajectorySet.load([datasets / 'train'], FAMILIES, 0)
    rows = np.arange(len(data))
    texts, boxes = probe.queries(data, rows, False)
    assert texts == [data.texts[i] for i in data.text_index]
    assert np.array_equal(boxes, data.target_box)
    texts, boxes = probe.queries(data, rows, True)
    assert texts == [data.query_texts[i] for i in data.query_text_index]
    assert np.array_equal(boxes, data.query_box)


def test_trains_both_ways_and_scores_a_checkpoint(probe, datasets, tmp_path, capsys):
    out = tmp_path / 'probe.json'
    assert probe.main(['--data', str(datasets / 'train'), '--test-data', str(datasets / 'test'),
                       '--steps', '2', '--batch-size', '8', '--relabel', 'off', 'on',
                       '--checkpoint', str(SHIPPED),
                       '--json', str(out)]) == 0
    results = json.loads(out.read_text())
    assert [r['name'] for r in results] == [
        f'checkpoint {SHIPPED}', 'trained without relabelled queries',
        'trained with relabelled queries']
    for result in results:
        for key in ('top1', 'false_alarm', 'query_top1', 'query_false_alarm'):
            assert 0.0 <= result[key] <= 1.0
        assert result['frames_shown'] + result['frames_empty'] > 0
        assert result['query_frames_shown'] + result['query_frames_empty'] > 0
    # the relabelled loss adds a second term: its training loss is the larger one
    assert results[2]['final_loss'] > results[1]['final_loss']
    table = capsys.readouterr().out
    assert '| trained with relabelled queries |' in table
