# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""Reports: the loss/evaluation PNG, the results table command, the training card."""

import json

from vlit_ros.cli import main
from vlit_ros.training.report import loss_names, write_report
from vlit_ros.training.train_all import training_card


def test_report_png_has_losses_and_rates(tmp_path):
    history = [{'step': s, 'loss': 2.0 / s, 'loss_mlm': 1.0 / s, 'accuracy': 0.5, 'lr': 1e-3}
               for s in range(1, 11)]
    assert loss_names(history) == ['loss', 'loss_mlm']
    path = write_report(tmp_path / 'r' / 'report.png', history, 'title',
                        {'goto': 0.9, 'turn': 1.0}, 'success', markers=[5],
                        marker_label='DAgger round')
    assert path.read_bytes()[:4] == b'\x89PNG'


def test_eval_table_puts_policies_side_by_side(tmp_path, capsys):
    out = tmp_path / 'table.json'
    assert main(['eval-table', '--policies', 'expert,random', '--episodes-per-family', '1',
                 '--json', str(out), '--quiet']) == 0
    printed = capsys.readouterr().out
    assert '| policy | goto | turn | move | stop | goto unseen |' in printed
    assert '| expert | 100.0% | 100.0% | 100.0% | 100.0% | 100.0% |' in printed
    rows = json.loads(out.read_text())['rows']
    assert [r['policy'] for r in rows] == ['expert', 'random']


def test_eval_table_rejects_a_malformed_ablation(capsys):
    assert main(['eval-table', '--policies', 'expert', '--ablation', 'nodir',
                 '--quiet']) == 2
    assert 'NAME=DIR' in capsys.readouterr().err


def test_training_card_names_data_seeds_and_results():
    record = {'command': 'vlit-ros train-all --out runs/x', 'total_seconds': 600.0,
              'stage_seconds': {'gen-data': 60.0, 'finetune': 540.0}}
    training = {'dagger_rounds': [{}, {}],
                'evaluation': {'episodes_total': 8, 'seed': 100000,
                               'per_family': {'goto': {'success_rate': 0.5}}}}
    manifest = {'counts': {'caption_views': 10, 'trajectory_episodes': 4,
                           'trajectory_frames': 99},
                'seed_ranges': {'captions': [1000000, 1000001],
                                'trajectories': [1200000, 1200001]},
                'config': {'seed_base': 1000000}}
    card = training_card(record, training, manifest)
    assert 'vlit-ros train-all --out runs/x' in card and '10.0 min' in card
    assert '1200000-1200001' in card and '| goto | 50% |' in card
    assert 'DAgger: 2 rounds on scene seeds from 1400000' in card
