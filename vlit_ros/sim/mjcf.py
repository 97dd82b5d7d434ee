"""Build the MuJoCo model (MJCF XML) of a scene."""

import math
from xml.etree import ElementTree as ET

from vlit_ros.sim.scene import COLORS, ObjectSpec, Scene

WALL_THICKNESS = 0.1
WALL_HEIGHT = 0.5
ROBOT_BODY = 'robot'
ROBOT_GEOM = 'robot_base'
FRONT_CAMERA = 'front_camera'
TOP_CAMERA = 'top_camera'
OBJECT_PREFIX = 'object_'
# The top-down camera stands this many arena sizes above the centre, with this field of view.
TOP_CAMERA_HEIGHT_FACTOR = 1.25
TOP_CAMERA_FOVY_DEG = 45.0
# Physics step (s): five steps per 10 Hz control period keep contacts stable and cheap.
PHYSICS_TIMESTEP = 0.02
# Velocity-servo gains of the planar base joints (N s/m, N m s/rad); implicit integration
# keeps these stiff servos stable at the physics step above.
_LINEAR_SERVO_GAIN = 400.0
_ANGULAR_SERVO_GAIN = 40.0


def _fmt(*values: float) -> str:
    return ' '.join(f'{v:.6g}' for v in values)


def object_geom_name(obj: ObjectSpec) -> str:
    return OBJECT_PREFIX + obj.name


def _object_geom(parent: ET.Element, obj: ObjectSpec) -> None:
    rgba = _fmt(*COLORS[obj.color], 1.0)
    if obj.shape == 'cube':
        attrs = {'type': 'box', 'size': _fmt(obj.size, obj.size, obj.size),
                 'pos': _fmt(obj.x, obj.y, obj.size)}
    elif obj.shape == 'sphere':
        attrs = {'type': 'sphere', 'size': _fmt(obj.size), 'pos': _fmt(obj.x, obj.y, obj.size)}
    else:
        half_height = obj.height / 2.0
        attrs = {'type': 'cylinder', 'size': _fmt(obj.size, half_height),
                 'pos': _fmt(obj.x, obj.y, half_height)}
    ET.SubElement(parent, 'geom', name=object_geom_name(obj), rgba=rgba,
                  material='matte', **attrs)


