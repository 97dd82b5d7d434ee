# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""bench/grounding_by_distance.py: the map's findings by target distance."""

import json
import math
from pathlib import Path

from bench_scripts import load_bench_script
import numpy as np
import pytest

from vlit_ros.training.datagen import GenDataConfig, generate
from vlit_ros.training.datasets import NO_BOX

SHIPPED = Path(__file__).resolve().parents[1] / 'vlit_ros' / 'checkpoints' / 'default'


@pytest.fixture(scope='module')
def bench():
    return load_bench_script('grounding_by_distance')


def test_by_distance_counts_found_targets_and_false_alarms_per_band(bench):
    grid = (6, 8)
    # Three frames with the target in one patch (row 3, column 2), one without it.
    boxes = np.array([(0.30, 0.34, 0.50, 0.56)] * 3 + [NO_BOX], np.float32)
    probabilities = np.zeros((4, 48))
    probabilities[0, 3 * 8 + 2] = 0.9          # found, 0.8 m away
    probabilities[1, 3 * 8 + 2] = 0.2          # missed, 2.2 m away ...
    probabilities[1, 0] = 0.7                  # ... and a false alarm elsewhere
    probabilities[2, 3 * 8 + 2] = 0.6          # found, 2.4 m away
    probabilities[3, 5] = 0.8                  # a false alarm without the target
    distances = np.array([0.8, 2.2, 2.4, math.nan])
    summary = bench.by_distance(probabilities, boxes, distances, grid)
    bands = {(b['from_m'], b['to_m']): b for b in summary['bands']}
    assert bands[(0.0, 1.0)] == {'from_m': 0.0, 'to_m': 1.0, 'frames': 1, 'found': 1.0,
                                 'median_on_target': 0.9, 'ranked_first': 1.0,
                                 'false_alarm': 0.0}
    assert bands[(2.0, 2.5)]['frames'] == 2 and bands[(2.0, 2.5)]['found'] == 0.5
    assert bands[(2.0, 2.5)]['false_alarm'] == 0.5
    # At 2.2 m the false alarm outranks the target; at 2.4 m the target is the map's highest.
    assert bands[(2.0, 2.5)]['ranked_first'] == 0.5
    assert summary['median_max_target_absent'] == pytest.approx(0.8)
    assert bands[(3.0, 4.0)]['frames'] == 0 and bands[(3.0, 4.0)]['found'] is None
    assert summary['frames_target_shown'] == 3 and summary['frames_target_absent'] == 1
    assert summary['false_alarm_target_absent'] == 1.0
    table = bench.format_table(summary, 'title')
    assert '| 2-2.5 m | 2 | 50% | 0.40 | 50% | 50% |' in table and '| 3-4 m | 0 | - |' in table
    assert 'highest 0.80' in table


def test_agreement_counts_the_expert_labels_the_policy_takes(bench):
    actions = np.array([1, 2, 3, 4, 4])
    labels = np.array([1, 0, 3, 4, 5])
    distances = np.array([0.5, 0.7, 3.5, math.nan, math.nan])
    times = np.array([1.0, 2.0, 3.0, 1.0, 20.0])
    summary = bench.agreement(actions, labels, distances, times)
    assert summary['all'] == {'frames': 5, 'agreement': 0.6}
    bands = {(b['from_m'], b['to_m']): b for b in summary['by_distance']}
    assert bands[(0.0, 1.0)] == {'from_m': 0.0, 'to_m': 1.0, 'frames': 2, 'agreement': 0.5}
    assert bands[(3.0, 4.0)]['agreement'] == 1.0 and bands[(1.0, 1.5)]['agreement'] is None
    late = summary['out_of_view_by_time']
    assert late[0]['frames'] == 1 and late[0]['agreement'] == 1.0
    assert late[-1]['frames'] == 1 and late[-1]['agreement'] == 0.0
    table = bench.format_agreement(summary)
    assert '| all | 5 | 60% |' in table and '| target 1-1.5 m | 0 | - |' in table
    assert '| out of view, 15-41 s | 1 | 0% |' in table


def test_runs_on_generated_data_with_the_shipped_checkpoint(bench, tmp_path, capsys):
    data = tmp_path / 'data'
    generate(data, GenDataConfig(caption_scenes=0, views_per_scene=1, trajectory_scenes=2,
                                 episodes_per_scene=3, scenes_per_shard=2),
             workers=1, progress=False)
    out = tmp_path / 'out.json'
    assert bench.main(['--data', str(data), '--frames', '40', '--checkpoint', str(SHIPPED),
                       '--json', str(out), '--quiet']) == 0
    summary = json.loads(out.read_text())
    assert 0 < summary['frames'] <= 40
    assert summary['frames_target_shown'] + summary['frames_target_absent'] <= \
        summary['frames']
    assert sum(b['frames'] for b in summary['bands']) == summary['frames_target_shown']
    for band in summary['bands']:
        if band['frames']:
            assert 0.0 <= band['found'] <= 1.0 and 0.0 <= band['median_on_target'] <= 1.0
    assert 'found (map >= 0.5 on it)' in capsys.readouterr().out
    # With --actions, the policy's greedy action against the expert's: on the expert's own
    # frames, mostly the same.
    acted = tmp_path / 'actions.json'
    assert bench.main(['--data', str(data), '--frames', '40', '--checkpoint', str(SHIPPED),
                       '--json', str(acted), '--quiet', '--actions']) == 0
    actions = json.loads(acted.read_text())['actions']
    assert actions['all']['frames'] == summary['frames']
    assert actions['all']['agreement'] > 0.5
    assert "greedy action = the expert's label" in capsys.readouterr().out
    # The zoomed map is the full map or higher on the same frames: it finds at least as much.
    zoomed = tmp_path / 'zoom.json'
    assert bench.main(['--data', str(data), '--frames', '40', '--checkpoint', str(SHIPPED),
                       '--json', str(zoomed), '--quiet', '--zoom-map']) == 0
    zoom = json.loads(zoomed.read_text())
    assert zoom['zoom_map'] and not summary['zoom_map']
    for plain_band, zoom_band in zip(summary['bands'], zoom['bands']):
        if plain_band['frames']:
            assert zoom_band['found'] >= plain_band['found']
            assert zoom_band['median_on_target'] >= plain_band['median_on_target']


def test_a_pretraining_checkpoint_is_refused(bench, tmp_path, capsys):
    from vlit_ros.core.model import PretrainingModel, save_checkpoint
    from vlit_ros.training.presets import model_config
    save_checkpoint(PretrainingModel(model_config('tiny', 'builtin')), tmp_path / 'pre')
    assert bench.main(['--data', str(tmp_path), '--checkpoint', str(tmp_path / 'pre')]) == 2
    assert 'no grounding map' in capsys.readouterr().err
