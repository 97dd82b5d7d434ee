"""
The ros_gz_bridge configuration: the names and types the nodes use, and the SDF's topics.

The bridge must hand the follower and task node exactly what the MuJoCo sim node gives them
(DESIGN.md §2), so the expected table below is the design's contract; the node sources are
also scanned for the topics and message types they really publish and subscribe.
"""

import ast
import importlib
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import yaml

from vlit_ros.gazebo import bridge, sdf  # noqa: I100
from vlit_ros.sim.scene import Scene

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / 'config' / 'gz_bridge.yaml'
NODES = ROOT / 'vlit_ros' / 'nodes'
# DESIGN.md §2: what the simulator provides and consumes, by ROS name.
CONTRACT = {
    'camera/image_raw': ('sensor_msgs/msg/Image', bridge.GZ_TO_ROS),
    'camera/camera_info': ('sensor_msgs/msg/CameraInfo', bridge.GZ_TO_ROS),
    'odom': ('nav_msgs/msg/Odometry', bridge.GZ_TO_ROS),
    'sim/ground_truth': ('nav_msgs/msg/Odometry', bridge.GZ_TO_ROS),
    'cmd_vel': ('geometry_msgs/msg/Twist', bridge.ROS_TO_GZ),
    '/clock': ('rosgraph_msgs/msg/Clock', bridge.GZ_TO_ROS),
}
# ros_gz_bridge's message mappings (its README) for the types used here.
GZ_TYPES = {
    'sensor_msgs/msg/Image': 'gz.msgs.Image',
    'sensor_msgs/msg/CameraInfo': 'gz.msgs.CameraInfo',
    'nav_msgs/msg/Odometry': 'gz.msgs.Odometry',
    'geometry_msgs/msg/Twist': 'gz.msgs.Twist',
    'rosgraph_msgs/msg/Clock': 'gz.msgs.Clock',
}
ENTRY_KEYS = {'ros_topic_name', 'gz_topic_name', 'ros_type_name', 'gz_type_name', 'direction'}


def _config():
    entries = yaml.safe_load(CONFIG.read_text())
    assert isinstance(entries, list) and entries, 'the bridge config must be a YAML sequence'
    return entries


def _node_topics():
    """Return (topic, 'publisher'|'subscription', 'pkg/msg/Type' or None) used in nodes/."""
    found = []
    for path in sorted(NODES.glob('*.py')):
        tree = ast.parse(path.read_text(), filename=str(path))
        imported = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.endswith('.msg') and node.level == 0:
                package = node.module.split('.')[0]
                for alias in node.names:
                    imported[alias.asname or alias.name] = f'{package}/msg/{alias.name}'
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and
                    node.func.attr in ('create_publisher', 'create_subscription') and
                    len(node.args) >= 2):
                continue
            msg_type, topic = node.args[:2]
            if not (isinstance(topic, ast.Constant) and isinstance(topic.value, str)):
                continue
            # A type chosen at run time (e.g. Twist or TwistStamped) stays unresolved.
            resolved = imported.get(msg_type.id) if isinstance(msg_type, ast.Name) else None
            kind = 'publisher' if node.func.attr == 'create_publisher' else 'subscription'
            found.append((topic.value, kind, resolved))
    return found


def test_config_file_is_the_generated_table():
    assert CONFIG.read_text() == bridge.bridge_yaml(), \
        'config/gz_bridge.yaml is stale: regenerate it from vlit_ros/gazebo/bridge.py'
    assert _config() == bridge.bridge_config()


def test_entries_are_complete_and_well_named():
    for entry in _config():
        assert set(entry) == ENTRY_KEYS, entry
        assert entry['direction'] in (bridge.GZ_TO_ROS, bridge.ROS_TO_GZ)
        assert entry['gz_topic_name'].startswith('/')
        # Relative ROS names, so a namespace applies to every robot topic; /clock is global.
        assert entry['ros_topic_name'] == '/clock' or \
            not entry['ros_topic_name'].startswith(('/', '~'))
    names = [e['ros_topic_name'] for e in _config()]
    assert len(set(names)) == len(names)


def test_bridge_matches_the_design_contract():
    assert {e['ros_topic_name']: (e['ros_type_name'], e['direction'])
            for e in _config()} == CONTRACT


@pytest.mark.parametrize('entry', bridge.bridge_config(), ids=lambda e: e['ros_topic_name'])
def test_types_exist_and_ros_gz_bridge_maps_them(entry):
    package, kind, name = entry['ros_type_name'].split('/')
    assert kind == 'msg'
    msg_class = getattr(importlib.import_module(f'{package}.msg'), name)
    assert hasattr(msg_class, 'get_fields_and_field_types'), f'{msg_class} is not a message'
    assert GZ_TYPES[entry['ros_type_name']] == entry['gz_type_name']


def test_nodes_use_the_bridged_topics_with_the_bridged_types():
    by_topic = {e['ros_topic_name']: e for e in _config()}
    used = [(topic, kind, msg_type) for topic, kind, msg_type in _node_topics()
            if topic in by_topic]
    mismatched = [(topic, msg_type, by_topic[topic]['ros_type_name'])
                  for topic, _, msg_type in used
                  if msg_type is not None and msg_type != by_topic[topic]['ros_type_name']]
    assert not mismatched, f'nodes use other types than the bridge: {mismatched}'
    subscribed = {t for t, kind, _ in used if kind == 'subscription'}
    published = {t for t, kind, _ in used if kind == 'publisher'}
    # The follower's inputs come out of Gazebo and its commands go into it.
    assert {'camera/image_raw', 'odom'} <= subscribed
    assert 'cmd_vel' in published
    for topic in ('camera/image_raw', 'odom'):
        assert by_topic[topic]['direction'] == bridge.GZ_TO_ROS
    assert by_topic['cmd_vel']['direction'] == bridge.ROS_TO_GZ


def test_node_scan_resolves_imported_message_types():
    found = _node_topics()
    assert ('camera/image_raw', 'subscription', 'sensor_msgs/msg/Image') in found
    assert ('odom', 'subscription', 'nav_msgs/msg/Odometry') in found


def test_every_gazebo_topic_exists_in_the_world():
    world = ET.fromstring(sdf.build_world_sdf(Scene.generate(0))).find('world')
    robot = world.find(f"model[@name='{bridge.ROBOT_MODEL}']")
    drive = robot.find("plugin[@name='gz::sim::systems::DiffDrive']")
    odometry = robot.find("plugin[@name='gz::sim::systems::OdometryPublisher']")
    camera = robot.find('link/sensor')
    in_world = {
        'camera/image_raw': camera.findtext('topic'),
        'camera/camera_info': camera.findtext('camera/camera_info_topic'),
        'odom': drive.findtext('odom_topic'),
        'sim/ground_truth': odometry.findtext('odom_topic'),
        'cmd_vel': drive.findtext('topic'),
        '/clock': f'/world/{world.get("name")}/clock',
    }
    assert in_world == {e['ros_topic_name']: e['gz_topic_name'] for e in _config()}


def test_unknown_topic_is_reported():
    with pytest.raises(KeyError, match='not bridged'):
        bridge.gz_topic('scan')


def test_write_bridge_config(tmp_path):
    path = bridge.write_bridge_config(tmp_path / 'new')
    assert path.name == bridge.BRIDGE_FILE_NAME
    assert yaml.safe_load(path.read_text()) == bridge.bridge_config()