def build_mjcf(scene: Scene) -> str:
    """Return the MJCF XML of a scene: arena, walls, objects, robot with a front camera."""
    robot = scene.robot
    half = scene.arena_size / 2.0
    root = ET.Element('mujoco', model=f'vlit_arena_{scene.seed}')
    ET.SubElement(root, 'compiler', angle='radian', autolimits='true')
    ET.SubElement(root, 'option', timestep=_fmt(PHYSICS_TIMESTEP), integrator='implicitfast')
    visual = ET.SubElement(root, 'visual')
    # Multisampling and shadows cost 50x in software (llvmpipe) rendering for little gain
    # at 128x96; the camera is deliberately plain.
    ET.SubElement(visual, 'quality', offsamples='0', shadowsize='0')
    ET.SubElement(visual, 'global', offwidth='640', offheight='640')
    ET.SubElement(visual, 'headlight', ambient='0.45 0.45 0.45', diffuse='0.5 0.5 0.5',
                  specular='0 0 0')
    asset = ET.SubElement(root, 'asset')
    ET.SubElement(asset, 'texture', name='sky', type='skybox', builtin='gradient',
                  rgb1='0.62 0.74 0.88', rgb2='0.25 0.33 0.45', width='32', height='32')
    ET.SubElement(asset, 'texture', name='floor_grid', type='2d', builtin='checker',
                  rgb1='0.62 0.62 0.60', rgb2='0.55 0.55 0.53', width='64', height='64')
    ET.SubElement(asset, 'material', name='floor', texture='floor_grid',
                  texrepeat=_fmt(scene.arena_size, scene.arena_size))
    ET.SubElement(asset, 'material', name='matte', specular='0', shininess='0')
    world = ET.SubElement(root, 'worldbody')
    ET.SubElement(world, 'light', name='sun', directional='true', pos='0 0 6', dir='0.3 0.2 -1',
                  diffuse='0.45 0.45 0.45', castshadow='false')
    ET.SubElement(world, 'geom', name='floor', type='plane', material='floor',
                  size=_fmt(half + WALL_THICKNESS, half + WALL_THICKNESS, 0.1))
    wall_len = half + WALL_THICKNESS
    walls = {
        'wall_east': (half + WALL_THICKNESS / 2, 0.0, WALL_THICKNESS / 2, wall_len),
        'wall_west': (-half - WALL_THICKNESS / 2, 0.0, WALL_THICKNESS / 2, wall_len),
        'wall_north': (0.0, half + WALL_THICKNESS / 2, wall_len, WALL_THICKNESS / 2),
        'wall_south': (0.0, -half - WALL_THICKNESS / 2, wall_len, WALL_THICKNESS / 2),
    }
    for name, (x, y, sx, sy) in walls.items():
        ET.SubElement(world, 'geom', name=name, type='box', rgba='0.85 0.85 0.82 1',
                      material='matte', pos=_fmt(x, y, WALL_HEIGHT / 2),
                      size=_fmt(sx, sy, WALL_HEIGHT / 2))
    for obj in scene.objects:
        _object_geom(world, obj)
    # The start pose is set through the planar joints' reference positions, so the slide
    # axes stay aligned with the world and qpos is the world pose.
    body = ET.SubElement(world, 'body', name=ROBOT_BODY, pos='0 0 0')
    for name, kind, axis in (('base_x', 'slide', '1 0 0'), ('base_y', 'slide', '0 1 0'),
                             ('base_yaw', 'hinge', '0 0 1')):
        ET.SubElement(body, 'joint', name=name, type=kind, axis=axis, damping='0')
    base_half_height = 0.1
    ET.SubElement(body, 'geom', name=ROBOT_GEOM, type='cylinder',
                  size=_fmt(robot.radius, base_half_height),
                  pos=_fmt(0, 0, base_half_height + 0.02), rgba='0.15 0.15 0.18 1', mass='8')
    ET.SubElement(body, 'geom', name='robot_nose', type='box', size='0.04 0.06 0.02',
                  pos=_fmt(robot.radius - 0.04, 0, 2 * base_half_height + 0.04),
                  rgba='0.9 0.9 0.9 1', mass='0.1', contype='0', conaffinity='0')
    # MuJoCo cameras look along their local -z with +y up; rotate so the camera looks along
    # the robot's +x, then yaw by the mount offset.
    mount = math.radians(robot.camera_yaw_deg)
    right = (math.sin(mount), -math.cos(mount))
    ET.SubElement(body, 'camera', name=FRONT_CAMERA,
                  pos=_fmt(robot.radius * 0.5, 0.0, robot.camera_height),
                  xyaxes=_fmt(right[0], right[1], 0.0, 0.0, 0.0, 1.0),
                  fovy=_fmt(robot.camera_vfov_deg))
    ET.SubElement(world, 'camera', name=TOP_CAMERA,
                  pos=_fmt(0, 0, scene.arena_size * TOP_CAMERA_HEIGHT_FACTOR),
                  xyaxes='1 0 0 0 1 0', fovy=_fmt(TOP_CAMERA_FOVY_DEG))
    actuator = ET.SubElement(root, 'actuator')
    ET.SubElement(actuator, 'velocity', name='drive_x', joint='base_x',
                  kv=_fmt(_LINEAR_SERVO_GAIN))
    ET.SubElement(actuator, 'velocity', name='drive_y', joint='base_y',
                  kv=_fmt(_LINEAR_SERVO_GAIN))
    ET.SubElement(actuator, 'velocity', name='drive_yaw', joint='base_yaw',
                  kv=_fmt(_ANGULAR_SERVO_GAIN))
    ET.indent(root)
    return ET.tostring(root, encoding='unicode')
