"""
The node graph, described once for `ros2 launch` and for `vlit-ros run` (DESIGN.md §1).

Pure Python on purpose: no `launch` imports, so the pip install (which has no `launch`)
and the tests read the same description as `launch/robot.launch.py`.

- `ARGUMENTS`: every bring-up argument, with its default, choices and description (the
  launch file declares one `DeclareLaunchArgument` per entry; `vlit-ros run` one option).
- `config_from_arguments({name: text})`: the typed, checked `BringupConfig`.
- `describe(config, world_dir)`: the `Graph` to start: `NodeSpec`s (a package executable for
  launch, a Python module for `vlit-ros run`, parameters, remappings, namespace) and external
  `ProcessSpec`s (Gazebo).

| sim | starts |
| --- | --- |
| `mujoco` | sim, task, instruction_follower (+ trainer with learn:=true) |
| `gazebo` | gz sim, ros_gz_bridge (`gazebo_processes`), task, instruction_follower (+ trainer) |
| `none` | instruction_follower (+ trainer): a real robot's drivers provide the rest |
"""

from dataclasses import dataclass, field, replace
import importlib.util
import json
from pathlib import Path
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from vlit_ros.checkpoints import DEFAULT_CHECKPOINT
from vlit_ros.gazebo.launch_plan import gazebo_processes, normalize_namespace
from vlit_ros.sim.scene import SHIFT_DESCRIPTION
from vlit_ros.sim.tasks import FAMILIES, parse_families

PACKAGE = 'vlit_ros'
SIMULATORS = ('mujoco', 'gazebo', 'none')
BOOLEANS = ('true', 'false')
PARAMS_FILE_NAME = 'vlit_ros.yaml'
TRAINER_MODULE = 'vlit_ros.nodes.trainer_node'
ParameterValue = Union[bool, int, float, str]


class BringupError(ValueError):
    """The bring-up arguments do not describe a graph that can start."""


@dataclass(frozen=True)
class Argument:
    """One bring-up argument: a launch argument and a `vlit-ros run` option."""

    name: str
    # the default, as the text a user would type
    default: str
    description: str
    # the accepted values ((): any)
    choices: Tuple[str, ...] = ()


ARGUMENTS: Tuple[Argument, ...] = (
    Argument('sim', 'mujoco', 'simulator: mujoco (built in), gazebo, or none (a real robot '
             'whose drivers provide the camera, odometry and cmd_vel)', SIMULATORS),
    Argument('namespace', '', 'namespace of every node and relative topic, e.g. robot1 '
             '(empty: none)'),
    Argument('use_sim_time', 'auto', 'nodes follow /clock: true, false, or auto (true with a '
             'simulator, false with sim:=none)', BOOLEANS + ('auto',)),
    Argument('params_file', '', "parameters YAML file for every node (empty: the package's "
             f'config/{PARAMS_FILE_NAME})'),
    Argument('policy', 'model', 'instruction follower policy: model, random, or '
             'PATH.py:Class (a plug-in)'),
    Argument('checkpoint', '', 'checkpoint directory for policy model (empty: the shipped '
             'checkpoint)'),
    Argument('device', 'cpu', 'torch device of the model and the trainer: cpu, cuda, cuda:N, '
             'mps'),
    Argument('learn', 'false', 'also start the trainer node (online learning from rewards)',
             BOOLEANS),
    Argument('gui', 'false', 'Gazebo only: start the Gazebo GUI with the server', BOOLEANS),
    Argument('seed', '0', "scene seed: the Gazebo world, and the task's first episode "
             '(episode i uses seed + i)'),
    Argument('episodes', '8', 'number of episodes the task node plays'),
    Argument('scenario', '', 'instruction file for the task node (JSON lines, as `vlit-ros '
             'eval --instructions`; empty: generated instructions)'),
    Argument('families', ','.join(FAMILIES), 'families of the generated instructions, '
             'comma-separated and cycled in order, e.g. goto (not with scenario)'),
    Argument('real_time_factor', '1.0', 'MuJoCo only: simulated seconds per wall second '
             '(0: as fast as possible)'),
    Argument('shifted', 'false', f'MuJoCo only: the domain-shifted robot ({SHIFT_DESCRIPTION})',
             BOOLEANS),
    Argument('results_path', '', "write the task's results JSON here (empty: do not write)"),
)
ARGUMENTS_BY_NAME: Dict[str, Argument] = {a.name: a for a in ARGUMENTS}


