"""
Build the Gazebo SDF world of a scene: the same arena, objects and robot as the MuJoCo model.

One file holds everything (arena, walls, lights, objects, and the robot at its start pose), so
`gz sim world.sdf` needs no spawn step and no model path. The world targets Gazebo Harmonic
(ROS 2 Jazzy) and Ionic (Kilted); it is written as SDFormat 1.9, which they both read.

Geometry, colours and poses come from the scene exactly as `vlit_ros.sim.mjcf` uses them
(a test compares the two for several seeds). What differs is how the robot moves: MuJoCo
drives the base directly, Gazebo drives two wheels through the DiffDrive system. The robot's
wheel gains (`RobotSpec.left_wheel_gain`, ...) become physically smaller or larger wheels
mounted lower or higher, so a wheel turning at the commanded rate covers `gain` times the
commanded distance, as in MuJoCo's drive model, while wheel odometry still assumes the
nominal radius (it drifts, as a real weak wheel's odometry does).

Topics (Gazebo side; `vlit_ros.gazebo.bridge` maps them onto the ROS names):
the camera publishes images and camera info, DiffDrive takes `cmd_vel` and publishes wheel
odometry, OdometryPublisher publishes the ground-truth pose in the world frame.
"""

import math
from pathlib import Path
from typing import Dict, Sequence, Tuple, Union
from xml.etree import ElementTree as ET

from vlit_ros.core.actions import CONTROL_RATE_HZ
from vlit_ros.gazebo.bridge import gz_topic, ROBOT_MODEL, WORLD_NAME
from vlit_ros.sim import mjcf
from vlit_ros.sim.scene import COLORS, ObjectSpec, RobotSpec, Scene

SDF_VERSION = '1.9'
# Sensors render only when a subscriber listens; ogre2 renders headless through EGL.
RENDER_ENGINE = 'ogre2'
# 1 kHz physics keeps the wheel contacts stable; the real-time rate follows from it.
PHYSICS_STEP_S = 0.001
# World systems: listing any system in the world replaces Gazebo's default set, so all the
# ones the simulation needs are named here.
WORLD_SYSTEMS = (
    ('gz-sim-physics-system', 'gz::sim::systems::Physics'),
    ('gz-sim-user-commands-system', 'gz::sim::systems::UserCommands'),
    ('gz-sim-scene-broadcaster-system', 'gz::sim::systems::SceneBroadcaster'),
    ('gz-sim-sensors-system', 'gz::sim::systems::Sensors'),
)
SENSORS_SYSTEM = WORLD_SYSTEMS[-1]
DIFF_DRIVE_SYSTEM = ('gz-sim-diff-drive-system', 'gz::sim::systems::DiffDrive')
ODOMETRY_SYSTEM = ('gz-sim-odometry-publisher-system', 'gz::sim::systems::OdometryPublisher')
BASE_LINK = 'base_link'
LEFT_WHEEL_JOINT = 'left_wheel_joint'
RIGHT_WHEEL_JOINT = 'right_wheel_joint'
CAMERA_SENSOR = mjcf.FRONT_CAMERA
FLOOR_MODEL = 'floor'
# Frames written into the odometry messages.
ODOM_FRAME = 'odom'
WORLD_FRAME = 'world'
ODOMETRY_RATE_HZ = 50.0

# Robot body as in vlit_ros.sim.mjcf: a cylinder standing this high off the floor.
_BASE_HALF_HEIGHT = 0.1
_BASE_CLEARANCE = 0.02
_BASE_MASS = 8.0
_WHEEL_WIDTH = 0.03
_WHEEL_MASS = 0.5
# Casters: frictionless spheres front and back, 1 mm clear of the floor so the wheels carry
# the robot (its centre of mass sits over the axle) and the casters only stop it tipping.
_CASTER_RADIUS = 0.015
_CASTER_GAP = 0.001
# Lighting in the spirit of the MuJoCo scene (headlight + sun): flat, no shadows.
_AMBIENT = (0.45, 0.45, 0.45)
_SUN_DIFFUSE = (0.9, 0.9, 0.9)
_SUN_DIRECTION = (0.3, 0.2, -1.0)
_SKY = (0.62, 0.74, 0.88)
_FLOOR_RGB = (0.6, 0.6, 0.58)
_WALL_RGB = (0.85, 0.85, 0.82)
_BASE_RGB = (0.15, 0.15, 0.18)
_NOSE_RGB = (0.9, 0.9, 0.9)
_WHEEL_RGB = (0.1, 0.1, 0.1)
_CAMERA_CLIP = (0.05, 20.0)


