# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""The zoomed map: a 2x zoom of the image centre, scored and merged into the grounding map."""

from dataclasses import replace

import numpy as np
import pytest
from tiny_models import tiny_config
import torch
from vlit_ros.core.model import (FusionConfig, load_checkpoint, ModelConfig, save_checkpoint,
                                 VLITModel)
from vlit_ros.core.model.zoom import centre_zoom, merge_zoom_logits, zoom_boxes, zoom_cells
from vlit_ros.core.policy import ModelPolicy
from vlit_ros.policies import load_policy
from vlit_ros.sim.episode import Observation
from vlit_ros.training.datasets import grounding_labels


def test_the_zoom_is_the_centre_half_upsampled():
    images = torch.zeros((1, 96, 128, 3), dtype=torch.uint8)
    images[0, 44:52, 60:68] = 200  # an 8-pixel square at the centre ...
    zoomed = centre_zoom(images)
    assert zoomed.shape == images.shape and zoomed.dtype == torch.uint8
    lit = torch.nonzero(zoomed[0, :, :, 0] > 100)
    # ... is 16 pixels wide in the zoom, still at the centre.
    assert lit[:, 0].min() == 40 and lit[:, 0].max() == 55
    assert lit[:, 1].min() == 56 and lit[:, 1].max() == 71
    with pytest.raises(ValueError, match='leaves an image'):
        centre_zoom(images, top=60)


def test_zoomed_patches_fall_in_the_full_patches_of_the_centre():
    cells = zoom_cells((6, 8), (96, 128)).view(6, 8)
    # Rows 24-72 and columns 32-96 of the image: full rows 1-4, full columns 2-5.
    assert cells[0, 0] == 1 * 8 + 2 and cells[5, 7] == 4 * 8 + 5
    assert set(cells.flatten().tolist()) == {r * 8 + c for r in range(1, 5) for c in range(2, 6)}
    # Each inner full patch holds four zoomed ones; the top and bottom rows two.
    counts = np.bincount(cells.flatten().numpy(), minlength=48).reshape(6, 8)
    assert (counts[2:4, 2:6] == 4).all() and (counts[[1, 4], 2:6] == 2).all()


def test_the_merged_map_keeps_the_higher_logit_of_each_patch():
    full = torch.full((2, 48), -3.0)
    full[0, 0] = 2.0
    zoom = torch.full((2, 48), -5.0)
    zoom[1, 0] = 4.0  # top-left zoomed patch -> full patch (1, 2)
    merged = merge_zoom_logits(full, zoom, zoom_cells((6, 8), (96, 128)))
    assert merged[0, 0] == 2.0 and (merged[0, 1:] == -3.0).all()
    assert merged[1, 1 * 8 + 2] == 4.0 and (merged[1].sum() == -3.0 * 47 + 4.0)
    assert (full[1] == -3.0).all(), 'the full map is not changed in place'


def test_the_zoomed_policy_acts_and_its_map_is_at_least_the_full_one():
    torch.manual_seed(0)
    model = VLITModel(tiny_config('builtin')).eval()
    images = torch.randint(0, 255, (2, 96, 128, 3), dtype=torch.uint8)
    text = model.vlm.encode_instructions(['go to the red cube', 'find the ball'])
    odometry = torch.zeros((2, model.executor.odometry_width))
    previous = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        plain, plain_map = model.frame_forward(images, text, odometry, previous)
        zoomed, zoomed_map = model.zoomed_frame_forward(images, text, odometry, previous)
    assert zoomed.logits.shape == plain.logits.shape
    assert (zoomed_map >= plain_map - 1e-6).all() and (zoomed_map > plain_map + 1e-6).any()
    # Outside the centre the map is the full image's.
    outside = torch.ones(48, dtype=torch.bool)
    outside[zoom_cells((6, 8), (96, 128))] = False
    torch.testing.assert_close(zoomed_map[:, outside], plain_map[:, outside])
    policy = ModelPolicy(model, zoom_map=True)
    assert policy.runner.zoom_map
    policy.reset('go to the red cube')

    class _World:
        def render(self):
            return images[0].numpy()

    obs = Observation(_World(), (0.0, 0.0, 0.0, 0.0, 0.0), 0.0)
    assert isinstance(policy.act(obs), str)