@dataclass(frozen=True)
class BringupConfig:
    """The bring-up arguments, typed and checked (see ARGUMENTS for their meaning)."""

    sim: str = 'mujoco'
    namespace: str = ''
    use_sim_time: bool = True
    # '' means the package's config/vlit_ros.yaml
    params_file: str = ''
    policy: str = 'model'
    # '' means the shipped checkpoint
    checkpoint: str = ''
    device: str = 'cpu'
    learn: bool = False
    gui: bool = False
    seed: int = 0
    episodes: int = 8
    scenario: str = ''
    families: Tuple[str, ...] = FAMILIES
    real_time_factor: float = 1.0
    shifted: bool = False
    results_path: str = ''

    def __post_init__(self):
        if self.sim not in SIMULATORS:
            raise BringupError(f'sim must be one of {", ".join(SIMULATORS)}, got {self.sim!r}')
        if self.seed < 0:
            raise BringupError(f'seed must be non-negative, got {self.seed}')
        if self.episodes < 1:
            raise BringupError(f'episodes must be at least 1, got {self.episodes}')
        if not 0.0 <= self.real_time_factor <= 1000.0:
            raise BringupError(f'real_time_factor must be in [0, 1000], '
                               f'got {self.real_time_factor}')
        if not self.policy.strip():
            raise BringupError('policy must not be empty')
        if self.scenario and self.families != FAMILIES:
            raise BringupError('families chooses generated instructions; a scenario file '
                               'brings its own')
        if self.sim != 'mujoco' and self.shifted:
            raise BringupError('shifted:=true needs sim:=mujoco (the Gazebo world takes '
                               '`vlit-ros gz-world --world shifted`)')


def _parse_bool(name: str, text: str) -> bool:
    if text.strip().lower() not in BOOLEANS:
        raise BringupError(f'{name} must be true or false, got {text!r}')
    return text.strip().lower() == 'true'


def _parse_number(name: str, text: str, kind: type):
    try:
        return kind(text.strip())
    except ValueError:
        raise BringupError(f'{name} must be {"an integer" if kind is int else "a number"}, '
                           f'got {text!r}') from None


def config_from_arguments(values: Mapping[str, str]) -> BringupConfig:
    """Build the config from argument texts (launch configurations, CLI options)."""
    unknown = set(values) - set(ARGUMENTS_BY_NAME)
    if unknown:
        raise BringupError(f'unknown argument(s) {", ".join(sorted(unknown))}; known: '
                           f'{", ".join(ARGUMENTS_BY_NAME)}')
    text = {a.name: str(values.get(a.name, a.default)) for a in ARGUMENTS}
    for argument in ARGUMENTS:
        if argument.choices and text[argument.name].strip().lower() not in argument.choices:
            raise BringupError(f'{argument.name} must be one of {", ".join(argument.choices)}, '
                               f'got {text[argument.name]!r}')
    sim = text['sim'].strip().lower()
    sim_time = text['use_sim_time'].strip().lower()
    return BringupConfig(
        sim=sim,
        namespace=_normalize_namespace(text['namespace']),
        use_sim_time=sim != 'none' if sim_time == 'auto' else sim_time == 'true',
        params_file=text['params_file'].strip(),
        policy=text['policy'].strip(),
        checkpoint=text['checkpoint'].strip(),
        device=text['device'].strip(),
        learn=_parse_bool('learn', text['learn']),
        gui=_parse_bool('gui', text['gui']),
        seed=_parse_number('seed', text['seed'], int),
        episodes=_parse_number('episodes', text['episodes'], int),
        scenario=text['scenario'].strip(),
        families=_parse_families(text['families']),
        real_time_factor=_parse_number('real_time_factor', text['real_time_factor'], float),
        shifted=_parse_bool('shifted', text['shifted']),
        results_path=text['results_path'].strip(),
    )


