"""
Bring-up pieces for `sim:=gazebo`: the process plan, and the launch file for every `sim`.

`gazebo_processes` is pure Python and fully tested here. `launch/robot.launch.py` is checked
statically (it compiles, defines `generate_launch_description`, every argument has a
description); where launch_ros is installed, its actions are also expanded, without starting
anything, for each `sim` value to check which simulator processes it would start.
"""

import ast
import os
from pathlib import Path
import re

import pytest

from vlit_ros.gazebo.bridge import bridge_yaml
from vlit_ros.gazebo.launch_plan import gazebo_processes, gz_partition, normalize_namespace
from vlit_ros.gazebo.sdf import build_world_sdf, world_file_name
from vlit_ros.sim.scene import Scene

LAUNCH_FILE = Path(__file__).resolve().parents[1] / 'launch' / 'robot.launch.py'
needs_launch_file = pytest.mark.skipif(not LAUNCH_FILE.exists(),
                                       reason='launch/robot.launch.py does not exist yet')


def _by_name(processes):
    assert [p['name'] for p in processes] == ['gz_sim', 'gz_bridge']
    assert all(isinstance(part, str) for p in processes for part in p['cmd'])
    return {p['name']: p['cmd'] for p in processes}


def test_headless_plan_writes_the_world_and_bridge(tmp_path):
    cmds = _by_name(gazebo_processes(6, '', False, str(tmp_path / 'worlds')))
    world = tmp_path / 'worlds' / world_file_name(Scene.generate(6))
    assert cmds['gz_sim'] == ['gz', 'sim', '-r', '-s', '--headless-rendering', str(world)]
    assert world.read_text() == build_world_sdf(Scene.generate(6))
    bridge = cmds['gz_bridge']
    assert bridge[:5] == ['ros2', 'run', 'ros_gz_bridge', 'parameter_bridge', '--ros-args']
    assert bridge[5] == '-p' and bridge[6].startswith('config_file:=') and len(bridge) == 7
    config = Path(bridge[6].split(':=', 1)[1])
    assert config.parent == tmp_path / 'worlds'
    assert config.read_text() == bridge_yaml()


def test_gui_plan_runs_server_and_gui_together(tmp_path):
    cmds = _by_name(gazebo_processes(6, '', True, str(tmp_path)))
    assert cmds['gz_sim'][:3] == ['gz', 'sim', '-r']
    assert '-s' not in cmds['gz_sim'] and '--headless-rendering' not in cmds['gz_sim']


@pytest.mark.parametrize('namespace', ['robot1', '/robot1', '/robot1/'])
def test_namespace_applies_to_the_bridge_and_isolates_gazebo(tmp_path, namespace):
    cmds = _by_name(gazebo_processes(2, namespace, False, str(tmp_path)))
    for cmd in cmds.values():
        assert cmd[:2] == ['env', 'GZ_PARTITION=vlit_robot1']
    assert cmds['gz_sim'][2:4] == ['gz', 'sim']
    bridge = cmds['gz_bridge']
    assert bridge[bridge.index('-r') + 1] == '__ns:=/robot1'
    assert bridge.index('-r') > bridge.index('--ros-args')


def test_namespace_rules():
    assert normalize_namespace('') == normalize_namespace('/') == ''
    assert normalize_namespace(' fleet/robot_2/ ') == '/fleet/robot_2'
    assert gz_partition('/fleet/robot_2') == 'vlit_fleet_robot_2'
    assert gz_partition('') == ''
    for bad in ('1robot', 'robot-1', 'a b', 'robot/~x'):
        with pytest.raises(ValueError, match='invalid namespace'):
            normalize_namespace(bad)


@pytest.mark.parametrize('seed, gui', [('3', False), (3, 'false'), (3.0, True)])
def test_launch_strings_are_not_taken_for_values(tmp_path, seed, gui):
    with pytest.raises(TypeError):
        gazebo_processes(seed, '', gui, str(tmp_path))


def test_bad_namespace_writes_nothing(tmp_path):
    with pytest.raises(ValueError):
        gazebo_processes(0, 'robot-1', False, str(tmp_path / 'out'))
    assert not (tmp_path / 'out').exists()


# -- launch/robot.launch.py ---------------------------------------------------------------


@needs_launch_file
def test_launch_file_compiles_and_describes_its_arguments():
    source = LAUNCH_FILE.read_text()
    tree = ast.parse(source, filename=str(LAUNCH_FILE))
    compile(tree, str(LAUNCH_FILE), 'exec')
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert 'generate_launch_description' in functions
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, 'id', getattr(
                node.func, 'attr', None)) == 'DeclareLaunchArgument':
            keywords = {k.arg for k in node.keywords}
            assert 'description' in keywords, \
                f'line {node.lineno}: DeclareLaunchArgument without a description'