def test_only_the_model_policy_takes_the_zoomed_map():
    with pytest.raises(ValueError, match='model policy only'):
        load_policy('expert', zoom_map=True)


def test_a_model_configured_with_the_zoomed_map_reads_it_everywhere(tmp_path):
    torch.manual_seed(0)
    config = tiny_config('builtin')
    plain = VLITModel(config).eval()
    zooming = VLITModel(replace(config, fusion=replace(config.fusion, zoom_map=True))).eval()
    zooming.load_state_dict(plain.state_dict())
    images = torch.randint(0, 255, (2, 96, 128, 3), dtype=torch.uint8)
    texts = ['go to the red cube', 'find the ball']
    text = zooming.vlm.encode_instructions(texts)
    previous = torch.zeros(2, dtype=torch.long)
    batch = {'image': images.numpy(), 'text': texts, 'odom': np.zeros((2, 5), np.float32),
             't': np.zeros(2, np.float32), 'prev_action': previous.numpy()}
    odometry = zooming.batch_odometry(batch)
    with torch.no_grad():
        configured, configured_map = zooming.frame_forward(images, text, odometry, previous)
        asked, asked_map = plain.zoomed_frame_forward(images, text, odometry, previous)
        unzoomed, _ = plain.frame_forward(images, text, odometry, previous)
        # The batch path (training, DAgger's labels) reads the same merged map.
        batched, _ = zooming(batch)
    torch.testing.assert_close(configured.logits, asked.logits)
    torch.testing.assert_close(configured_map, asked_map)
    torch.testing.assert_close(batched.logits, configured.logits)
    assert not torch.equal(configured.logits, unzoomed.logits)
    with torch.no_grad():
        assert not torch.allclose(zooming.vlm.fuse_images(images, text).state,
                                  plain.vlm.fuse_images(images, text).state)
    with torch.no_grad():
        torch.testing.assert_close(zooming.vlm.grounding_logits(images, texts),
                                   plain.vlm.grounding_logits(images, texts, zoom=True))
        assert not torch.allclose(zooming.vlm.grounding_logits(images, texts, zoom=False),
                                  zooming.vlm.grounding_logits(images, texts))
    # The zoom's pass carries no gradient: training pays a forward pass for it, not more.
    assert not zooming.vlm.zoom_tokens(images).requires_grad
    assert zooming.vlm.image_tokens(zooming.vlm.preprocess(images)).requires_grad
    assert ModelPolicy(zooming).runner.zoom_map and not ModelPolicy(plain).runner.zoom_map
    # The setting is part of the checkpoint; a config.json from before it reads false.
    save_checkpoint(zooming, tmp_path / 'zooming')
    assert load_checkpoint(tmp_path / 'zooming').vlm.fusion.zoom_map
    old = zooming.config.to_dict()
    del old['fusion']['zoom_map']
    assert ModelConfig.from_dict(old).fusion.zoom_map is False


def test_the_zoomed_map_setting_is_checked():
    with pytest.raises(ValueError, match='zoom_map must be true or false'):
        FusionConfig(zoom_map='yes')
    with pytest.raises(ValueError, match='zoom_map needs a grounding map'):
        FusionConfig(grounding_dim=0, zoom_map=True)


def test_boxes_map_into_the_zoom_and_those_outside_it_become_empty():
    boxes = np.array([[0.5, 0.625, 0.5, 0.75],   # inside the crop (x 0.25-0.75, y 0.25-0.75)
                      [0.0, 0.375, 0.6, 0.9],    # partly inside: clipped at the crop's edges
                      [0.8, 0.9, 0.4, 0.5],      # right of the crop
                      [0.0, 0.0, 0.0, 0.0]], np.float32)  # no box
    zoomed = zoom_boxes(boxes, (96, 128))
    np.testing.assert_allclose(zoomed[0], [0.5, 0.75, 0.5, 1.0])
    np.testing.assert_allclose(zoomed[1], [0.0, 0.25, 0.7, 1.0])
    assert (zoomed[2:] == 0.0).all()
    # A far target's box covers four times the share of a patch in the zoom.
    far = np.array([[0.5, 0.53125, 0.5, 0.541667]], np.float32)
    assert grounding_labels(zoom_boxes(far, (96, 128)), (6, 8)).max() == pytest.approx(
        4 * grounding_labels(far, (6, 8)).max(), rel=1e-4)
