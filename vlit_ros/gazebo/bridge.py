"""
The ros_gz_bridge table: which Gazebo topic carries which ROS topic, one source of truth.

The SDF world (`vlit_ros.gazebo.sdf`) names its Gazebo topics from this table, and the
bridge configuration (`config/gz_bridge.yaml`, or the copy `gazebo_processes` writes next to
the world) is rendered from it, so the two cannot drift apart.

ROS names are relative (except `/clock`), so running the bridge node in a namespace
(`--ros-args -r __ns:=/robot1`) namespaces every robot topic; the Gazebo names are fixed,
because one Gazebo server simulates one robot and servers are kept apart by `GZ_PARTITION`
(see `vlit_ros.gazebo.launch_plan`). The YAML layout is ros_gz_bridge's `config_file` format.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Union

import yaml

WORLD_NAME = 'vlit_arena'
ROBOT_MODEL = 'vlit_robot'
BRIDGE_FILE_NAME = 'gz_bridge.yaml'
GZ_TO_ROS = 'GZ_TO_ROS'
ROS_TO_GZ = 'ROS_TO_GZ'

_MODEL_PREFIX = f'/model/{ROBOT_MODEL}'


@dataclass(frozen=True)
class BridgedTopic:
    """One topic carried between Gazebo Transport and ROS 2."""

    # ROS name: relative so a namespace applies, except the global /clock
    ros_topic: str
    # Gazebo Transport name, as the SDF world publishes or subscribes it
    gz_topic: str
    # ROS message type, `package/msg/Type`
    ros_type: str
    # Gazebo message type, `gz.msgs.Type`
    gz_type: str
    # GZ_TO_ROS or ROS_TO_GZ
    direction: str


BRIDGED_TOPICS = (
    BridgedTopic('camera/image_raw', f'{_MODEL_PREFIX}/camera/image_raw',
                 'sensor_msgs/msg/Image', 'gz.msgs.Image', GZ_TO_ROS),
    # gz-sensors publishes camera info next to the image topic; the SDF also names it.
    BridgedTopic('camera/camera_info', f'{_MODEL_PREFIX}/camera/camera_info',
                 'sensor_msgs/msg/CameraInfo', 'gz.msgs.CameraInfo', GZ_TO_ROS),
    # Wheel odometry from the DiffDrive system: starts at zero where the robot starts.
    BridgedTopic('odom', f'{_MODEL_PREFIX}/odom',
                 'nav_msgs/msg/Odometry', 'gz.msgs.Odometry', GZ_TO_ROS),
    # Robot pose in the world frame from the OdometryPublisher system, for the task node.
    BridgedTopic('sim/ground_truth', f'{_MODEL_PREFIX}/ground_truth',
                 'nav_msgs/msg/Odometry', 'gz.msgs.Odometry', GZ_TO_ROS),
    BridgedTopic('cmd_vel', f'{_MODEL_PREFIX}/cmd_vel',
                 'geometry_msgs/msg/Twist', 'gz.msgs.Twist', ROS_TO_GZ),
    # The world-scoped clock: Gazebo skips the root /clock when another publisher has it.
    BridgedTopic('/clock', f'/world/{WORLD_NAME}/clock',
                 'rosgraph_msgs/msg/Clock', 'gz.msgs.Clock', GZ_TO_ROS),
)


def gz_topic(ros_topic: str) -> str:
    """Return the Gazebo topic bridged to a ROS topic of BRIDGED_TOPICS."""
    for topic in BRIDGED_TOPICS:
        if topic.ros_topic == ros_topic:
            return topic.gz_topic
    raise KeyError(f'{ros_topic!r} is not bridged; bridged: '
                   f'{", ".join(t.ros_topic for t in BRIDGED_TOPICS)}')


def bridge_config() -> List[Dict[str, str]]:
    """Return the ros_gz_bridge `config_file` entries, in BRIDGED_TOPICS order."""
    return [{'ros_topic_name': t.ros_topic, 'gz_topic_name': t.gz_topic,
             'ros_type_name': t.ros_type, 'gz_type_name': t.gz_type,
             'direction': t.direction} for t in BRIDGED_TOPICS]


def bridge_yaml() -> str:
    """Return the bridge configuration file text (what config/gz_bridge.yaml holds)."""
    header = ('# ros_gz_bridge configuration for the vlit_ros Gazebo world.\n'
              '# Generated from vlit_ros/gazebo/bridge.py (BRIDGED_TOPICS); a test keeps this\n'
              '# file equal to it. ROS names are relative: run the bridge with\n'
              '# `--ros-args -r __ns:=/robot1` to namespace them (/clock stays global).\n')
    return header + yaml.safe_dump(bridge_config(), sort_keys=False)


def write_bridge_config(out_dir: Union[str, Path]) -> Path:
    """Write the bridge configuration into a folder (created if needed); return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / BRIDGE_FILE_NAME
    path.write_text(bridge_yaml())
    return path
