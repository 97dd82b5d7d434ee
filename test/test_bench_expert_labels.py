# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""bench/expert_labels.py: the expert's rules on a learner's own states, counted."""

from pathlib import Path

from bench_scripts import load_bench_script

from vlit_ros.core.policy import ModelPolicy
from vlit_ros.sim.expert import RULES

SHIPPED = Path(__file__).resolve().parents[1] / 'vlit_ros' / 'checkpoints' / 'default'


def test_expert_label_shares_add_up():
    script = load_bench_script('expert_labels')
    figures = script.label_statistics(ModelPolicy.from_checkpoint(SHIPPED), 2, 7000)
    assert figures['episodes'] == 2 and 0 <= figures['success'] <= 2
    shares = figures['all']
    assert shares['labels'] == figures['solved']['labels'] + figures['failed']['labels'] > 0
    for part in ('solved', 'failed', 'all'):
        if figures[part]['labels']:
            total = sum(figures[part][rule] for rule in RULES if rule != 'not_goto')
            assert abs(total - 1.0) < 0.01, figures[part]
    # Every goto episode has a label from the stop rule or the steering ones.
    assert shares['in_view'] + shares['sweep'] > 0.0


def test_expert_labels_rejects_no_episodes(capsys):
    script = load_bench_script('expert_labels')
    assert script.main(['--episodes', '0']) == 2
    assert '--episodes must be at least 1' in capsys.readouterr().err
