# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""bench/online_shift.py: the graph it brings up, how it reads the task log, its table."""

from bench_scripts import load_bench_script
import pytest


@pytest.fixture(scope='module')
def demo():
    return load_bench_script('online_shift')


def test_the_learning_graph_is_the_shifted_goto_graph_with_a_trainer(demo, tmp_path):
    args = demo.parse_args(['--out', str(tmp_path), '--speed', '2.5', '--temperature', '0.7'])
    graph = demo.learning_graph(args, tmp_path / 'learner')
    assert [n.name for n in graph.nodes] == ['sim', 'task', 'instruction_follower', 'trainer']
    sim, task = graph.node('sim').parameters, graph.node('task').parameters
    follower, trainer = (graph.node('instruction_follower').parameters,
                         graph.node('trainer').parameters)
    assert sim['shifted'] is True and sim['real_time_factor'] == 2.5
    assert task['families'] == 'goto' and task['seed'] == demo.LEARN_SEED
    # The learner's scenes never reach the evaluation's.
    assert demo.LEARN_SEED > demo.EVAL_SEED + 10_000
    assert follower['sample_actions'] and follower['publish_experience']
    assert follower['temperature'] == 0.7
    assert trainer['output_dir'] == str(tmp_path / 'learner') and trainer['resume'] is False
    assert trainer['train_fusion'] is False and follower['experience_images'] is False
    fusion = demo.learning_graph(demo.parse_args(['--out', str(tmp_path), '--train-fusion']),
                                 tmp_path / 'learner')
    assert fusion.node('trainer').parameters['train_fusion'] is True
    assert fusion.node('instruction_follower').parameters['experience_images'] is True


def test_trainer_settings_reach_the_trainer_typed_and_checked(demo, tmp_path):
    args = demo.parse_args(['--out', str(tmp_path), '--trainer-param', 'learning_rate=3e-4',
                            '--trainer-param', 'minibatch_size=256'])
    trainer = demo.learning_graph(args, tmp_path / 'learner').node('trainer').parameters
    assert trainer['learning_rate'] == 3e-4 and isinstance(trainer['learning_rate'], float)
    assert trainer['minibatch_size'] == 256 and isinstance(trainer['minibatch_size'], int)
    assert trainer['output_dir'] == str(tmp_path / 'learner')
    # Only learning settings, typed and in the node's own ranges, before anything runs.
    for bad, message in (('output_dir=/tmp/x', 'expected NAME=VALUE'),
                         ('learning_rate', 'expected NAME=VALUE'),
                         ('epochs=2.5', 'not an integer'), ('target_kl=abc', 'not a number'),
                         ('learning_rate=2', 'outside'), ('epochs=0', 'outside'),
                         ('gamma=inf', 'outside'), ('rollout_steps=9000', 'max_buffered')):
        with pytest.raises(SystemExit):
            demo.parse_args(['--out', str(tmp_path), '--trainer-param', bad])
        with pytest.raises(ValueError, match=message):
            demo.trainer_settings([bad])


def test_episode_outcomes_read_the_task_nodes_lines(demo, tmp_path):
    log = tmp_path / 'task.log'
    assert demo.episode_outcomes(log) == []
    log.write_text(
        "[INFO] [1.0] [task]: episode 1/9 [goto] 'reach the red box': FAIL (timeout) after "
        '40.0 s, reward -4.72\n'
        '[INFO] [2.0] [task]: loaded scene 3\n'
        "[INFO] [3.0] [task]: episode 2/9 [goto] 'go to the red cube': SUCCESS (success) "
        'after 14.3 s, reward 5.72\n'
        "[INFO] [4.0] [task]: episode 3/9 [goto] 'the green one': FAIL (stopped_too_far) "
        'after 6.6 s, reward -2.42\n')
    assert demo.episode_outcomes(log) == [False, True, False]


def test_the_table_gives_before_after_and_change(demo):
    before = {'shifted': {'success_rate': 0.43}, 'nominal': {'success_rate': 0.5}}
    after = {'shifted': {'success_rate': 0.6}, 'nominal': {'success_rate': 0.47}}
    rows = demo.table(before, after).splitlines()
    assert rows[2] == '| shifted world | 43.0% | 60.0% | +17.0 points |'
    assert rows[3] == '| nominal world | 50.0% | 47.0% | -3.0 points |'


@pytest.mark.parametrize('argv', [['--minutes', '0'], ['--speed', '-1'],
                                  ['--temperature', '0'], ['--eval-episodes', '0']])
def test_bad_options_are_refused(demo, tmp_path, argv):
    with pytest.raises(SystemExit):
        demo.parse_args(['--out', str(tmp_path)] + argv)
