# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""bench/expert_search.py: the expert's search figures are counted from its episodes."""

from bench_scripts import load_bench_script


def test_expert_search_figures_add_up():
    script = load_bench_script('expert_search')
    figures = script.search_statistics(6, 1)
    assert figures['episodes'] == 6
    assert 0 <= figures['ground_truth_fallbacks'] <= 6
    # The expert solves these goto episodes; episodes take between one step and the 40 s.
    assert figures['success'] == 6
    assert 1 <= figures['median_steps'] <= 400 and figures['mean_steps'] > 0
    assert figures['turn_direction_changes_per_episode'] >= 0.0


def test_expert_search_rejects_no_episodes(capsys):
    script = load_bench_script('expert_search')
    assert script.main(['--episodes', '0']) == 2
    assert '--episodes must be at least 1' in capsys.readouterr().err


def test_expert_search_measures_the_far_search_with_its_settings(capsys):
    script = load_bench_script('expert_search')
    figures = script.search_statistics(6, 1, far_search=True, see_range_m=3.0, advance_m=1.0)
    assert figures['far_search'] and figures['success'] == 6
    assert (figures['see_range_m'], figures['advance_m']) == (3.0, 1.0)
    assert 'see_range_m' not in script.search_statistics(1, 1)
    assert script.main(['--episodes', '1', '--far-search', '--see-range', '0']) == 2
    assert 'see_range_m must be a positive number' in capsys.readouterr().err


def test_expert_search_names_the_turn_rules_it_measured(capsys):
    script = load_bench_script('expert_search')
    figures = script.search_statistics(4, 1)
    assert (figures['sweep_rule'], figures['reacquire']) == ('yaw_rate', 'ground_truth')
    assert script.main(['--episodes', '4', '--sweep-by-command', '--reacquire-by-command']) == 0
    printed = capsys.readouterr().out
    assert '"sweep_rule": "command"' in printed and '"reacquire": "command"' in printed
