"""
The bring-up description (`vlit_ros.bringup`) and what reads it, without starting a graph.

One description feeds `launch/robot.launch.py` and `vlit-ros run`: these tests check the
graph for each `sim` value, the argument parsing, the command lines `vlit-ros run` builds,
the default parameters file against the nodes' own declarations, and the launch file
statically (launch itself is not installed here).
"""

import ast
import importlib.util
from pathlib import Path
import subprocess
import sys

import pytest

from vlit_ros import bringup
from vlit_ros.nodes import instruction_follower, sim_node, task_node
from vlit_ros.run import check_runnable, GraphRunner
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = ROOT / 'launch' / 'robot.launch.py'
PLUGIN = f'{ROOT / "test" / "fixtures" / "forward_policy.py"}:AlwaysForward'
NODE_MODULES = {'sim': sim_node, 'task': task_node,
                'instruction_follower': instruction_follower}


def _graph(world_dir=None, **arguments):
    arguments.setdefault('policy', PLUGIN)
    return bringup.describe(bringup.config_from_arguments(arguments), world_dir)


def test_mujoco_graph_has_sim_task_and_follower():
    graph = _graph(sim='mujoco', seed='4', episodes='3', real_time_factor='2.5')
    assert [n.name for n in graph.nodes] == ['sim', 'task', 'instruction_follower']
    assert graph.processes == ()
    sim, task, follower = graph.nodes
    assert (sim.executable, sim.module) == ('sim', 'vlit_ros.nodes.sim_node')
    assert sim.parameters == {'seed': 4, 'real_time_factor': 2.5, 'shifted': False,
                              'use_sim_time': False}
    assert task.parameters['seed'] == 4 and task.parameters['episodes'] == 3
    assert task.parameters['families'] == 'goto,turn,move,stop'
    assert task.parameters['reset_scenes'] is True
    assert 'min_episode_listeners' not in task.parameters
    assert task.parameters['use_sim_time'] is True
    assert follower.parameters == {'policy': PLUGIN, 'device': 'cpu', 'use_sim_time': True}
    assert all(n.namespace == '' and n.remappings == () for n in graph.nodes)


def test_families_reach_the_task_node_in_order():
    graph = _graph(families=' turn, goto ')
    assert graph.node('task').parameters['families'] == 'turn,goto'


def test_gazebo_graph_runs_gazebo_and_plays_in_its_one_world(tmp_path):
    graph = _graph(tmp_path, sim='gazebo', seed='6', namespace='robot1', gui='false')
    assert [p.name for p in graph.processes] == ['gz_sim', 'gz_bridge']
    assert 'gz' in graph.processes[0].cmd and 'parameter_bridge' in graph.processes[1].cmd
    assert any(p.name.endswith('.sdf') for p in tmp_path.iterdir())
    assert [n.name for n in graph.nodes] == ['task', 'instruction_follower']
    assert graph.node('task').parameters['reset_scenes'] is False
    assert all(n.namespace == '/robot1' for n in graph.nodes)
    with pytest.raises(bringup.BringupError, match='directory for the world'):
        _graph(sim='gazebo')


def test_no_simulator_runs_the_follower_on_wall_time():
    graph = _graph(sim='none')
    assert [n.name for n in graph.nodes] == ['instruction_follower']
    assert graph.node('instruction_follower').parameters['use_sim_time'] is False
    assert _graph(sim='none', use_sim_time='true').nodes[0].parameters['use_sim_time'] is True
    assert _graph(sim='mujoco', use_sim_time='false').node('task').parameters[
        'use_sim_time'] is False


def test_model_policy_needs_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(bringup, 'shipped_checkpoint', lambda: None)
    with pytest.raises(bringup.BringupError, match="policy 'model' needs a checkpoint"):
        _graph(policy='model')
    graph = _graph(policy='model', checkpoint=str(tmp_path))
    assert graph.node('instruction_follower').parameters['checkpoint'] == str(tmp_path)
    shipped = tmp_path / 'shipped'
    shipped.mkdir()
    monkeypatch.setattr(bringup, 'shipped_checkpoint', lambda: shipped)
    assert _graph(policy='model').node('instruction_follower').parameters['checkpoint'] == \
        str(shipped)
    with pytest.raises(bringup.BringupError, match='is not a directory'):
        _graph(policy='model', checkpoint=str(tmp_path / 'missing'))
    with pytest.raises(bringup.BringupError, match='only for policy model'):
        _graph(policy='random', checkpoint=str(tmp_path))


