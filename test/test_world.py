"""The MuJoCo world: determinism, driving, odometry, camera and contacts."""

import math

import numpy as np
import pytest

from vlit_ros.sim.scene import ObjectSpec, RobotSpec, Scene, SHIFT_CAMERA_YAW_DEG
from vlit_ros.sim.world import World

COMMANDS = ['forward'] * 8 + ['turn_left'] * 5 + ['forward_right'] * 6 + ['backward'] * 3


@pytest.fixture
def world():
    w = World(Scene.generate(3))
    yield w
    w.close()


def _rollout(world, seed):
    world.reset(seed=seed)
    poses, images = [], []
    for command in COMMANDS:
        world.step(command)
        poses.append(world.pose())
        images.append(world.render())
    return poses, images


def test_world_is_deterministic_for_a_seed(world):
    poses_a, images_a = _rollout(world, 9)
    poses_b, images_b = _rollout(world, 9)
    assert poses_a == poses_b
    assert all(np.array_equal(a, b) for a, b in zip(images_a, images_b))
    poses_c, _ = _rollout(world, 10)
    assert poses_c != poses_a


def test_forward_drives_along_the_heading_and_odometry_follows(world):
    world.reset(seed=3)
    start = world.pose()
    for _ in range(10):
        world.step('forward')
    x, y, yaw = world.pose()
    travelled = math.hypot(x - start[0], y - start[1])
    # 0.4 m/s for 1 s, less the ramp-up at 2 m/s^2 (0.04 m).
    assert travelled == pytest.approx(0.36, abs=0.02)
    assert math.atan2(y - start[1], x - start[0]) == pytest.approx(start[2], abs=1e-3)
    odom = world.odometry()
    assert odom.x == pytest.approx(travelled, abs=1e-6)
    assert abs(odom.y) < 1e-6 and abs(odom.yaw) < 1e-6
    assert odom.v == pytest.approx(0.4, abs=0.01)


def test_turn_left_is_counter_clockwise(world):
    world.reset(seed=3)
    for _ in range(10):
        world.step('turn_left')
    assert world.odometry().yaw == pytest.approx(0.8 - 0.08, abs=0.02)
    assert world.odometry().w == pytest.approx(0.8, abs=0.01)


def test_twist_commands_and_invalid_commands(world):
    world.reset(seed=3)
    world.step((0.0, -0.5))
    assert world.odometry().w < 0
    with pytest.raises(ValueError, match='finite'):
        world.step((float('nan'), 0.0))
    with pytest.raises(ValueError, match='unknown action'):
        world.step('jump')


def test_camera_image_shape_and_it_sees_colour():
    obj = ObjectSpec('cube', 'red', 1.5, 0.0, 0.24)
    with World(Scene(seed=0, objects=(obj,))) as world:
        image = world.render()
        assert image.shape == (96, 128, 3) and image.dtype == np.uint8
        centre = image[40:70, 54:74].reshape(-1, 3).mean(axis=0)
        assert centre[0] > 120 and centre[0] > 2 * centre[1] and centre[0] > 2 * centre[2]
        top = world.render_top(64)
        assert top.shape == (64, 64, 3)


def red_column(scene: Scene) -> float:
    """Return the mean image column of the red pixels the robot's camera sees."""
    with World(scene) as world:
        image = world.render().astype(int)
    red = (image[..., 0] > 120) & (image[..., 1] < 60)
    return float(np.nonzero(red.any(axis=0))[0].mean())


def test_shifted_camera_sees_the_object_off_centre():
    # An object left of the robot's heading by half the mount's yaw: the camera, yawed left by
    # the whole of it, sees the object right of centre.
    bearing = math.radians(SHIFT_CAMERA_YAW_DEG / 2)
    obj = ObjectSpec('cube', 'red', 1.5 * math.cos(bearing), 1.5 * math.sin(bearing), 0.24)
    assert red_column(Scene(seed=0, objects=(obj,))) < 64 - 10
    assert red_column(Scene(seed=0, objects=(obj,), robot=RobotSpec().shifted())) > 64 + 10


def test_weak_left_wheel_curves_to_the_left():
    scene = Scene.generate(3, robot=RobotSpec().shifted())
    with World(scene) as world:
        for _ in range(10):
            world.step('forward')
        assert world.odometry().yaw > 0.3


