"""
The Gazebo SDF world: well-formed, complete, and the same world as the MuJoCo model.

Pure Python: the SDF and the MJCF are parsed with ElementTree and compared for several seeds
(objects, walls, floor, robot body, camera) and against the MuJoCo world's start pose.
Checking the file with Gazebo's own parser (`gz sdf -k`) runs only where Gazebo is installed.
"""

import math
from pathlib import Path
import shutil
import subprocess
from xml.etree import ElementTree as ET

import pytest

from vlit_ros.cli import main as cli_main
from vlit_ros.gazebo import sdf
from vlit_ros.gazebo.bridge import BRIDGE_FILE_NAME, bridge_yaml, gz_topic, ROBOT_MODEL
from vlit_ros.sim import mjcf
from vlit_ros.sim.scene import RobotSpec, Scene
from vlit_ros.sim.world import World

SEEDS = (0, 1, 7, 42, 1234, 999_999)


def _floats(text):
    return [float(v) for v in text.split()]


def _pose(element):
    pose = element.find('pose')
    return _floats(pose.text) if pose is not None else [0.0] * 6


def _world(scene):
    root = ET.fromstring(sdf.build_world_sdf(scene))
    assert root.tag == 'sdf' and root.get('version') == sdf.SDF_VERSION
    return root.find('world')


def _models(world):
    return {m.get('name'): m for m in world.findall('model')}


def _mjcf_geoms(scene):
    root = ET.fromstring(mjcf.build_mjcf(scene))
    return {g.get('name'): g for g in root.iter('geom')}


def _plugins(parent):
    return {p.get('name'): p for p in parent.findall('plugin')}


def _canonical(element):
    return (element.tag, (element.text or '').strip(),
            tuple(_canonical(child) for child in element))


def _geometry(link, name):
    visual = link.find(f"visual[@name='{name}_visual']/geometry")
    collision = link.find(f"collision[@name='{name}_collision']/geometry")
    assert _canonical(visual) == _canonical(collision), f'{name}: visual != collision'
    return visual[0]


@pytest.fixture(params=SEEDS)
def scene(request):
    return Scene.generate(request.param)


def test_world_is_well_formed_and_has_the_world_systems(scene):
    world = _world(scene)
    plugins = _plugins(world)
    assert {(p.get('filename'), name) for name, p in plugins.items()} == set(sdf.WORLD_SYSTEMS)
    sensors = plugins['gz::sim::systems::Sensors']
    assert sensors.findtext('render_engine') == sdf.RENDER_ENGINE
    assert float(world.findtext('physics/max_step_size')) == sdf.PHYSICS_STEP_S
    assert world.find("light[@type='directional']") is not None
    for pose in world.iter('pose'):
        values = _floats(pose.text)
        assert len(values) == 6 and all(math.isfinite(v) for v in values)


def test_objects_match_the_mjcf(scene):
    models = _models(_world(scene))
    geoms = _mjcf_geoms(scene)
    object_geoms = {n: g for n, g in geoms.items() if n.startswith(mjcf.OBJECT_PREFIX)}
    assert len(object_geoms) == len(scene.objects)
    assert set(object_geoms) <= set(models)
    for name, geom in object_geoms.items():
        model = models[name]
        assert model.findtext('static') == 'true'
        assert _pose(model) == pytest.approx(_floats(geom.get('pos')) + [0.0] * 3, abs=1e-9)
        size = _floats(geom.get('size'))
        shape = _geometry(model.find('link'), 'body')
        if geom.get('type') == 'box':
            assert shape.tag == 'box'
            assert _floats(shape.findtext('size')) == pytest.approx([2 * s for s in size])
        elif geom.get('type') == 'sphere':
            assert shape.tag == 'sphere'
            assert float(shape.findtext('radius')) == pytest.approx(size[0])
        else:
            assert (geom.get('type'), shape.tag) == ('cylinder', 'cylinder')
            assert float(shape.findtext('radius')) == pytest.approx(size[0])
            assert float(shape.findtext('length')) == pytest.approx(2 * size[1])
        diffuse = _floats(model.findtext('link/visual/material/diffuse'))
        assert diffuse == pytest.approx(_floats(geom.get('rgba')), abs=1e-6)