def _fmt(*values: float) -> str:
    return ' '.join(f'{v:.9g}' for v in values)


def world_file_name(scene: Scene) -> str:
    """Return the world file name write_world uses for a scene."""
    return f'{WORLD_NAME}_seed{scene.seed}.sdf'


def _text(parent: ET.Element, tag: str, value: Union[str, float, int]) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = value if isinstance(value, str) else _fmt(value)
    return element


def _pose(parent: ET.Element, x=0.0, y=0.0, z=0.0, roll=0.0, pitch=0.0, yaw=0.0) -> None:
    _text(parent, 'pose', _fmt(x, y, z, roll, pitch, yaw))


def _material(parent: ET.Element, rgb: Sequence[float]) -> None:
    material = ET.SubElement(parent, 'material')
    _text(material, 'ambient', _fmt(*rgb, 1.0))
    _text(material, 'diffuse', _fmt(*rgb, 1.0))
    _text(material, 'specular', '0 0 0 1')


def _geometry(parent: ET.Element, shape: str,
              **dims: Union[float, Tuple[float, ...]]) -> None:
    geometry = ET.SubElement(ET.SubElement(parent, 'geometry'), shape)
    for name, value in dims.items():
        _text(geometry, name, value if not isinstance(value, tuple) else _fmt(*value))


def _shape(link: ET.Element, name: str, shape: str, rgb: Sequence[float],
           pose: Sequence[float] = (), collide: bool = True, **dims) -> None:
    """Add a visual (and a collision with the same geometry) to a link."""
    elements = ('visual', 'collision') if collide else ('visual',)
    for tag in elements:
        element = ET.SubElement(link, tag, name=f'{name}_{tag}')
        if pose:
            _pose(element, *pose)
        _geometry(element, shape, **dims)
        if tag == 'visual':
            _material(element, rgb)


def _inertial(link: ET.Element, mass: float, ixx: float, iyy: float, izz: float,
              pose: Sequence[float] = ()) -> None:
    inertial = ET.SubElement(link, 'inertial')
    if pose:
        _pose(inertial, *pose)
    _text(inertial, 'mass', mass)
    inertia = ET.SubElement(inertial, 'inertia')
    for name, value in (('ixx', ixx), ('ixy', 0.0), ('ixz', 0.0), ('iyy', iyy), ('iyz', 0.0),
                        ('izz', izz)):
        _text(inertia, name, value)


def _plugin(parent: ET.Element, system: Sequence[str], **params: Union[str, float]) -> None:
    plugin = ET.SubElement(parent, 'plugin', filename=system[0], name=system[1])
    for name, value in params.items():
        _text(plugin, name, value)


def _static_model(world: ET.Element, name: str, pose: Sequence[float]) -> ET.Element:
    model = ET.SubElement(world, 'model', name=name)
    _text(model, 'static', 'true')
    _pose(model, *pose)
    return ET.SubElement(model, 'link', name='link')


def _object_model(world: ET.Element, obj: ObjectSpec) -> None:
    if obj.shape == 'cube':
        link = _static_model(world, mjcf.object_geom_name(obj), (obj.x, obj.y, obj.size))
        _shape(link, 'body', 'box', COLORS[obj.color], size=(2 * obj.size,) * 3)
    elif obj.shape == 'sphere':
        link = _static_model(world, mjcf.object_geom_name(obj), (obj.x, obj.y, obj.size))
        _shape(link, 'body', 'sphere', COLORS[obj.color], radius=obj.size)
    else:
        link = _static_model(world, mjcf.object_geom_name(obj), (obj.x, obj.y, obj.height / 2))
        _shape(link, 'body', 'cylinder', COLORS[obj.color], radius=obj.size,
               length=obj.height)


def _arena(world: ET.Element, scene: Scene) -> None:
    half = scene.arena_size / 2.0
    thickness, height = mjcf.WALL_THICKNESS, mjcf.WALL_HEIGHT
    side = 2 * (half + thickness)
    floor = _static_model(world, FLOOR_MODEL, ())
    _shape(floor, 'ground', 'plane', _FLOOR_RGB, normal=(0.0, 0.0, 1.0), size=(side, side))
    walls = {
        'wall_east': (half + thickness / 2, 0.0, thickness, side),
        'wall_west': (-half - thickness / 2, 0.0, thickness, side),
        'wall_north': (0.0, half + thickness / 2, side, thickness),
        'wall_south': (0.0, -half - thickness / 2, side, thickness),
    }
    for name, (x, y, size_x, size_y) in walls.items():
        link = _static_model(world, name, (x, y, height / 2))
        _shape(link, 'body', 'box', _WALL_RGB, size=(size_x, size_y, height))


