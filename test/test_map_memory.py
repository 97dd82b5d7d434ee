# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""Map memory: the features, the executor that reads them, the policy and training alike."""

import dataclasses
import math

import numpy as np
import pytest
from tiny_models import tiny_config
import torch

from vlit_ros.core.follower_logic import FollowerObservation
from vlit_ros.core.model import ModelConfig, VLITModel
from vlit_ros.core.model.executor import ODOMETRY_FEATURES
from vlit_ros.core.model.memory import (episode_memory_features, MapMemory, MEMORY_FEATURES,
                                        memory_features, patch_bearings)
from vlit_ros.core.online import pack_transition, unpack_transition
from vlit_ros.core.policy import ModelPolicy
from vlit_ros.sim.tasks import FAMILIES
from vlit_ros.training import finetune
from vlit_ros.training.datasets import TrajectorySet

GRID = (2, 4)
BEARINGS = patch_bearings(GRID, 90.0)


def memory_config(**executor):
    config = tiny_config('builtin')
    return dataclasses.replace(config, executor=dataclasses.replace(
        config.executor, map_memory=True, **executor))


def one_hot_map(patch, value):
    probabilities = np.full(GRID[0] * GRID[1], 0.01, np.float32)
    probabilities[patch] = value
    return probabilities


def test_patch_bearings_are_symmetric_left_positive_and_within_the_field_of_view():
    assert BEARINGS.shape == (8,)
    # token order: row by row, columns left to right; + is to the left
    assert BEARINGS[0] > BEARINGS[1] > 0 > BEARINGS[2] > BEARINGS[3]
    np.testing.assert_allclose(BEARINGS[:4], -BEARINGS[:4][::-1])
    np.testing.assert_allclose(BEARINGS[:4], BEARINGS[4:])
    # the outer column's centre: atan(0.75 * tan(45 deg))
    assert BEARINGS[0] == pytest.approx(math.atan(0.75))


def test_memory_remembers_the_strongest_decayed_sighting_in_the_instruction_frame():
    memory = MapMemory(decay_s=4.0)
    assert not memory.features(0.0, 0.0, 0.0, 0.0).any(), 'nothing seen yet: all zeros'
    # Seen in the left outer column while heading 0.
    memory.update(one_hot_map(0, 0.8), BEARINGS, 0.0, 0.0, 0.0, 1.0)
    strength, sine, cosine, driven, peak = memory.features(0.0, 0.0, 0.0, 1.0)
    assert (strength, peak, driven) == (pytest.approx(0.8), pytest.approx(0.8), 0.0)
    assert math.atan2(sine, cosine) == pytest.approx(BEARINGS[0])
    # Having turned left by that bearing, the sighting is straight ahead; it has decayed.
    later = memory.features(0.3, 0.4, float(BEARINGS[0]), 5.0)
    assert math.atan2(later[1], later[2]) == pytest.approx(0.0, abs=1e-6)
    assert later[0] == pytest.approx(0.8 * math.exp(-1.0))
    assert later[3] == pytest.approx(math.tanh(0.5)) and later[4] == pytest.approx(0.8)
    # A weaker map does not replace a strong recent sighting; one above its decayed
    # strength does.
    memory.update(one_hot_map(3, 0.5), BEARINGS, 0.0, 0.0, 0.0, 2.0)
    assert memory.peak == pytest.approx(0.8)
    memory.update(one_hot_map(3, 0.5), BEARINGS, 0.0, 0.0, 0.0, 9.0)
    assert memory.peak == pytest.approx(0.5) and memory.bearing == pytest.approx(BEARINGS[3])
    with pytest.raises(ValueError, match='decay'):
        MapMemory(decay_s=0.0)