def _parse_families(text: str) -> Tuple[str, ...]:
    try:
        return parse_families(text)
    except ValueError as exc:
        raise BringupError(f'families: {exc}') from None


def _normalize_namespace(namespace: str) -> str:
    try:
        return normalize_namespace(namespace)
    except ValueError as exc:
        raise BringupError(str(exc)) from exc


@dataclass(frozen=True)
class NodeSpec:
    """One ROS node of the graph."""

    # node name
    name: str
    # console script of the package (`ros2 run vlit_ros <executable>`, launch_ros Node)
    executable: str
    # module run by `python -m` in `vlit-ros run`
    module: str
    # absolute namespace, '' for none
    namespace: str = ''
    # parameters that override the parameters file
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)
    # (from, to) topic remappings
    remappings: Tuple[Tuple[str, str], ...] = ()

    def ros_arguments(self, params_files: Sequence[str] = ()) -> List[str]:
        """Return `--ros-args ...` that give the node its name, namespace and parameters."""
        args = ['--ros-args', '-r', f'__node:={self.name}']
        if self.namespace:
            args += ['-r', f'__ns:={self.namespace}']
        for path in params_files:
            args += ['--params-file', str(path)]
        for name, value in self.parameters.items():
            args += ['-p', f'{name}:={format_parameter(value)}']
        for source, target in self.remappings:
            args += ['-r', f'{source}:={target}']
        return args

    def command(self, python: str = sys.executable,
                params_files: Sequence[str] = ()) -> List[str]:
        """Return the command line that runs the node as its own process."""
        return [python, '-m', self.module] + self.ros_arguments(params_files)


@dataclass(frozen=True)
class ProcessSpec:
    """A process that is not one of the package's nodes (Gazebo and its bridge)."""

    name: str
    cmd: Tuple[str, ...]


@dataclass(frozen=True)
class Graph:
    """Everything a bring-up starts."""

    config: BringupConfig
    nodes: Tuple[NodeSpec, ...]
    processes: Tuple[ProcessSpec, ...] = ()

    def node(self, name: str) -> NodeSpec:
        """Return the node called `name`, or raise a KeyError naming the ones there are."""
        for spec in self.nodes:
            if spec.name == name:
                return spec
        raise KeyError(f'no node {name!r} in the graph; nodes: '
                       f'{", ".join(n.name for n in self.nodes)}')

    def with_parameters(self, name: str, **parameters: ParameterValue) -> 'Graph':
        """Return the graph with more parameters (or other values) for node `name`."""
        spec = self.node(name)
        updated = replace(spec, parameters={**spec.parameters, **parameters})
        return replace(self, nodes=tuple(updated if n is spec else n for n in self.nodes))