def _expand(arguments):
    """Return the (package or '', command text) of every process the launch file would start."""
    # Imported here: only tests that found launch_ros get this far.
    import launch
    from launch.actions import (DeclareLaunchArgument, ExecuteProcess, GroupAction,
                                IncludeLaunchDescription, OpaqueFunction,
                                SetEnvironmentVariable, SetLaunchConfiguration)
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from launch.substitutions import SubstitutionFailure
    from launch.utilities import normalize_to_list_of_substitutions, perform_substitutions
    import launch_ros.actions
    from launch_ros.actions import Node

    def text(value):
        if value is None or isinstance(value, str):
            return value or ''
        parts = normalize_to_list_of_substitutions(value)
        try:
            return perform_substitutions(context, parts)
        except SubstitutionFailure:
            # e.g. FindExecutable for a program this machine lacks: describe it instead.
            return ''.join(part.describe() for part in parts)

    # Actions that only configure the context are executed; anything else is only described,
    # so no process, timer or event handler ever starts.
    configuring = tuple(cls for cls in (
        launch.LaunchDescription, DeclareLaunchArgument, GroupAction, IncludeLaunchDescription,
        OpaqueFunction, SetEnvironmentVariable, SetLaunchConfiguration,
        getattr(launch.actions, 'PushLaunchConfigurations', None),
        getattr(launch.actions, 'PopLaunchConfigurations', None),
        getattr(launch.actions, 'ResetLaunchConfigurations', None),
        getattr(launch.actions, 'PushEnvironment', None),
        getattr(launch.actions, 'PopEnvironment', None),
        getattr(launch.actions, 'ResetEnvironment', None),
        getattr(launch_ros.actions, 'PushRosNamespace', None),
        getattr(launch_ros.actions, 'PushROSNamespace', None),
        getattr(launch_ros.actions, 'SetParameter', None),
        getattr(launch_ros.actions, 'SetRemap', None),
        getattr(launch_ros.actions, 'SetUseSimTime', None)) if cls is not None)
    context = launch.LaunchContext()
    pending = [IncludeLaunchDescription(PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
                                        launch_arguments=arguments.items())]
    processes = []
    saved_environment = dict(os.environ)
    try:
        while pending:
            entity = pending.pop(0)
            condition = getattr(entity, 'condition', None)
            if condition is not None and not condition.evaluate(context):
                continue
            if isinstance(entity, Node):
                processes.append((text(entity.node_package), text(entity.node_executable)))
            elif isinstance(entity, ExecuteProcess):
                processes.append(('', ' '.join(text(part) for part in entity.cmd)))
            elif isinstance(entity, configuring):
                pending[:0] = list(entity.visit(context) or [])
            else:
                described = list(entity.describe_sub_entities())
                for _, entities in entity.describe_conditional_sub_entities():
                    described += list(entities)
                pending[:0] = described
    finally:
        os.environ.clear()
        os.environ.update(saved_environment)
    return processes


def _is_gazebo_server(process):
    return re.search(r'(^|\s)gz sim(\s|$)', process[1]) is not None


def _is_bridge(process):
    return 'parameter_bridge' in process[1]


def _is_mujoco_sim(process):
    """Recognise the built-in simulator node: executable `sim`, `sim_node` or `mujoco_sim`."""
    package, command = process
    name = r'(mujoco_)?sim(_node)?'
    if package:
        return package == 'vlit_ros' and re.fullmatch(name, command) is not None
    words = command.split()
    return bool(words) and (
        re.search(rf'(^|/){name}$', words[0]) is not None or
        re.search(rf'vlit_ros\.nodes\.{name}(\s|$)', command) is not None or
        re.search(rf'ros2 run vlit_ros {name}(\s|$)', command) is not None)


@needs_launch_file
@pytest.mark.parametrize('sim', ['mujoco', 'gazebo', 'none'])
def test_launch_file_starts_the_simulator_asked_for(sim, tmp_path):
    pytest.importorskip('launch_ros', reason='launch_ros is not installed (ROS 2 only)')
    processes = _expand({'sim': sim})
    servers = [p for p in processes if _is_gazebo_server(p)]
    bridges = [p for p in processes if _is_bridge(p)]
    mujoco = [p for p in processes if _is_mujoco_sim(p)]
    expected = {'mujoco': (0, 0, 1), 'gazebo': (1, 1, 0), 'none': (0, 0, 0)}[sim]
    assert (len(servers), len(bridges), len(mujoco)) == expected, processes