def wheel_radii(robot: RobotSpec) -> Dict[str, float]:
    """
    Return the physical radius of each wheel (m): nominal radius times the wheel's gain.

    DiffDrive turns both wheels for the nominal radius, so a wheel `gain` times the nominal
    size covers `gain` times the commanded distance: MuJoCo's per-wheel gain, in hardware.
    """
    radii = {'left': robot.wheel_radius * robot.left_wheel_gain,
             'right': robot.wheel_radius * robot.right_wheel_gain}
    smallest = min(radii.values())
    if smallest <= _BASE_CLEARANCE + _CASTER_GAP:
        raise ValueError(f'the Gazebo robot needs wheels larger than its {_BASE_CLEARANCE} m '
                         f'floor clearance; wheel radius x gain is {smallest:.4f} m')
    return radii


def _wheel(model: ET.Element, side: str, robot: RobotSpec, radius: float) -> None:
    offset = robot.wheel_base / 2.0 if side == 'left' else -robot.wheel_base / 2.0
    link = ET.SubElement(model, 'link', name=f'{side}_wheel')
    # The cylinder's axis (link z) is rolled onto the robot's y axis, the axle.
    _pose(link, 0.0, offset, radius, -math.pi / 2, 0.0, 0.0)
    axial = _WHEEL_MASS * radius ** 2 / 2.0
    radial = _WHEEL_MASS * (3 * radius ** 2 + _WHEEL_WIDTH ** 2) / 12.0
    _inertial(link, _WHEEL_MASS, radial, radial, axial)
    _shape(link, 'wheel', 'cylinder', _WHEEL_RGB, radius=radius, length=_WHEEL_WIDTH)
    joint_name = LEFT_WHEEL_JOINT if side == 'left' else RIGHT_WHEEL_JOINT
    joint = ET.SubElement(model, 'joint', name=joint_name, type='revolute')
    _text(joint, 'parent', BASE_LINK)
    _text(joint, 'child', f'{side}_wheel')
    _text(ET.SubElement(joint, 'axis'), 'xyz', '0 0 1')


def _camera(link: ET.Element, robot: RobotSpec) -> None:
    sensor = ET.SubElement(link, 'sensor', name=CAMERA_SENSOR, type='camera')
    _pose(sensor, robot.radius * 0.5, 0.0, robot.camera_height,
          yaw=math.radians(robot.camera_yaw_deg))
    _text(sensor, 'always_on', 'true')
    # One frame per control period, like the MuJoCo sim node.
    _text(sensor, 'update_rate', CONTROL_RATE_HZ)
    _text(sensor, 'visualize', 'false')
    _text(sensor, 'topic', gz_topic('camera/image_raw'))
    camera = ET.SubElement(sensor, 'camera', name=CAMERA_SENSOR)
    _text(camera, 'camera_info_topic', gz_topic('camera/camera_info'))
    _text(camera, 'horizontal_fov', math.radians(robot.camera_hfov_deg))
    image = ET.SubElement(camera, 'image')
    _text(image, 'width', str(robot.image_width))
    _text(image, 'height', str(robot.image_height))
    _text(image, 'format', 'R8G8B8')
    clip = ET.SubElement(camera, 'clip')
    _text(clip, 'near', _CAMERA_CLIP[0])
    _text(clip, 'far', _CAMERA_CLIP[1])


