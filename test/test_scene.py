"""The seeded scene description."""

import math
from xml.etree import ElementTree as ET

import pytest

from vlit_ros.sim.mjcf import build_mjcf, object_geom_name
from vlit_ros.sim.scene import ObjectSpec, RobotSpec, Scene


def test_same_seed_same_scene_and_different_seeds_differ():
    assert Scene.generate(42) == Scene.generate(42)
    assert Scene.generate(42) != Scene.generate(43)


@pytest.mark.parametrize('seed', range(0, 400, 7))
def test_generated_scenes_follow_the_placement_rules(seed):
    scene = Scene.generate(seed)
    assert 3 <= len(scene.objects) <= 6
    assert len({o.name for o in scene.objects}) == len(scene.objects)
    for i, a in enumerate(scene.objects):
        assert abs(a.x) < 4 - a.footprint_radius and abs(a.y) < 4 - a.footprint_radius
        distance = math.hypot(a.x - scene.robot_x, a.y - scene.robot_y)
        assert distance >= 1.5 - 1e-6
        for b in scene.objects[i + 1:]:
            assert math.hypot(a.x - b.x, a.y - b.y) >= 1.2 - 1e-6


def test_yaml_round_trip_is_exact():
    scene = Scene.generate(5, robot=RobotSpec().shifted())
    assert Scene.from_yaml(scene.to_yaml()) == scene


def test_unknown_colour_and_shape_are_rejected_clearly():
    with pytest.raises(ValueError, match="unknown colour 'pink'.*known colours: red"):
        ObjectSpec('cube', 'pink', 0, 0, 0.2)
    with pytest.raises(ValueError, match="unknown shape 'cone'.*known shapes: cube"):
        ObjectSpec('cone', 'red', 0, 0, 0.2)


@pytest.mark.parametrize('change, message', [
    ({'objects': []}, 'at least one object'),
    ({'robot_x': 5.0}, 'outside the arena'),
    ({'version': 99}, 'version 99 is not supported'),
])
def test_malformed_scene_descriptions_are_rejected(change, message):
    data = Scene.generate(1).to_dict()
    data.update(change)
    with pytest.raises(ValueError, match=message):
        Scene.from_dict(data)


def test_duplicate_objects_and_bad_robot_specs_are_rejected():
    obj = ObjectSpec('cube', 'red', 1.0, 1.0, 0.2)
    with pytest.raises(ValueError, match='unique'):
        Scene(seed=0, objects=(obj, obj))
    with pytest.raises(ValueError, match='left_wheel_gain'):
        RobotSpec(left_wheel_gain=0.0)
    with pytest.raises(ValueError, match='camera_hfov_deg'):
        RobotSpec(camera_hfov_deg=200)


def test_cube_clearance_is_distance_to_the_square():
    cube = ObjectSpec('cube', 'red', 0.0, 0.0, 0.2)
    assert cube.clearance(0.5, 0.0) == pytest.approx(0.3)
    assert cube.clearance(0.5, 0.5) == pytest.approx(math.hypot(0.3, 0.3))
    assert cube.clearance(0.0, 0.0) == pytest.approx(-0.2)


def test_mjcf_places_every_object_where_the_scene_says():
    scene = Scene.generate(11)
    root = ET.fromstring(build_mjcf(scene))
    geoms = {g.get('name'): g for g in root.iter('geom')}
    for obj in scene.objects:
        x, y, _ = (float(v) for v in geoms[object_geom_name(obj)].get('pos').split())
        assert (x, y) == pytest.approx((obj.x, obj.y))
    camera = next(c for c in root.iter('camera') if c.get('name') == 'front_camera')
    assert float(camera.get('fovy')) == pytest.approx(scene.robot.camera_vfov_deg)