def test_learning_needs_the_trainer_node_and_the_model(monkeypatch, tmp_path):
    model = {'policy': 'model', 'checkpoint': str(tmp_path)}
    with pytest.raises(bringup.BringupError, match='learn:=true trains the model policy'):
        _graph(learn='true')
    monkeypatch.setattr(bringup.importlib.util, 'find_spec', lambda name: None)
    with pytest.raises(bringup.BringupError, match='learn:=true needs the trainer node'):
        _graph(learn='true', **model)
    monkeypatch.setattr(bringup.importlib.util, 'find_spec', lambda name: object())
    graph = _graph(learn='true', sim='none', device='cuda', **model)
    trainer = graph.node('trainer')
    assert (trainer.module, trainer.parameters['device']) == (bringup.TRAINER_MODULE, 'cuda')
    assert trainer.parameters['checkpoint'] == str(tmp_path)
    # On-policy learning: the follower samples and publishes its decisions.
    follower = graph.node('instruction_follower').parameters
    assert follower['sample_actions'] is True and follower['publish_experience'] is True
    assert 'publish_experience' not in _graph(**model).node('instruction_follower').parameters
    # The task waits for the trainer, so it sees every episode.
    assert _graph(learn='true', **model).node('task').parameters['min_episode_listeners'] == 1


def test_the_trainer_module_exists():
    assert bringup.importlib.util.find_spec(bringup.TRAINER_MODULE) is not None


@pytest.mark.parametrize('arguments, message', [
    ({'sim': 'webots'}, 'sim must be one of'),
    ({'learn': 'yes'}, 'learn must be one of'),
    ({'seed': 'seven'}, 'seed must be an integer'),
    ({'seed': '-1'}, 'seed must be non-negative'),
    ({'episodes': '0'}, 'episodes must be at least 1'),
    ({'real_time_factor': 'fast'}, 'real_time_factor must be a number'),
    ({'namespace': 'robot-1'}, 'invalid namespace'),
    ({'shifted': 'true', 'sim': 'none'}, 'shifted:=true needs sim:=mujoco'),
    ({'colour': 'red'}, 'unknown argument'),
    ({'families': 'goto,fly'}, "families: unknown families \\['fly'\\]"),
    ({'families': ' , '}, 'families: unknown families'),
    ({'families': 'goto', 'scenario': 'a.jsonl'}, 'a scenario file brings its own'),
])
def test_bad_arguments_are_named(arguments, message):
    with pytest.raises(bringup.BringupError, match=message):
        bringup.config_from_arguments(arguments)


def test_every_argument_is_documented_and_has_a_valid_default():
    names = [a.name for a in bringup.ARGUMENTS]
    assert len(set(names)) == len(names)
    for argument in bringup.ARGUMENTS:
        assert len(argument.description) > 20, argument.name
        assert not argument.choices or argument.default in argument.choices
    defaults = bringup.config_from_arguments({})
    assert defaults == bringup.BringupConfig()


def test_node_command_line_keeps_types_and_lets_parameters_win(tmp_path):
    graph = _graph(sim='mujoco', namespace='/fleet/robot2/', scenario='')
    params = tmp_path / 'params.yaml'
    runner = GraphRunner(graph, [params])
    command = runner.commands()['task']
    assert command[:4] == [sys.executable, '-m', 'vlit_ros.nodes.task_node', '--ros-args']
    assert command[command.index('-r') + 1] == '__node:=task'
    assert '__ns:=/fleet/robot2' in command
    # Per-node values come after the file: ROS applies the later one.
    assert command.index('--params-file') < command.index('-p')
    values = dict(command[i + 1].split(':=', 1) for i, part in enumerate(command)
                  if part == '-p')
    parsed = {name: yaml.safe_load(text) for name, text in values.items()}
    assert parsed == dict(graph.node('task').parameters)
    assert values['scenario'] == '""'


