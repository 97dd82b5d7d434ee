# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""The Visual Genome loader on a tiny fixture in the VG region-description format."""

import json

import cv2
import numpy as np
import pytest

from vlit_ros.training.shards import iter_shards, read_json
from vlit_ros.training.visual_genome import convert_visual_genome, crop_region, iter_pairs, \
    Region


def _make_fixture(root):
    """Two images (one in a VG_100K-style subfolder), regions of several kinds."""
    images = root / 'images'
    (images / 'VG_100K').mkdir(parents=True)
    first = np.zeros((200, 300, 3), np.uint8)
    first[50:150, 40:140] = (0, 0, 255)  # a red square in BGR
    cv2.imwrite(str(images / '1.jpg'), first)
    second = np.full((120, 160, 3), 255, np.uint8)
    second[10:60, 100:150] = (255, 0, 0)  # a blue square in BGR
    cv2.imwrite(str(images / 'VG_100K' / '2.png'), second)
    regions = [
        {'id': 1, 'regions': [
            {'region_id': 10, 'image_id': 1, 'phrase': 'A Red Square', 'x': 40, 'y': 50,
             'width': 100, 'height': 100},
            {'region_id': 11, 'image_id': 1, 'phrase': 'tiny speck', 'x': 5, 'y': 5,
             'width': 3, 'height': 3},
            {'region_id': 12, 'image_id': 1, 'phrase': 'black background', 'x': 150,
             'y': 0, 'width': 150, 'height': 200},
        ]},
        {'id': 2, 'regions': [
            {'region_id': 20, 'image_id': 2, 'phrase': 'blue box on white', 'x': 100,
             'y': 10, 'width': 50, 'height': 50},
            {'region_id': 21, 'image_id': 2, 'phrase': '   ', 'x': 0, 'y': 0, 'width': 50,
             'height': 50},
        ]},
        {'id': 3, 'regions': [
            {'region_id': 30, 'image_id': 3, 'phrase': 'image file missing', 'x': 0,
             'y': 0, 'width': 50, 'height': 50},
        ]},
    ]
    (root / 'region_descriptions.json').write_text(json.dumps(regions))


def test_pairs_are_crops_at_camera_size_with_phrases(tmp_path):
    _make_fixture(tmp_path)
    pairs = list(iter_pairs(tmp_path, width=128, height=96))
    phrases = [p[1] for p in pairs]
    # The 3-pixel region, the blank phrase and the missing image are skipped.
    assert phrases == ['a red square', 'black background', 'blue box on white']
    for image, _, _ in pairs:
        assert image.shape == (96, 128, 3) and image.dtype == np.uint8
    red, _, _ = pairs[0]
    centre = red[40:56, 56:72].reshape(-1, 3).mean(axis=0)
    assert centre[0] > 200 and centre[1] < 50 and centre[2] < 50  # RGB order
    blue, _, _ = pairs[2]
    centre = blue[40:56, 56:72].reshape(-1, 3).mean(axis=0)
    assert centre[2] > 200 and centre[0] < 50


def test_crop_keeps_aspect_and_stays_inside_the_image():
    image = np.arange(50 * 80 * 3, dtype=np.uint8).reshape(50, 80, 3)
    crop = crop_region(image, Region(1, 'x', 70, 40, 30, 30), 64, 48)
    assert crop.shape == (48, 64, 3)
    assert crop_region(image, Region(1, 'x', 200, 200, 30, 30), 64, 48) is None


def test_convert_writes_caption_shards_with_negatives_from_other_images(tmp_path):
    _make_fixture(tmp_path / 'vg')
    manifest = convert_visual_genome(tmp_path / 'vg', tmp_path / 'out', progress=False)
    assert manifest['counts']['caption_views'] == 3
    assert read_json(tmp_path / 'out' / 'manifest.json') == manifest
    [(arrays, meta)] = list(iter_shards(tmp_path / 'out', 'captions'))
    assert arrays['image'].shape == (3, 96, 128, 3)
    assert meta['captions'] == ['a red square', 'black background', 'blue box on white']
    # A negative always comes from a different image.
    assert meta['negatives'][2] in ('a red square', 'black background')
    assert meta['negatives'][0] == meta['negatives'][1] == 'blue box on white'


def test_malformed_regions_file_is_reported(tmp_path):
    (tmp_path / 'images').mkdir()
    (tmp_path / 'region_descriptions.json').write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match='expected a list'):
        list(iter_pairs(tmp_path))