def format_parameter(value: ParameterValue) -> str:
    """Return a parameter value as `-p name:=VALUE` text that keeps its type."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        # YAML reads 1e-05 as a string: a float needs its decimal point.
        return text if '.' in text else text.replace('e', '.0e')
    # A JSON string is a YAML string: 'true', '1' or '' stay strings.
    return json.dumps(str(value))


def shipped_checkpoint() -> Optional[Path]:
    """Return the checkpoint that ships with the package, or None when there is none."""
    return DEFAULT_CHECKPOINT if (DEFAULT_CHECKPOINT / 'config.json').is_file() else None


def default_params_file() -> Path:
    """Return config/vlit_ros.yaml of the source tree, the pip install or the ROS install."""
    candidates = [Path(__file__).resolve().parents[1] / 'config' / PARAMS_FILE_NAME,
                  Path(sys.prefix) / 'share' / PACKAGE / 'config' / PARAMS_FILE_NAME]
    for path in candidates:
        if path.is_file():
            return path
    try:
        from ament_index_python.packages import get_package_share_directory
        path = Path(get_package_share_directory(PACKAGE)) / 'config' / PARAMS_FILE_NAME
    except (ImportError, LookupError, OSError):
        path = None
    if path is not None and path.is_file():
        return path
    raise BringupError(f'cannot find {PARAMS_FILE_NAME}; looked in '
                       f'{", ".join(str(p.parent) for p in candidates)} and the ament index')


def params_file(config: BringupConfig) -> Path:
    """Return the parameters file the nodes read, checked to exist."""
    if not config.params_file:
        return default_params_file()
    path = Path(config.params_file).expanduser()
    if not path.is_file():
        raise BringupError(f'params_file {path} does not exist')
    return path


def _follower(config: BringupConfig) -> NodeSpec:
    parameters: Dict[str, ParameterValue] = {
        'policy': config.policy, 'device': config.device, 'use_sim_time': config.use_sim_time}
    if config.policy == 'model':
        checkpoint = config.checkpoint or shipped_checkpoint()
        if not checkpoint:
            raise BringupError(
                f"policy 'model' needs a checkpoint: none given and none shipped in "
                f'{DEFAULT_CHECKPOINT}; pass checkpoint:=DIR, or '
                'policy:=random (or a PATH.py:Class plug-in)')
        if not Path(checkpoint).expanduser().is_dir():
            raise BringupError(f'checkpoint {checkpoint} is not a directory')
        parameters['checkpoint'] = str(checkpoint)
    elif config.checkpoint:
        raise BringupError(f'checkpoint is only for policy model, not {config.policy!r}')
    if config.learn:
        if config.policy != 'model':
            raise BringupError(f'learn:=true trains the model policy, not {config.policy!r}')
        # On-policy learning: the follower samples its actions and publishes what it did.
        parameters.update({'sample_actions': True, 'publish_experience': True})
    return NodeSpec('instruction_follower', 'instruction_follower',
                    'vlit_ros.nodes.instruction_follower', config.namespace, parameters)


def _task(config: BringupConfig) -> NodeSpec:
    parameters: Dict[str, ParameterValue] = {
        'seed': config.seed, 'episodes': config.episodes, 'scenario': config.scenario,
        'families': ','.join(config.families),
        'results_path': config.results_path, 'use_sim_time': config.use_sim_time,
        # Gazebo shows one world and cannot load another per episode.
        'reset_scenes': config.sim == 'mujoco'}
    if config.learn:
        # The trainer must see every episode from the first. Without it, the parameters
        # file decides (a recorder or a test may ask the task to wait for it).
        parameters['min_episode_listeners'] = 1
    return NodeSpec('task', 'task', 'vlit_ros.nodes.task_node', config.namespace, parameters)


def _sim(config: BringupConfig) -> NodeSpec:
    # The simulator makes the clock: it never follows one.
    parameters: Dict[str, ParameterValue] = {
        'seed': config.seed, 'real_time_factor': config.real_time_factor,
        'shifted': config.shifted, 'use_sim_time': False}
    return NodeSpec('sim', 'sim', 'vlit_ros.nodes.sim_node', config.namespace, parameters)


def _trainer(config: BringupConfig) -> NodeSpec:
    if importlib.util.find_spec(TRAINER_MODULE) is None:
        raise BringupError(f'learn:=true needs the trainer node ({TRAINER_MODULE}), '
                           'which this version of vlit_ros does not have yet')
    parameters: Dict[str, ParameterValue] = {
        'device': config.device, 'use_sim_time': config.use_sim_time}
    checkpoint = config.checkpoint or shipped_checkpoint()
    if checkpoint:
        parameters['checkpoint'] = str(checkpoint)
    return NodeSpec('trainer', 'trainer', TRAINER_MODULE, config.namespace, parameters)


def describe(config: BringupConfig, world_dir: Optional[str] = None) -> Graph:
    """
    Return the graph `config` brings up.

    `world_dir` receives the Gazebo world and bridge configuration (sim:=gazebo only, where
    it is required).
    """
    nodes: List[NodeSpec] = []
    processes: List[ProcessSpec] = []
    if config.sim == 'mujoco':
        nodes += [_sim(config), _task(config)]
    elif config.sim == 'gazebo':
        if not world_dir:
            raise BringupError('sim:=gazebo needs a directory for the world file')
        processes += [ProcessSpec(p['name'], tuple(p['cmd'])) for p in gazebo_processes(
            config.seed, config.namespace, config.gui, world_dir)]
        nodes.append(_task(config))
    nodes.append(_follower(config))
    if config.learn:
        nodes.append(_trainer(config))
    return Graph(config, tuple(nodes), tuple(processes))