def test_episode_features_start_over_at_each_episode_and_see_only_earlier_frames():
    rng = np.random.default_rng(0)
    frames = 7
    maps = rng.uniform(0.0, 1.0, (frames, 8)).astype(np.float32)
    odom = rng.normal(size=(frames, 5)).astype(np.float32)
    yaw_total = np.cumsum(rng.normal(size=frames)).astype(np.float32)
    t = np.arange(frames, dtype=np.float32) * 0.1
    first = np.array([True, False, False, False, True, False, False])
    features = memory_features(maps, BEARINGS, odom, yaw_total, t, first, 8.0)
    assert features.shape == (frames, MEMORY_FEATURES)
    assert not features[0].any() and not features[4].any()
    np.testing.assert_array_equal(features[4:], episode_memory_features(
        maps[4:], BEARINGS, odom[4:], yaw_total[4:], t[4:], 8.0))
    # frame 2 reads the maps of frames 0 and 1 only
    changed = maps.copy()
    changed[2:4] = 0.99
    np.testing.assert_array_equal(
        memory_features(changed, BEARINGS, odom, yaw_total, t, first, 8.0)[:3], features[:3])
    with pytest.raises(ValueError, match='first frame of an episode'):
        memory_features(maps[1:], BEARINGS, odom[1:], yaw_total[1:], t[1:], first[1:], 8.0)


def test_a_new_memory_executor_ignores_the_memory_until_trained_and_checks_its_shape():
    torch.manual_seed(0)
    model = VLITModel(memory_config()).eval()
    assert model.executor.memory and model.executor.odometry_width == ODOMETRY_FEATURES + 5
    batch = {'image': np.random.default_rng(1).integers(0, 256, (3, 96, 128, 3), np.uint8),
             'text': ['go to the red cube'] * 3, 'odom': np.zeros((3, 5), np.float32),
             't': np.zeros(3, np.float32)}
    with torch.no_grad():
        plain = model(batch)[0].logits
        remembered = model(dict(batch, memory=np.ones((3, MEMORY_FEATURES), np.float32)))[0]
    torch.testing.assert_close(plain, remembered.logits)
    with pytest.raises(ValueError, match='memory features must be'):
        model(dict(batch, memory=np.ones((3, 2), np.float32)))
    # Old configs have no map_memory field: they describe executors without memory.
    data = model.config.to_dict()
    del data['executor']['map_memory']
    assert ModelConfig.from_dict(data).executor.map_memory is False


def test_policy_feeds_the_memory_training_computes_from_the_same_maps():
    torch.manual_seed(1)
    model = VLITModel(memory_config())
    with torch.no_grad():  # a trained executor reads its memory
        model.executor.body[0].weight.normal_(0.0, 0.3)
    policy = ModelPolicy(model)
    seen = []

    def record(module, args, output):
        seen.append(args[1][0, ODOMETRY_FEATURES:].clone())

    hook = model.executor.register_forward_hook(record)
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (12, 96, 128, 3), np.uint8)
    odom = np.zeros((12, 5))
    odom[:, 0] = np.linspace(0.0, 0.6, 12)
    odom[:, 2] = np.linspace(0.0, 2.0, 12)  # turning left, wrapped yaw stays below pi
    t = np.arange(12) * 0.1
    instruction = 'go to the blue sphere'
    policy.reset(instruction)
    for row in range(12):
        policy.act(FollowerObservation(images[row], tuple(odom[row]), float(t[row])))
    hook.remove()
    # The maps as training computes them (`refresh_map_memory`'s call), from the same frames.
    with torch.no_grad():
        maps = torch.sigmoid(model.vlm.grounding_logits(torch.from_numpy(images),
                                                        [instruction] * 12)).numpy()
    bearings = patch_bearings(model.vlm.vision.grid, 90.0)
    expected = episode_memory_features(maps, bearings, odom, odom[:, 2], t, 8.0)
    np.testing.assert_allclose(torch.stack(seen).numpy(), expected, atol=1e-5)
    assert expected[1:, 0].min() > 0.0, 'the map always has a strongest patch'