def test_arena_matches_the_mjcf(scene):
    models = _models(_world(scene))
    geoms = _mjcf_geoms(scene)
    walls = [n for n in geoms if n.startswith('wall_')]
    assert len(walls) == 4
    for name in walls:
        geom, model = geoms[name], models[name]
        assert _pose(model)[:3] == pytest.approx(_floats(geom.get('pos')))
        shape = _geometry(model.find('link'), 'body')
        assert _floats(shape.findtext('size')) == \
            pytest.approx([2 * s for s in _floats(geom.get('size'))])
    floor = _geometry(models[sdf.FLOOR_MODEL].find('link'), 'ground')
    assert _floats(floor.findtext('size')) == \
        pytest.approx([2 * s for s in _floats(geoms['floor'].get('size'))[:2]])


def test_robot_start_pose_matches_the_mujoco_world(scene):
    robot = _models(_world(scene))[ROBOT_MODEL]
    x, y, z, roll, pitch, yaw = _pose(robot)
    with World(scene) as world:
        start = world.pose()
    assert (x, y) == pytest.approx(start[:2], abs=1e-9)
    assert math.remainder(yaw - start[2], 2 * math.pi) == pytest.approx(0.0, abs=1e-9)
    assert (z, roll, pitch) == (0.0, 0.0, 0.0)
    assert robot.findtext('static') is None


@pytest.mark.parametrize('robot_spec', [RobotSpec(), RobotSpec().shifted(),
                                        RobotSpec(camera_hfov_deg=60.0, image_width=160,
                                                  image_height=120, camera_height=0.4)],
                         ids=['nominal', 'shifted', 'custom'])
def test_robot_body_and_camera_match_the_mjcf(robot_spec):
    scene = Scene.generate(11, robot=robot_spec)
    robot = _models(_world(scene))[ROBOT_MODEL]
    geoms = _mjcf_geoms(scene)
    base_link = robot.find(f"link[@name='{sdf.BASE_LINK}']")
    base = _geometry(base_link, 'base')
    mj_base = geoms[mjcf.ROBOT_GEOM]
    radius, half_height = _floats(mj_base.get('size'))
    assert (float(base.findtext('radius')), float(base.findtext('length'))) == \
        pytest.approx((radius, 2 * half_height))
    assert _pose(base_link.find("collision[@name='base_collision']"))[:3] == \
        pytest.approx(_floats(mj_base.get('pos')))

    mj_camera = ET.fromstring(mjcf.build_mjcf(scene)).find(".//camera[@name='front_camera']")
    sensor = base_link.find(f"sensor[@name='{sdf.CAMERA_SENSOR}']")
    assert sensor.get('type') == 'camera'
    pose = _pose(sensor)
    assert pose[:3] == pytest.approx(_floats(mj_camera.get('pos')))
    right_x, right_y = _floats(mj_camera.get('xyaxes'))[:2]
    assert pose[5] == pytest.approx(math.atan2(right_x, -right_y), abs=1e-6)
    assert pose[5] == pytest.approx(math.radians(robot_spec.camera_yaw_deg))
    camera = sensor.find('camera')
    width = int(camera.findtext('image/width'))
    height = int(camera.findtext('image/height'))
    assert (width, height) == (robot_spec.image_width, robot_spec.image_height)
    assert camera.findtext('image/format') == 'R8G8B8'
    hfov = float(camera.findtext('horizontal_fov'))
    assert hfov == pytest.approx(math.radians(robot_spec.camera_hfov_deg), abs=1e-8)
    # MuJoCo takes the vertical field of view; both must describe the same pinhole camera.
    fovy = math.radians(float(mj_camera.get('fovy')))
    assert math.tan(hfov / 2) == pytest.approx(math.tan(fovy / 2) * width / height, rel=1e-5)
    assert float(sensor.findtext('update_rate')) == 10.0
    assert sensor.findtext('topic') == gz_topic('camera/image_raw')
    assert camera.findtext('camera_info_topic') == gz_topic('camera/camera_info')


def test_default_camera_is_128x96_with_a_90_degree_field_of_view():
    camera = _models(_world(Scene.generate(0)))[ROBOT_MODEL].find('link/sensor/camera')
    assert (camera.findtext('image/width'), camera.findtext('image/height')) == ('128', '96')
    assert float(camera.findtext('horizontal_fov')) == pytest.approx(math.pi / 2)


@pytest.mark.parametrize('robot_spec', [RobotSpec(), RobotSpec().shifted(),
                                        RobotSpec(right_wheel_gain=1.5, wheel_base=0.3)],
                         ids=['nominal', 'shifted', 'strong_right'])
