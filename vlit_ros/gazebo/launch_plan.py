"""
The external processes that bring up the Gazebo simulation (`sim:=gazebo`).

Pure Python on purpose (no `launch` imports), so the bring-up can be tested without a ROS
install: `gazebo_processes` writes the world and the bridge configuration and returns the
commands; the launch file turns each into an `ExecuteProcess`.

Namespaces: the bridge runs in the robot's namespace, which namespaces every relative ROS
topic (`/robot1/cmd_vel`; `/clock` stays global). Each namespaced robot also gets a Gazebo
Transport partition of its own (`GZ_PARTITION=vlit_robot1`, set on both the server and the
bridge), so two simulations on one host never see each other's topics, services or clocks.
"""

import re
from typing import Dict, List, Union

from vlit_ros.gazebo.bridge import write_bridge_config
from vlit_ros.gazebo.sdf import write_world
from vlit_ros.sim.scene import Scene

PARTITION_PREFIX = 'vlit'
_NAME_TOKEN = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')


def normalize_namespace(namespace: str) -> str:
    """
    Return a namespace as an absolute ROS name ('' for none), or raise a ValueError.

    'robot1', '/robot1' and '/robot1/' all give '/robot1'; '' and '/' give ''.
    """
    tokens = [t for t in namespace.strip().split('/') if t]
    bad = [t for t in tokens if not _NAME_TOKEN.fullmatch(t)]
    if bad:
        raise ValueError(f'invalid namespace {namespace!r}: {bad[0]!r} is not a valid ROS name '
                         'token (letters, digits, underscores; not starting with a digit)')
    return '/' + '/'.join(tokens) if tokens else ''


def gz_partition(namespace: str) -> str:
    """Return the Gazebo Transport partition of a namespaced robot ('' when not namespaced)."""
    normalized = normalize_namespace(namespace)
    return PARTITION_PREFIX + normalized.replace('/', '_') if normalized else ''


def gazebo_processes(seed: int, namespace: str, gui: bool,
                     world_dir: str) -> List[Dict[str, Union[str, List[str]]]]:
    """
    Write the world and bridge configuration into `world_dir`; return the processes to start.

    Each process is `{'name': str, 'cmd': [str, ...]}`: the Gazebo server (`gz sim`, running
    at once; headless with EGL rendering unless `gui`) and ros_gz_bridge's parameter_bridge.
    The robot is part of the world file, so there is no separate spawn step.
    """
    # Launch configurations are strings, and 'false' is truthy: insist on real values.
    if not isinstance(gui, bool):
        raise TypeError(f'gui must be a bool, got {gui!r}')
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f'seed must be an int, got {seed!r}')
    ros_namespace = normalize_namespace(namespace)
    partition = gz_partition(ros_namespace)
    world = write_world(Scene.generate(seed), world_dir)
    bridge_config = write_bridge_config(world_dir)
    # `env` sets the partition for the process alone, leaving the launching shell alone.
    env = ['env', f'GZ_PARTITION={partition}'] if partition else []
    server = ['gz', 'sim', '-r'] + ([] if gui else ['-s', '--headless-rendering'])
    bridge = ['ros2', 'run', 'ros_gz_bridge', 'parameter_bridge', '--ros-args']
    if ros_namespace:
        bridge += ['-r', f'__ns:={ros_namespace}']
    bridge += ['-p', f'config_file:={bridge_config}']
    return [
        {'name': 'gz_sim', 'cmd': env + server + [str(world)]},
        {'name': 'gz_bridge', 'cmd': env + bridge},
    ]