def _recorded_turns(episodes=2):
    """Two short expert-driven turn episodes, recorded as data generation records them."""
    import random
    from vlit_ros.sim.episode import make_episode, TRAINING_SEED_BASE
    from vlit_ros.sim.scene import Scene
    from vlit_ros.sim.world import World
    from vlit_ros.training.phrasings import training_instruction
    from vlit_ros.training.recording import FrameBuffer, NoisyExpertChooser, record_episode
    buffer = FrameBuffer()
    for index in range(episodes):
        seed = TRAINING_SEED_BASE + index
        instruction = training_instruction(Scene.generate(seed), 'turn', random.Random(seed))
        spec = make_episode(0, seed, [instruction])
        with World(scene=spec.scene) as world:
            record_episode(world, spec, buffer, index, NoisyExpertChooser(random.Random(0), 0.0))
    arrays = buffer.arrays((96, 128, 3))
    return TrajectorySet.from_shards([(arrays, {'episodes': buffer.episodes})], FAMILIES, 0)


def test_training_refreshes_the_memory_from_the_models_own_maps():
    torch.manual_seed(2)
    model = VLITModel(memory_config())
    data = _recorded_turns()
    frames = len(data)
    second = int(np.flatnonzero(data.arrays['step'] == 0)[1])
    assert data.memory is None
    model.train()
    finetune.refresh_map_memory(model, data, batch_size=4)
    assert model.training, 'the refresh restores training mode'
    assert data.memory.shape == (frames, MEMORY_FEATURES)
    assert not data.memory[0].any() and not data.memory[second].any()
    assert data.memory[1:second, 0].min() > 0.0
    with torch.no_grad():
        logits = model.vlm.grounding_logits(torch.from_numpy(data.arrays['image']),
                                            [data.texts[i] for i in data.text_index])
    maps = torch.sigmoid(logits).numpy()
    arrays = data.arrays
    expected = memory_features(maps, patch_bearings(model.vlm.vision.grid, 90.0),
                               arrays['odom'], arrays['yaw_total'], arrays['t'],
                               arrays['step'] == 0, 8.0)
    np.testing.assert_allclose(data.memory, expected, atol=1e-5)
    batch = finetune.FamilyBatches(data, 4, 0, finetune.loop.DistributedContext()).batch(0)
    assert batch['memory'].shape == (4, MEMORY_FEATURES)


def test_experience_carries_the_memory_and_is_checked_against_the_model():
    from vlit_ros.core.online import Transition
    transition = Transition(
        fused=np.zeros(6, np.float32), odometry=np.arange(13, dtype=np.float32),
        prev_action=0, action=1, log_prob=-0.5, value=0.1, policy_version='v', stamp=1.0,
        episode=0, temperature=1.0)
    header, values = pack_transition(transition)
    back = unpack_transition(header, values, state_dim=6, odometry_dim=13)
    np.testing.assert_array_equal(back.odometry, transition.odometry)
    np.testing.assert_array_equal(back.fused, transition.fused)
    with pytest.raises(ValueError, match='executor takes 8'):
        unpack_transition(header, values, state_dim=6, odometry_dim=8)
    with pytest.raises(ValueError, match='odometry_dim 11'):
        unpack_transition(dict(header, odometry_dim=11), values)


def test_finetune_with_map_memory_trains_the_memory_weights_and_acts(tmp_path):
    from vlit_ros.cli import main
    data, out = tmp_path / 'data', tmp_path / 'finetune'
    assert main(['gen-data', '--out', str(data), '--caption-scenes', '1', '--views-per-scene',
                 '2', '--trajectory-scenes', '2', '--quiet']) == 0
    assert main(['finetune', '--data', str(data), '--out', str(out), '--map-memory',
                 '--preset', 'tiny', '--text-encoder', 'builtin', '--steps', '6',
                 '--batch-size', '8', '--warmup', '1', '--dagger-rounds', '0',
                 '--task-warmup-steps', '0', '--eval-episodes', '0', '--threads', '2',
                 '--quiet']) == 0
    policy = ModelPolicy.from_checkpoint(out)
    executor = policy.model.executor
    assert executor.memory
    first = policy.model.vlm.state_dim + ODOMETRY_FEATURES
    # zero until the refresh halfway through cloning, trained after it
    assert executor.body[0].weight[:, first:first + MEMORY_FEATURES].abs().sum() > 0
    policy.reset('go to the red cube')
    image = np.zeros((96, 128, 3), np.uint8)
    policy.act(FollowerObservation(image, (0.0,) * 5, 0.0))
    assert policy._robots[0].memory.peak > 0.0