@pytest.mark.parametrize('value, text', [
    (True, 'true'), (3, '3'), (2.5, '2.5'), (1e-05, '1.0e-05'), ('true', '"true"'),
    ('', '""'), ('/x/p.py:Class', '"/x/p.py:Class"'),
])
def test_parameter_values_keep_their_type(value, text):
    assert bringup.format_parameter(value) == text
    assert yaml.safe_load(text) == value and type(yaml.safe_load(text)) is type(value)


def test_default_parameters_file_matches_the_nodes():
    path = bringup.default_params_file()
    assert path == ROOT / 'config' / 'vlit_ros.yaml'
    data = yaml.safe_load(path.read_text())
    graph = _graph(sim='mujoco')
    # Some parameters bring-up sets only with learn:=true (the task's min_episode_listeners).
    learning = _graph(sim='mujoco', learn='true', policy='model')
    assert set(data) == {f'/**/{name}' for name in NODE_MODULES}
    for name, module in NODE_MODULES.items():
        declared = {spec.name: spec.default for spec in module.PARAMETERS}
        values = data[f'/**/{name}']['ros__parameters']
        for key, value in values.items():
            assert key in declared, f'{name}: {key} is not a parameter of the node'
            assert value == declared[key] and type(value) is type(declared[key]), (name, key)
        # A node-specific entry would silently beat the bring-up argument.
        assert not set(values) & set(graph.node(name).parameters), name
        # Every parameter is either in the file or set by bring-up.
        set_by_bringup = set(graph.node(name).parameters) | \
            set(learning.node(name).parameters)
        assert set(values) | set_by_bringup | {'checkpoint'} >= set(declared), name


def test_gazebo_is_refused_clearly_where_it_is_missing(tmp_path, monkeypatch):
    graph = _graph(tmp_path, sim='gazebo')
    monkeypatch.setattr('shutil.which', lambda program: None)
    with pytest.raises(bringup.BringupError, match='sim:=gazebo needs `gz`'):
        check_runnable(graph)


def test_run_cli_dry_run_and_errors():
    def run(*args):
        return subprocess.run([sys.executable, '-m', 'vlit_ros.cli', 'run', *args],
                              capture_output=True, text=True, timeout=60)
    dry = run('--dry-run', 'sim:=mujoco', f'policy:={PLUGIN}', '--namespace', 'robot1')
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert [line.split(':')[0] for line in lines] == ['sim', 'task', 'instruction_follower']
    assert all('__ns:=/robot1' in line for line in lines)
    bad = run('sim:=webots')
    assert bad.returncode == 2 and 'sim must be one of' in bad.stderr
    assert run('sim').returncode == 2


def test_launch_file_compiles_and_declares_every_argument():
    source = LAUNCH_FILE.read_text()
    tree = ast.parse(source, filename=str(LAUNCH_FILE))
    compile(tree, str(LAUNCH_FILE), 'exec')
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {'generate_launch_description', '_launch_setup'} <= functions
    # The arguments come from bringup.ARGUMENTS, with their descriptions.
    assert 'bringup.ARGUMENTS' in source and 'description=a.description' in source
    # Nothing Rolling-only: these exist on Humble, Jazzy and Kilted.
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert imported <= {'LaunchDescription', 'DeclareLaunchArgument', 'ExecuteProcess',
                        'OpaqueFunction', 'LaunchConfiguration', 'Node', 'ParameterValue',
                        'bringup'}


def test_launch_file_builds_the_graph_where_launch_is_installed():
    pytest.importorskip('launch_ros', reason='launch_ros is not installed (ROS 2 only)')
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument
    spec = importlib.util.spec_from_file_location('robot_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = [e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)]
    assert declared == [a.name for a in bringup.ARGUMENTS]
    context = LaunchContext()
    context.launch_configurations.update({'policy': PLUGIN})
    for entity in description.entities[:-1]:
        entity.visit(context)
    actions = description.entities[-1].visit(context)
    assert len(actions) == 3
