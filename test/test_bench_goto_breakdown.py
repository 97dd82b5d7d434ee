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


def test_by_scene_counts_scenes_by_the_runs_that_solve_them(tmp_path, capsys):
    script = load_bench_script('goto_breakdown')
    first = _episodes(12)
    # The second run solves the first four scenes' failures too, and fails scene 1.
    second = [dict(e, success=(i < 4 or e['success']) and i != 1,
                   reason='success' if (i < 4 or e['success']) and i != 1 else 'timeout')
              for i, e in enumerate(first)]
    result = script.by_scene([first, second])
    solved = [sum((first[i]['success'], second[i]['success'])) for i in range(12)]
    assert result['scenes'] == 12 and result['runs'] == 2
    assert result['solved_by'] == {str(k): solved.count(k) for k in range(3)}
    assert result['groups'] == {'every run': solved.count(2), 'some runs': solved.count(1),
                                'no run': solved.count(0)}
    assert result['best_of_runs_success_rate'] == (12 - solved.count(0)) / 12
    assert result['mean_success_rate'] == sum(solved) / 24
    for name, size in result['groups'].items():
        named_by = [v for k, v in result['factors'][name].items() if k.startswith('named by')]
        assert sum(named_by) == size
    paths = []
    for index, run in enumerate((first, second)):
        paths.append(tmp_path / f'run{index}.json')
        paths[-1].write_text(json.dumps({'episodes': run}))
    out = tmp_path / 'out.json'
    assert script.main([str(p) for p in paths] + ['--by-scene', '--json', str(out)]) == 0
    assert json.loads(out.read_text())['by_scene'] == result
    assert 'solved by at least one run' in capsys.readouterr().out
    # Runs of other scenes, or a single run, are refused with the reason.
    other = tmp_path / 'other.json'
    other.write_text(json.dumps({'episodes': _episodes(12, seed=900)}))
    assert script.main([str(paths[0]), str(other), '--by-scene']) == 2
    assert 'same goto episodes' in capsys.readouterr().err
    assert script.main([str(paths[0]), '--by-scene']) == 2
    assert 'two or more runs' in capsys.readouterr().err
