# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""bench/goto_breakdown.py: goto success split by how the target is named and placed."""

import json

from bench_scripts import load_bench_script

from vlit_ros.sim.episode import make_episode


def _episodes(count, seed=101):
    episodes = []
    for index in range(count):
        spec = make_episode(index, seed, families=('goto',))
        task = spec.instruction.task
        success = index % 3 != 0
        episodes.append({'seed': spec.seed, 'family': 'goto', 'text': spec.instruction.text,
                         'task': {'type': 'goto', 'color': task.color, 'shape': task.shape},
                         'success': success,
                         'reason': 'success' if success else
                         ('touched_red_cube' if index % 2 else 'timeout')})
    episodes.append(dict(episodes[0], family='turn'))  # other families are left out
    return episodes


def test_breakdown_counts_every_goto_episode_once_per_factor(tmp_path, capsys):
    script = load_bench_script('goto_breakdown')
    episodes = _episodes(24)
    rows = script.breakdown(episodes)
    overall = rows[0]
    assert (overall['factor'], overall['episodes'], overall['successes']) == ('all', 24, 16)
    assert overall['failures'] == {'touched': 4, 'timeout': 4}
    for factor in script.FACTORS:
        members = [row for row in rows if row['factor'] == factor]
        assert sum(row['episodes'] for row in members) == 24, factor
        assert sum(row['successes'] for row in members) == 16, factor
    # A target the robot faces is in view; one behind its shoulder is not.
    starts = {row['value'] for row in rows if row['factor'] == 'starts'}
    assert 'in view' in starts and starts & {'out of view, left', 'out of view, right'}
    path = tmp_path / 'eval.json'
    path.write_text(json.dumps({'episodes': episodes}))
    out = tmp_path / 'rows.json'
    assert script.main([str(path), '--json', str(out)]) == 0
    assert json.loads(out.read_text()) == rows
    assert 'out of view' in capsys.readouterr().out


def test_breakdown_says_what_is_wrong_with_its_input(tmp_path, capsys):
    script = load_bench_script('goto_breakdown')
    path = tmp_path / 'eval.json'
    path.write_text(json.dumps({'episodes': [dict(_episodes(1)[0], family='move')]}))
    assert script.main([str(path)]) == 2
    assert 'no goto episodes' in capsys.readouterr().err
    assert script.main([str(tmp_path / 'missing.json')]) == 2