def _robot(world: ET.Element, scene: Scene) -> None:
    robot = scene.robot
    radii = wheel_radii(robot)
    model = ET.SubElement(world, 'model', name=ROBOT_MODEL)
    _pose(model, scene.robot_x, scene.robot_y, 0.0, yaw=scene.robot_yaw)
    base = ET.SubElement(model, 'link', name=BASE_LINK)
    base_z = _BASE_CLEARANCE + _BASE_HALF_HEIGHT
    height = 2 * _BASE_HALF_HEIGHT
    _inertial(base, _BASE_MASS, _BASE_MASS * (3 * robot.radius ** 2 + height ** 2) / 12.0,
              _BASE_MASS * (3 * robot.radius ** 2 + height ** 2) / 12.0,
              _BASE_MASS * robot.radius ** 2 / 2.0, pose=(0.0, 0.0, base_z))
    _shape(base, 'base', 'cylinder', _BASE_RGB, pose=(0.0, 0.0, base_z), radius=robot.radius,
           length=height)
    _shape(base, 'nose', 'box', _NOSE_RGB, collide=False,
           pose=(robot.radius - 0.04, 0.0, height + 0.04), size=(0.08, 0.12, 0.04))
    caster_x = robot.radius - _CASTER_RADIUS - 0.01
    for name, x in (('front_caster', caster_x), ('rear_caster', -caster_x)):
        collision = ET.SubElement(base, 'collision', name=name)
        _pose(collision, x, 0.0, _CASTER_RADIUS + _CASTER_GAP)
        _geometry(collision, 'sphere', radius=_CASTER_RADIUS)
        friction = ET.SubElement(ET.SubElement(ET.SubElement(collision, 'surface'),
                                               'friction'), 'ode')
        _text(friction, 'mu', 0.0)
        _text(friction, 'mu2', 0.0)
    _camera(base, robot)
    for side in ('left', 'right'):
        _wheel(model, side, robot, radii[side])
    _plugin(model, DIFF_DRIVE_SYSTEM,
            left_joint=LEFT_WHEEL_JOINT, right_joint=RIGHT_WHEEL_JOINT,
            wheel_separation=robot.wheel_base, wheel_radius=robot.wheel_radius,
            max_linear_acceleration=robot.max_linear_accel,
            min_linear_acceleration=-robot.max_linear_accel,
            max_angular_acceleration=robot.max_angular_accel,
            min_angular_acceleration=-robot.max_angular_accel,
            topic=gz_topic('cmd_vel'), odom_topic=gz_topic('odom'),
            frame_id=ODOM_FRAME, child_frame_id=BASE_LINK,
            odom_publish_frequency=ODOMETRY_RATE_HZ)
    _plugin(model, ODOMETRY_SYSTEM,
            odom_frame=WORLD_FRAME, robot_base_frame=BASE_LINK,
            odom_topic=gz_topic('sim/ground_truth'), dimensions='2',
            odom_publish_frequency=ODOMETRY_RATE_HZ)


def build_world_sdf(scene: Scene) -> str:
    """Return the SDF world of a scene: arena, walls, lights, objects, robot, systems."""
    root = ET.Element('sdf', version=SDF_VERSION)
    world = ET.SubElement(root, 'world', name=WORLD_NAME)
    # No double hyphen in the text: XML comments may not contain one (so no `--seed`).
    world.append(ET.Comment(f' Generated by vlit_ros.gazebo.sdf from scene seed {scene.seed} '
                            '(command: vlit-ros gz-world). '))
    physics = ET.SubElement(world, 'physics', name='default_physics', type='ignored')
    _text(physics, 'max_step_size', PHYSICS_STEP_S)
    _text(physics, 'real_time_factor', 1.0)
    _text(physics, 'real_time_update_rate', 1.0 / PHYSICS_STEP_S)
    for system in WORLD_SYSTEMS:
        params = {'render_engine': RENDER_ENGINE} if system == SENSORS_SYSTEM else {}
        _plugin(world, system, **params)
    scene_element = ET.SubElement(world, 'scene')
    _text(scene_element, 'ambient', _fmt(*_AMBIENT, 1.0))
    _text(scene_element, 'background', _fmt(*_SKY, 1.0))
    _text(scene_element, 'shadows', 'false')
    _text(scene_element, 'grid', 'false')
    sun = ET.SubElement(world, 'light', name='sun', type='directional')
    _text(sun, 'cast_shadows', 'false')
    _pose(sun, 0.0, 0.0, 6.0)
    _text(sun, 'diffuse', _fmt(*_SUN_DIFFUSE, 1.0))
    _text(sun, 'specular', '0 0 0 1')
    _text(sun, 'direction', _fmt(*_SUN_DIRECTION))
    _arena(world, scene)
    for obj in scene.objects:
        _object_model(world, obj)
    _robot(world, scene)
    ET.indent(root)
    return '<?xml version="1.0"?>\n' + ET.tostring(root, encoding='unicode') + '\n'


def write_world(scene: Scene, out_dir: Union[str, Path]) -> Path:
    """Write the scene's SDF world into a folder (created if needed); return the file's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / world_file_name(scene)
    path.write_text(build_world_sdf(scene))
    return path
