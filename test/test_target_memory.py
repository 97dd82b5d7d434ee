# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""The target memory: sightings, features carried by odometry, in data and in the policy."""

import math

import numpy as np
import pytest
import torch

from vlit_ros.core.model import ModelConfig, VLITModel
from vlit_ros.core.model.memory import episode_memory_features, MEMORY_FEATURES, \
    patch_columns, sightings, TargetMemory
from vlit_ros.core.policy import ModelPolicy
from vlit_ros.training.presets import model_config

GRID = (6, 8)


def test_patch_columns_are_the_centres_with_left_positive():
    columns = patch_columns(GRID)
    assert columns.shape == (48,)
    assert columns[0] == pytest.approx(1 - 1 / 8) and columns[7] == pytest.approx(-1 + 1 / 8)
    assert np.array_equal(columns[:8], columns[8:16])


def test_a_sighting_needs_a_patch_at_one_half_and_gives_its_bearing():
    columns = patch_columns(GRID)
    maps = np.zeros((3, 48))
    maps[1, 8] = 0.9  # second row, leftmost column
    maps[2, [3, 4, 11, 12]] = 0.6  # the two middle columns
    maps[0, 5] = 0.49
    sighted, bearing = sightings(maps, columns)
    assert sighted.tolist() == [False, True, True]
    # 90 degree camera: the leftmost patch centre is 7/8 of the way to the edge.
    assert bearing[1] == pytest.approx(math.atan(7 / 8))
    assert bearing[2] == pytest.approx(0.0, abs=1e-12)


def test_memory_carries_the_bearing_by_odometry_and_ages():
    memory = TargetMemory()
    assert np.array_equal(memory.features(0.0, 0.0, 0.0, 0.0), np.zeros(MEMORY_FEATURES))
    memory.update(False, 0.3, 0.0, 0.0, 0.0, 0.5)
    assert not memory.seen
    # Seen 0.2 rad left of a heading of 0.5 rad: 0.7 rad in the instruction frame.
    memory.update(True, 0.2, 1.0, 0.0, 0.5, 2.0)
    seen, sin, cos, driven, recency = memory.features(1.0, 0.0, 0.7, 2.0)
    assert (seen, recency) == (1.0, 1.0)
    assert (sin, cos) == pytest.approx((0.0, 1.0), abs=1e-6)
    assert driven == 0.0
    # Turned right by 90 degrees since: the target is now on the left, 5 s later, 2 m on.
    seen, sin, cos, driven, recency = memory.features(1.0, 2.0, 0.7 - math.pi / 2, 7.0)
    assert (sin, cos) == pytest.approx((1.0, 0.0), abs=1e-6)
    assert driven == pytest.approx(math.tanh(2.0))
    assert recency == pytest.approx(math.exp(-1.0))
    # A frame without a sighting keeps the last one.
    memory.update(False, -1.0, 3.0, 3.0, 0.0, 9.0)
    assert memory.features(1.0, 0.0, 0.7, 2.0)[1:3] == pytest.approx((0.0, 1.0), abs=1e-6)


def test_episode_features_describe_the_frames_before_each_Frame():
    columns = patch_columns(GRID)
    maps = np.zeros((4, 48), np.float32)
    maps[0, 0] = 1.0
    maps[2, 7] = 1.0
    odom = np.zeros((4, 5))
    yaw_total = np.zeros(4)
    t = np.arange(4) * 0.1
    features = episode_memory_features(maps, columns, odom, yaw_total, t)
    assert features.shape == (4, MEMORY_FEATURES)
    assert not features[0].any()  # frame 0's own sighting is in its fused state
    assert features[1, 0] == 1.0 and features[1, 1] > 0.6  # seen on the left
    assert np.array_equal(features[2, :3], features[1, :3])
    assert features[3, 1] < -0.6  # the newer sighting, on the right, replaces it


class _Frame:
    image = np.full((96, 128, 3), 90, np.uint8)
    t = 0.0

    def __init__(self, yaw):
        self.odom = (0.0, 0.0, yaw, 0.0, 0.0)


def test_the_policy_remembers_what_its_own_map_saw():
    torch.manual_seed(0)
    model = VLITModel(model_config('tiny', 'builtin'))
    assert model.executor.memory and model.executor.odometry_width == 8 + MEMORY_FEATURES
    inputs = []
    model.executor.register_forward_hook(lambda module, args, output: inputs.append(
        args[1][0, 8:].clone()))
    policy = ModelPolicy(model)
    policy.reset('go to the red cube')
    with torch.no_grad():
        model.vlm.fusion.grounding.bias.fill_(-30.0)  # the map sees nothing
    policy.act(_Frame(0.0))
    policy.act(_Frame(0.0))
    assert not inputs[1].any()
    with torch.no_grad():
        model.vlm.fusion.grounding.bias.fill_(30.0)  # every patch: straight ahead
    policy.act(_Frame(0.0))
    policy.act(_Frame(0.5))
    assert inputs[3][0] == 1.0
    assert inputs[3][1:3].tolist() == pytest.approx([math.sin(-0.5), math.cos(-0.5)],
                                                    abs=1e-5)
    policy.reset('go to the blue sphere')  # a new instruction forgets
    policy.act(_Frame(0.5))
    assert not inputs[4].any()


def test_checkpoints_without_the_field_load_without_memory():
    data = model_config('tiny', 'builtin').to_dict()
    del data['executor']['memory_features']
    config = ModelConfig.from_dict(data)
    assert config.executor.memory_features is False
    assert VLITModel(config).executor.odometry_width == 8
    with pytest.raises(ValueError, match='memory_features'):
        type(config.executor)(memory_features=1)
