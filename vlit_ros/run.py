"""
`vlit-ros run`: bring the node graph up as separate processes, without `ros2 launch`.

Reads the same description as `launch/robot.launch.py` (`vlit_ros.bringup`) and starts each
node as `python -m vlit_ros.nodes.X --ros-args -r __node:=... -r __ns:=... --params-file ...
-p key:=value`, over real rclpy. Arguments are the launch arguments, as options or in launch
style:

    vlit-ros run --sim mujoco --policy random --namespace robot1
    vlit-ros run sim:=mujoco policy:=random namespace:=robot1

Ctrl-C (or SIGTERM) stops every process: SIGINT first, so the follower publishes its zero
command, then SIGTERM after a grace period, then SIGKILL. The graph stays up until then, or
until every process has ended; a process that fails (non-zero exit) stops the others.
"""

import argparse
import os
from pathlib import Path
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, IO, List, Mapping, Optional, Sequence

from vlit_ros import bringup

SHUTDOWN_GRACE_S = 10.0
KILL_GRACE_S = 5.0
_COLORS = ('36', '35', '33', '32', '34', '31')


class GraphRunner:
    """Start the processes of a graph, watch them, and stop them cleanly."""

    def __init__(self, graph: bringup.Graph, params_files: Sequence[Path],
                 env: Optional[Mapping[str, str]] = None, log_dir: Optional[Path] = None,
                 echo: bool = True):
        self.graph = graph
        self.params_files = [str(p) for p in params_files]
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault('PYTHONUNBUFFERED', '1')
        self.env.setdefault('MUJOCO_GL', 'egl')
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.echo = echo
        self.processes: Dict[str, subprocess.Popen] = {}
        self._logs: List[IO] = []
        self._readers: List[threading.Thread] = []
        self._print_lock = threading.Lock()

    def commands(self) -> Dict[str, List[str]]:
        """Return the command line of every process, by name."""
        commands = {p.name: list(p.cmd) for p in self.graph.processes}
        for node in self.graph.nodes:
            commands[node.name] = node.command(sys.executable, self.params_files)
        return commands

    def start(self, names: Optional[Sequence[str]] = None) -> None:
        """
        Start the processes called `names` (default: all not started yet).

        Each runs in its own session, so terminal signals reach only this process, which
        forwards them in `shutdown`.
        """
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        commands = self.commands()
        unknown = set(names or ()) - set(commands)
        if unknown:
            raise KeyError(f'no process {", ".join(sorted(unknown))} in the graph')
        for index, (name, command) in enumerate(commands.items()):
            if name in self.processes or (names is not None and name not in names):
                continue
            log = open(self.log_dir / f'{name}.log', 'w') if self.log_dir is not None else None
            if log is not None:
                self._logs.append(log)
            pipe = subprocess.PIPE if self.echo else None
            process = subprocess.Popen(
                command, env=self.env, start_new_session=True,
                stdout=pipe or log or subprocess.DEVNULL,
                stderr=subprocess.STDOUT)
            self.processes[name] = process
            if self.echo:
                reader = threading.Thread(target=self._relay, daemon=True,
                                          args=(name, _COLORS[index % len(_COLORS)],
                                                process.stdout, log))
                reader.start()
                self._readers.append(reader)

    def _relay(self, name: str, color: str, stream: IO[bytes], log: Optional[IO]) -> None:
        prefix = f'\033[{color}m[{name}]\033[0m ' if sys.stdout.isatty() else f'[{name}] '
        for raw in stream:
            line = raw.decode('utf-8', 'replace').rstrip('\n')
            with self._print_lock:
                print(prefix + line, flush=True)
            if log is not None:
                log.write(line + '\n')
                log.flush()

    def exited(self) -> Dict[str, int]:
        """Return the exit code of every process that has ended."""
        return {name: p.returncode for name, p in self.processes.items()
                if p.poll() is not None}

    def wait(self, stop: Callable[[], bool], poll_s: float = 0.1) -> Dict[str, int]:
        """
        Wait until `stop()` is true, every process has ended, or one has failed.

        Returns the exit codes of the processes that ended.
        """
        while not stop():
            ended = self.exited()
            if len(ended) == len(self.processes) or any(ended.values()):
                return ended
            time.sleep(poll_s)
        return self.exited()

    def shutdown(self, grace_s: float = SHUTDOWN_GRACE_S) -> Dict[str, int]:
        """Stop every process (SIGINT, then SIGTERM, then SIGKILL); return the exit codes."""
        for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, KILL_GRACE_S),
                            (signal.SIGKILL, KILL_GRACE_S)):
            running = [p for p in self.processes.values() if p.poll() is None]
            if not running:
                break
            for process in running:
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and any(p.poll() is None for p in running):
                time.sleep(0.05)
        for reader in self._readers:
            reader.join(timeout=2.0)
        for log in self._logs:
            log.close()
        return {name: p.wait() for name, p in self.processes.items()}


