"""
Bring up vlit_ros: the simulator asked for, the task driver and the instruction follower.

    ros2 launch vlit_ros robot.launch.py sim:=mujoco|gazebo|none [namespace:=robot1] ...

The graph comes from `vlit_ros.bringup`, the description `vlit-ros run` also reads; this
file only turns it into launch actions. Works on Humble, Jazzy and Kilted.
"""

import tempfile

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from vlit_ros import bringup


def _typed(parameters):
    # launch_ros reads plain strings as YAML ('' would be null, 'true' a bool): keep them str.
    return {name: ParameterValue(value, value_type=str) if isinstance(value, str) else value
            for name, value in parameters.items()}


def _launch_setup(context):
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in bringup.ARGUMENTS}
    config = bringup.config_from_arguments(values)
    world_dir = tempfile.mkdtemp(prefix='vlit_gz_') if config.sim == 'gazebo' else None
    graph = bringup.describe(config, world_dir)
    params_file = str(bringup.params_file(config))
    actions = [ExecuteProcess(cmd=list(p.cmd), name=p.name, output='screen')
               for p in graph.processes]
    for node in graph.nodes:
        actions.append(Node(
            package=bringup.PACKAGE, executable=node.executable, name=node.name,
            namespace=node.namespace or None,
            # The file first: the node's own values override it.
            parameters=[params_file, _typed(node.parameters)],
            remappings=list(node.remappings), output='screen', emulate_tty=True))
    return actions


def generate_launch_description():
    """Declare every bring-up argument, then build the graph once they are known."""
    arguments = [DeclareLaunchArgument(a.name, default_value=a.default,
                                       description=a.description,
                                       **({'choices': list(a.choices)} if a.choices else {}))
                 for a in bringup.ARGUMENTS]
    return LaunchDescription(arguments + [OpaqueFunction(function=_launch_setup)])