def test_contacts_are_recorded_and_objects_block_the_robot():
    obj = ObjectSpec('cube', 'blue', 1.0, 0.0, 0.2)
    with World(Scene(seed=0, objects=(obj,))) as world:
        for _ in range(40):
            world.step('forward')
        assert 'blue_cube' in world.touched_objects()
        assert world.pose()[0] < 1.0 - 0.2 - 0.2 + 0.05


def test_stop_start_twist_and_is_stopped(world):
    world.reset(seed=3, initial_twist=(0.4, 0.0))
    assert world.body_velocity()[0] == pytest.approx(0.4, abs=1e-6)
    assert not world.is_stopped()
    for _ in range(3):
        world.step('stop')
    assert world.is_stopped()


def _reference_image(world, camera, height, width):
    """Return the image mujoco.Renderer (a GL context of its own) makes of the world."""
    import mujoco
    renderer = mujoco.Renderer(world._model, height, width)
    try:
        renderer.update_scene(world._data, camera=camera)
        return renderer.render().copy()
    finally:
        renderer.close()


def test_shared_gl_contexts_render_what_a_renderer_of_its_own_renders():
    from vlit_ros.sim import mjcf
    worlds = [World(Scene.generate(20)), World(Scene.generate(21))]
    try:
        for seed in range(4):
            # Two worlds alternate on one GL context, switching scenes as they go.
            world = worlds[seed % 2]
            world.reset(seed=100 + seed)
            for command in ('turn_left', 'forward'):
                world.step(command)
                assert np.array_equal(world.render(), _reference_image(
                    world, mjcf.FRONT_CAMERA, 96, 128))
                assert np.array_equal(world.render_top(64), _reference_image(
                    world, mjcf.TOP_CAMERA, 64, 64))
    finally:
        for world in worlds:
            world.close()


def test_a_world_renders_the_same_from_another_thread(world):
    import threading
    world.reset(seed=5)
    world.step('forward')
    here = world.render()
    there = {}
    thread = threading.Thread(target=lambda: there.setdefault('image', world.render()))
    thread.start()
    thread.join()
    assert np.array_equal(there['image'], here)
    # And back on this thread.
    assert np.array_equal(world.render(), here)


def test_a_closed_renderer_refuses_to_render(world):
    from vlit_ros.sim import mjcf
    from vlit_ros.sim.rendering import CameraRenderer
    renderer = CameraRenderer(world._model, 96, 128)
    renderer.close()
    with pytest.raises(RuntimeError, match='after close'):
        renderer.render(world._data, mjcf.FRONT_CAMERA)
    other = CameraRenderer(world._model, 96, 128)
    try:
        with pytest.raises(ValueError, match='does not exist'):
            other.render(world._data, 'no_such_camera')
        with pytest.raises(ValueError, match='off-screen buffer'):
            CameraRenderer(world._model, 96, 100_000)
    finally:
        other.close()


def test_a_renderer_moving_threads_leaves_the_other_threads_renderers_intact():
    # Thread B renders a world of its own, then a world first rendered here moves to B and
    # back: every image must stay what a renderer of its own makes.
    from concurrent.futures import ThreadPoolExecutor
    from vlit_ros.sim import mjcf
    here, there = World(Scene.generate(30)), World(Scene.generate(31))
    thread_b = ThreadPoolExecutor(max_workers=1)
    try:
        for world in (here, there):
            world.step('forward')
        expected = {id(world): _reference_image(world, mjcf.FRONT_CAMERA, 96, 128)
                    for world in (here, there)}
        assert np.array_equal(here.render(), expected[id(here)])
        assert np.array_equal(thread_b.submit(there.render).result(), expected[id(there)])
        for _ in range(2):
            assert np.array_equal(thread_b.submit(here.render).result(), expected[id(here)])
            assert np.array_equal(thread_b.submit(there.render).result(),
                                  expected[id(there)])
            assert np.array_equal(here.render(), expected[id(here)])
            assert np.array_equal(thread_b.submit(there.render).result(),
                                  expected[id(there)])
        # Closing a world from another thread than its renderer's leaves the others intact.
        thread_b.submit(here.close).result()
        assert np.array_equal(thread_b.submit(there.render).result(), expected[id(there)])
    finally:
        thread_b.submit(there.close).result()
        thread_b.shutdown()
        here.close()