def check_runnable(graph: bringup.Graph) -> None:
    """Raise BringupError when a process of the graph cannot start on this machine."""
    for process in graph.processes:
        # Skip an `env NAME=VALUE ...` prefix.
        program = next(part for part in process.cmd if part != 'env' and '=' not in part)
        if shutil.which(program) is None:
            raise bringup.BringupError(
                f'sim:=gazebo needs `{program}` on PATH (Gazebo and ros_gz_bridge from a '
                'ROS 2 install, e.g. ros-jazzy-ros-gz), which the pip install does not '
                'provide: use `ros2 launch vlit_ros robot.launch.py sim:=gazebo` on a ROS 2 '
                'machine, or sim:=mujoco here')


class SignalForwarder:
    """Turn SIGINT and SIGTERM into a flag, restoring the previous handlers on exit."""

    def __init__(self):
        self.signalled = threading.Event()
        self._previous = {}

    def __enter__(self) -> 'SignalForwarder':
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, lambda *_: self.signalled.set())
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('assignments', nargs='*', metavar='NAME:=VALUE',
                        help='launch-style arguments, e.g. sim:=mujoco policy:=random')
    for argument in bringup.ARGUMENTS:
        choices = f' ({"|".join(argument.choices)})' if argument.choices else ''
        parser.add_argument(f'--{argument.name.replace("_", "-")}', dest=argument.name,
                            default=None, metavar='VALUE',
                            help=f'{argument.description}{choices}; default: '
                                 f'{argument.default!r}'.replace('%', '%%'))
    parser.add_argument('--log-dir', default=None,
                        help="also write each process's output to DIR/NAME.log")
    parser.add_argument('--dry-run', action='store_true',
                        help='print the commands instead of running them')


def arguments_from(args: argparse.Namespace) -> Dict[str, str]:
    """Merge NAME:=VALUE assignments and options (options win) into argument texts."""
    values = {}
    for assignment in args.assignments:
        name, sep, value = assignment.partition(':=')
        if not sep:
            raise bringup.BringupError(f'expected NAME:=VALUE, got {assignment!r}')
        values[name] = value
    for argument in bringup.ARGUMENTS:
        option = getattr(args, argument.name)
        if option is not None:
            values[argument.name] = option
    return values


def run(args: argparse.Namespace) -> int:
    try:
        config = bringup.config_from_arguments(arguments_from(args))
        world_dir = tempfile.mkdtemp(prefix='vlit_gz_') if config.sim == 'gazebo' else None
        graph = bringup.describe(config, world_dir)
        runner = GraphRunner(graph, [bringup.params_file(config)],
                             log_dir=Path(args.log_dir) if args.log_dir else None)
        if args.dry_run:
            for name, command in runner.commands().items():
                print(f'{name}: {shlex.join(command)}')
            return 0
        check_runnable(graph)
    except bringup.BringupError as exc:
        print(f'vlit-ros run: error: {exc}', file=sys.stderr)
        return 2
    with SignalForwarder() as signals:
        runner.start()
        print(f'vlit-ros run: started {", ".join(runner.processes)} '
              f'(sim:={config.sim}{f" namespace:={config.namespace}" if config.namespace else ""}'
              f'); Ctrl-C stops them', flush=True)
        ended = runner.wait(signals.signalled.is_set)
        failed = {name: code for name, code in ended.items() if code}
        if failed:
            print(f'vlit-ros run: {", ".join(f"{n} exited with {c}" for n, c in failed.items())}'
                  '; stopping the others', file=sys.stderr, flush=True)
        codes = runner.shutdown()
    print('vlit-ros run: ' + ', '.join(f'{name} exited with {code}'
                                       for name, code in codes.items()), flush=True)
    return 1 if failed else 0
