# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""The executor that reads the grounding map's peak (`ExecutorConfig.map_peak`)."""

import dataclasses

import numpy as np
import pytest
from tiny_models import tiny_config
import torch

from vlit_ros.core.actions import ACTIONS
from vlit_ros.core.follower_logic import FollowerObservation
from vlit_ros.core.model import load_checkpoint, ModelConfig, save_checkpoint, VLITModel
from vlit_ros.core.model.executor import InstructionExecutor, PEAK_FEATURES
from vlit_ros.core.policy import ModelPolicy


def peak_model(seed=0, map_peak=True):
    torch.manual_seed(seed)
    config = tiny_config('builtin')
    return VLITModel(dataclasses.replace(config, executor=dataclasses.replace(
        config.executor, map_peak=map_peak))).eval()


def batch_of(rows=3, seed=1):
    images = np.random.default_rng(seed).integers(0, 256, (rows, 96, 128, 3), np.uint8)
    return {'image': images,
            'text': ['go to the red cube'] * rows, 'odom': np.zeros((rows, 5), np.float32),
            't': np.zeros(rows, np.float32)}


def test_peak_features_read_the_strongest_patch_of_the_map_in_the_fused_state():
    model = peak_model()
    fusion, executor = model.vlm.fusion, model.executor
    patches = fusion.patch_column.numel()
    assert executor.peak and patches == 48  # the tiny model's 6 x 8 grid
    fused = torch.zeros(2, model.vlm.state_dim)
    start = fusion.map_start
    fused[:, start:start + patches] = 0.01
    fused[0, start + 0] = 0.2    # weak, top row, left outer column
    fused[1, start + 47] = 0.9   # strong, bottom row, right outer column
    features = executor.peak_features(fused)
    assert features.shape == (2, PEAK_FEATURES)
    # columns: + to the left, on [-1, 1]; rows: + down
    torch.testing.assert_close(features[0], torch.tensor([0.2, 1.0, -1.0, 0.2]))
    torch.testing.assert_close(features[1], torch.tensor([0.9, -1.0, 1.0, -0.9]))
    # The executor's input grows by the four features, and they change its action logits.
    plain = peak_model(map_peak=False)
    assert executor.body[0].in_features == plain.executor.body[0].in_features + PEAK_FEATURES
    odometry = torch.zeros(2, executor.odometry_width)
    previous = torch.zeros(2, dtype=torch.long)
    moved = fused.clone()
    moved[0, start + 0], moved[0, start + 7] = 0.01, 0.2  # the same peak, other side
    with torch.no_grad():
        assert not torch.allclose(executor(fused, odometry, previous)[0].logits[0],
                                  executor(moved, odometry, previous)[0].logits[0])


def test_the_peak_is_the_models_own_map_and_carries_gradient_to_its_patch():
    model = peak_model().train()
    batch = dict(batch_of(), action=np.array([1, 2, 3]))
    seen = []
    hook = model.executor.register_forward_hook(lambda module, args, output: seen.append(
        args[0].detach().requires_grad_()))
    model(batch)
    hook.remove()
    with torch.no_grad():
        maps = torch.sigmoid(model.vlm.grounding_logits(
            torch.from_numpy(batch['image']), batch['text']))
    fused = seen[0]
    features = model.executor.peak_features(fused)
    torch.testing.assert_close(features[:, 0], maps.max(-1).values)
    # The strength and the product pass gradient to the peak's own entry of the state only.
    (features[:, 0] + features[:, 3]).sum().backward()
    start = model.vlm.fusion.map_start
    touched = fused.grad.nonzero()
    assert touched[:, 0].tolist() == [0, 1, 2]
    assert (touched[:, 1] - start).tolist() == maps.argmax(-1).tolist()


def test_map_peak_is_checked_old_configs_lack_it_and_a_peak_executor_needs_the_map():
    model = peak_model()
    data = model.config.to_dict()
    assert data['executor']['map_peak'] is True
    del data['executor']['map_peak']
    assert ModelConfig.from_dict(data).executor.map_peak is False
    with pytest.raises(ValueError, match='map_peak must be'):
        dataclasses.replace(model.config.executor, map_peak='yes')
    with pytest.raises(ValueError, match="map_peak needs the map's start"):
        InstructionExecutor(100, model.config.executor, grounding=True)
    with pytest.raises(ValueError, match="map_peak needs the map's start"):
        InstructionExecutor(100, model.config.executor, grounding=True, map_start=95,
                            patch_column=torch.zeros(48), patch_row=torch.zeros(48))
    # Without a grounding head there is no map, and no peak to read.
    assert not InstructionExecutor(100, model.config.executor).peak


def test_a_saved_peak_model_loads_and_acts_as_a_policy(tmp_path):
    model = peak_model(seed=3)
    save_checkpoint(model, tmp_path / 'peak')
    loaded = load_checkpoint(tmp_path / 'peak').eval()
    assert loaded.executor.peak
    batch = batch_of(2, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(model(batch)[0].logits, loaded(batch)[0].logits)
    policy = ModelPolicy(loaded)
    policy.reset('go to the blue sphere')
    assert policy.act(FollowerObservation(batch['image'][0], (0.0,) * 5, 0.0)) in ACTIONS
