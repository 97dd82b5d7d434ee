# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""bench/ensemble_policy.py: the mean of several checkpoints' decisions."""

import json

from bench_scripts import BENCH, load_bench_script
import numpy as np
import pytest
from tiny_models import tiny_config
import torch

from vlit_ros import cli
from vlit_ros.core.actions import ACTIONS
from vlit_ros.core.follower_logic import FollowerObservation
from vlit_ros.core.model import save_checkpoint, VLITModel
from vlit_ros.core.policy import ModelPolicy


def _checkpoint(directory, seed):
    torch.manual_seed(seed)
    return str(save_checkpoint(VLITModel(tiny_config('builtin')), directory))


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    return [_checkpoint(tmp_path_factory.mktemp(f'member{seed}'), seed) for seed in (0, 1)]


def _observations(step, robots=2):
    rng = np.random.default_rng(step)
    return [FollowerObservation(rng.integers(0, 256, (96, 128, 3), np.uint8),
                                (0.1 * step, 0.0, 0.05 * step * (robot + 1), 0.2, 0.1),
                                0.1 * step) for robot in range(robots)]


@pytest.mark.parametrize('mode', ['mean', 'logmean'])
def test_the_ensemble_takes_the_best_mean_action_and_tells_every_member(checkpoints, mode):
    script = load_bench_script('ensemble_policy')
    ensemble = script.Ensemble(checkpoints, mode)
    members = [ModelPolicy.from_checkpoint(path) for path in checkpoints]
    instructions = ['go to the red cube', 'turn around']
    ensemble.reset_batch(instructions)
    for member in members:
        member.reset_batch(instructions)
    for step in range(6):
        observations = _observations(step)
        chosen = ensemble.act_batch(observations)
        probabilities = []
        for member in members:
            member.act_batch(observations)
            probabilities.append(member.last_batch_probabilities)
        stacked = np.stack(probabilities)
        score = np.log(stacked).mean(0) if mode == 'logmean' else stacked.mean(0)
        assert chosen == [ACTIONS[i] for i in score.argmax(1)]
        for member in members:
            for robot, action in enumerate(chosen):
                member.note_taken_action(action, robot)


def test_an_ensemble_of_one_model_twice_acts_like_the_model(checkpoints):
    script = load_bench_script('ensemble_policy')
    ensemble = script.Ensemble([checkpoints[0]] * 2)
    single = ModelPolicy.from_checkpoint(checkpoints[0])
    ensemble.reset('find the blue sphere')
    single.reset('find the blue sphere')
    for step in range(5):
        observation = _observations(step, robots=1)[0]
        assert ensemble.act(observation) == single.act(observation)


def test_the_ensemble_runs_under_vlit_ros_eval_and_refuses_bad_settings(
        checkpoints, monkeypatch, tmp_path):
    script = load_bench_script('ensemble_policy')
    monkeypatch.setenv('VLIT_ENSEMBLE', ','.join(checkpoints))
    out = tmp_path / 'eval.json'
    assert cli.main(['eval', '--policy', f'{BENCH / "ensemble_policy.py"}:Ensemble',
                     '--families', 'turn', '--episodes', '2', '--batch', '2', '--quiet',
                     '--json', str(out)]) == 0
    assert json.loads(out.read_text())['episodes_total'] == 2
    with pytest.raises(ValueError, match='two or more'):
        script.Ensemble(checkpoints[:1])
    with pytest.raises(ValueError, match='VLIT_ENSEMBLE_MODE'):
        script.Ensemble(checkpoints, 'median')
