# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""bench/label_sources.py: every visited frame's label is counted under one rule."""

import json

from bench_scripts import load_bench_script


def test_label_sources_count_every_frame_once(tmp_path, capsys):
    script = load_bench_script('label_sources')
    out = tmp_path / 'labels.json'
    assert script.main(['--episodes', '2', '--seed', '129', '--json', str(out)]) == 0
    figures = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == figures
    rules = figures['rules']
    assert figures['frames'] == sum(rules.values()) > 0
    assert 0 <= figures['solved'] <= 2
    # The default expert never gives the observable turn back; its ground-truth labels are
    # either a target lost on the way or a sweep run out.
    assert rules['reacquire'] == 0
    assert figures['ground_truth_lost_on_the_way'] + figures['ground_truth_after_sweep'] == \
        rules['ground_truth']
    assert 0 <= figures['in_view_beyond_3m'] <= rules['in_view']
    assert 0 <= figures['labels_that_differ_with_the_other_turns'] <= figures['frames']


def test_label_sources_refuse_no_episodes(capsys):
    script = load_bench_script('label_sources')
    assert script.main(['--episodes', '0']) == 2
    assert '--episodes must be at least 1' in capsys.readouterr().err
