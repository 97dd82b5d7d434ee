# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""bench/shape_grounding.py: the map asked about objects seen face on, by distance."""

import math
from pathlib import Path
import random

from bench_scripts import load_bench_script
import numpy as np

from vlit_ros.core.model import load_checkpoint
from vlit_ros.sim.scene import Scene

SHIPPED = Path(__file__).resolve().parents[1] / 'vlit_ros' / 'checkpoints' / 'default'


def test_view_poses_face_the_object_from_the_asked_distance():
    script = load_bench_script('shape_grounding')
    scene = Scene.generate(700000)
    rng = random.Random(0)
    for obj in scene.objects:
        pose = script.view_pose(scene, obj, 1.5, rng)
        assert pose is not None
        x, y, yaw = pose
        assert abs(math.hypot(obj.x - x, obj.y - y) - 1.5) < 1e-6
        assert abs(math.atan2(obj.y - y, obj.x - x) - yaw) < 1e-9
        assert all(other.clearance(x, y) >= scene.robot.radius for other in scene.objects)
        texts = script.questions(obj, rng)
        assert texts[0] == f'go to the {obj.color} {obj.shape}'
        assert texts[1].startswith(f'go to the {obj.color} ') and obj.shape not in texts[1]
        assert texts[2].endswith(f' {obj.shape}') and obj.color not in texts[2]


def test_probe_renders_the_object_in_view_and_scores_the_three_questions():
    script = load_bench_script('shape_grounding')
    views = script.collect_views([700000], (1.0, 3.0), progress=False)
    assert views and {v['distance'] for v in views} <= {1.0, 3.0}
    for view in views:
        assert view['image'].shape == (96, 128, 3) and view['image'].dtype == np.uint8
        left, right, top, bottom = view['box']
        assert 0.0 <= left < right <= 1.0 and 0.0 <= top < bottom <= 1.0
    near = [v for v in views if v['distance'] == 1.0]
    far = [v for v in views if v['distance'] == 3.0]
    # the same object fills more of the image close up
    width = lambda vs: np.mean([v['box'][1] - v['box'][0] for v in vs])  # noqa: E731
    assert width(near) > 2 * width(far)
    model = load_checkpoint(SHIPPED).eval()
    scores = script.answers(model, views)
    assert scores.shape == (len(views), 3) and np.all((scores >= 0) & (scores <= 1))
    summary = script.summarise(views, scores, (1.0, 3.0))
    assert sum(row['views'] for row in summary['rows']) == len(views)
    # the shipped map tells colours apart: the own name beats another colour close up
    assert summary['rows'][0]['own_above_other_colour'] >= 0.8
    assert '| 1 m |' in script.format_table(summary, 'title')


def test_probe_rejects_no_scenes(capsys):
    script = load_bench_script('shape_grounding')
    assert script.main(['--scenes', '0']) == 2
    assert '--scenes must be at least 1' in capsys.readouterr().err


def test_probe_refuses_a_checkpoint_it_cannot_load(tmp_path, capsys):
    script = load_bench_script('shape_grounding')
    assert script.main(['--checkpoint', str(tmp_path / 'missing')]) == 2
    assert 'error:' in capsys.readouterr().err


def test_feature_probe_classifies_colour_from_the_image_features():
    script = load_bench_script('shape_grounding')
    views = script.collect_views(range(700000, 700004), (1.0,), progress=False)
    probe = script.feature_probe(load_checkpoint(SHIPPED).eval(), views)
    assert probe['train_views'] > 0 and probe['test_views'] > 0
    for name in ('vision encoder', 'projector'):
        assert 0.0 <= probe[name]['shape'] <= 1.0
        # colour is plain in the features of the object's patches
        assert probe[name]['colour'] >= 0.6, probe