def test_diff_drive_follows_the_robot_spec(robot_spec):
    robot = _models(_world(Scene.generate(5, robot=robot_spec)))[ROBOT_MODEL]
    drive = _plugins(robot)['gz::sim::systems::DiffDrive']
    assert drive.get('filename') == 'gz-sim-diff-drive-system'
    assert float(drive.findtext('wheel_separation')) == pytest.approx(robot_spec.wheel_base)
    assert float(drive.findtext('wheel_radius')) == pytest.approx(robot_spec.wheel_radius)
    assert float(drive.findtext('max_linear_acceleration')) == robot_spec.max_linear_accel
    assert float(drive.findtext('min_linear_acceleration')) == -robot_spec.max_linear_accel
    assert float(drive.findtext('max_angular_acceleration')) == robot_spec.max_angular_accel
    assert drive.findtext('topic') == gz_topic('cmd_vel')
    assert drive.findtext('odom_topic') == gz_topic('odom')
    gains = {'left': robot_spec.left_wheel_gain, 'right': robot_spec.right_wheel_gain}
    for side, sign in (('left', 1.0), ('right', -1.0)):
        joint = robot.find(f"joint[@name='{drive.findtext(f'{side}_joint')}']")
        assert joint.get('type') == 'revolute'
        assert joint.findtext('parent') == sdf.BASE_LINK
        wheel = robot.find(f"link[@name='{joint.findtext('child')}']")
        radius = float(_geometry(wheel, 'wheel').findtext('radius'))
        # A weak wheel is a small wheel: it covers `gain` times the commanded distance.
        assert radius == pytest.approx(robot_spec.wheel_radius * gains[side])
        x, y, z, roll, _, _ = _pose(wheel)
        assert (x, y, z) == pytest.approx((0.0, sign * robot_spec.wheel_base / 2, radius))
        assert roll == pytest.approx(-math.pi / 2)
        assert _floats(joint.findtext('axis/xyz')) == [0.0, 0.0, 1.0]


def test_ground_truth_is_the_world_pose():
    robot = _models(_world(Scene.generate(2)))[ROBOT_MODEL]
    odometry = _plugins(robot)['gz::sim::systems::OdometryPublisher']
    assert odometry.get('filename') == 'gz-sim-odometry-publisher-system'
    assert odometry.findtext('odom_frame') == 'world'
    assert odometry.findtext('robot_base_frame') == sdf.BASE_LINK
    assert odometry.findtext('odom_topic') == gz_topic('sim/ground_truth')


def test_wheels_smaller_than_the_floor_clearance_are_rejected():
    with pytest.raises(ValueError, match='floor clearance'):
        sdf.build_world_sdf(Scene.generate(0, robot=RobotSpec(wheel_radius=0.02)))


def test_world_is_deterministic_and_written_to_a_new_folder(tmp_path):
    scene = Scene.generate(8)
    path = sdf.write_world(scene, tmp_path / 'a' / 'b')
    assert path == tmp_path / 'a' / 'b' / sdf.world_file_name(scene)
    assert path.read_text() == sdf.build_world_sdf(Scene.generate(8))
    assert sdf.build_world_sdf(Scene.generate(9)) != path.read_text()


def test_cli_writes_world_and_bridge(tmp_path, capsys):
    assert cli_main(['gz-world', '--seed', '4', '--out', str(tmp_path)]) == 0
    world = tmp_path / sdf.world_file_name(Scene.generate(4))
    assert world.read_text() == sdf.build_world_sdf(Scene.generate(4))
    assert (tmp_path / BRIDGE_FILE_NAME).read_text() == bridge_yaml()
    assert str(world) in capsys.readouterr().out


def test_cli_shifted_world_and_scene_file(tmp_path):
    scene_file = tmp_path / 'scene.yaml'
    scene_file.write_text(Scene.generate(21).to_yaml())
    assert cli_main(['gz-world', '--scene', str(scene_file), '--world', 'shifted',
                     '--out', str(tmp_path)]) == 0
    expected = Scene.generate(21).with_robot(RobotSpec().shifted())
    assert (tmp_path / sdf.world_file_name(expected)).read_text() == \
        sdf.build_world_sdf(expected)


def test_cli_reports_an_unreadable_scene(tmp_path, capsys):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('objects: []\n')
    assert cli_main(['gz-world', '--scene', str(bad), '--out', str(tmp_path)]) == 2
    assert 'cannot read scene' in capsys.readouterr().err


@pytest.mark.skipif(shutil.which('gz') is None,
                    reason='Gazebo (`gz`) is not installed; its SDF parser check needs it')
def test_gazebo_parses_the_world(tmp_path):
    path = sdf.write_world(Scene.generate(3, robot=RobotSpec().shifted()), tmp_path)
    result = subprocess.run(['gz', 'sdf', '-k', str(Path(path))], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and 'Valid' in result.stdout, result.stdout + result.stderr
