"""
`vlit-ros demo`: the whole loop over ROS 2 in one command.

Brings up the graph of `sim:=mujoco` as separate processes with the code of `vlit-ros run`
(simulator faster than real time on simulated time, task node playing a short scenario over
every instruction family, instruction follower), watches it from a monitor node in this
process, and leaves under `runs/<timestamp>/`:

- `results.json`: the task node's results (the schema of `vlit-ros eval --json`);
- `demo.mp4`: every episode, the camera view beside a top-down view, with the instruction,
  the action and the verdict overlaid;
- `latency.png`: frame -> command latency of every decision;
- `logs/<node>.log`: each process's output.

The graph runs on a ROS domain of its own (localhost discovery), so it never meets another
graph on the network; `--domain-id` picks one to watch it with other tools. When the
scenario is over every process is stopped with SIGINT, and the demo checks that the last
command on `cmd_vel` was zero.
"""

import argparse
from dataclasses import dataclass
import datetime
import json
import math
import os
from pathlib import Path
import queue
import random
import threading
import time
from typing import Dict, List, Optional

import cv2
from geometry_msgs.msg import Twist
import imageio.v2 as imageio
from nav_msgs.msg import Odometry
import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.progress import TimeElapsedColumn
from rich.table import Table
from sensor_msgs.msg import Image
from std_msgs.msg import String

from vlit_ros import bringup
from vlit_ros.nodes.images import image_to_rgb
from vlit_ros.qos import COMMAND_QOS, RECORDING_DEPTH, RECORDING_QOS, STREAM_QOS
from vlit_ros.run import GraphRunner, SignalForwarder
from vlit_ros.sim.scene import Scene
from vlit_ros.sim.tasks import FAMILIES, GotoTask, task_from_dict
from vlit_ros.sim.video import compose_frame

DEFAULT_EPISODES = 8
DEFAULT_SPEED = 4.0
VIDEO_FPS = 10
# Frames the verdict stays on screen after each episode.
VERDICT_FRAMES = 10
# After the graph stops, how long to wait for episode ends still on their way (s).
FINAL_EVENTS_S = 3.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--episodes', type=int, default=DEFAULT_EPISODES,
                        help='episodes to play; they cycle through the families goto, turn, '
                             f'move, stop (default: {DEFAULT_EPISODES})')
    parser.add_argument('--seed', type=int, default=0,
                        help='episode i uses scene seed SEED + i (default: 0)')
    parser.add_argument('--policy', default=None,
                        help='model | random | PATH.py:Class (default: model with the shipped '
                             'checkpoint, random when none ships)')
    parser.add_argument('--checkpoint', default=None,
                        help='checkpoint directory for --policy model (default: shipped)')
    parser.add_argument('--device', default='cpu', help='torch device for the model')
    parser.add_argument('--speed', type=float, default=DEFAULT_SPEED,
                        help='simulated seconds per wall second (default: '
                             f'{DEFAULT_SPEED:g}; 0: as fast as possible)')
    parser.add_argument('--out', default='runs',
                        help='results go to OUT/<timestamp>/ (default: runs)')
    parser.add_argument('--no-video', action='store_true', help='do not record demo.mp4')
    parser.add_argument('--domain-id', type=int, default=None,
                        help='ROS_DOMAIN_ID of the graph (default: a random free-looking one)')
    parser.add_argument('--timeout', type=float, default=600.0,
                        help='give up after this many seconds (default: 600)')


@dataclass
class _Episode:
    """What the video overlay needs about the running episode."""

    text: str
    start_time: float
    arena_size: float
    target: Optional[tuple]
    trail: List[tuple]


def _stamp_seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class VideoWriter:
    """Appends RGB frames to an H.264 MP4 as they come."""

    def __init__(self, path: Path):
        self.path = path
        self.frames = 0
        self._writer = None

    def add(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        frame = frame[:h - h % 2, :w - w % 2]
        if self._writer is None:
            self._writer = imageio.get_writer(self.path, fps=VIDEO_FPS, codec='libx264',
                                              quality=7, macro_block_size=1,
                                              pixelformat='yuv420p')
        self._writer.append_data(frame)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class DemoMonitor:
    """A node in this process that follows the graph: episodes, video, latency, commands."""

    def __init__(self, domain_id: int, video: Optional[VideoWriter]):
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node('demo_monitor', context=self.context)
        self.events: 'queue.Queue[dict]' = queue.Queue()
        self.video = video
        self.latencies: List[tuple] = []  # (wall s, in follower ms, image -> action ms)
        self.last_command: Optional[tuple] = None
        self._lock = threading.Lock()
        self._seen = threading.Event()
        self._top_seen = video is None
        self._started = time.monotonic()
        self._episode: Optional[_Episode] = None
        self._action = ''
        self._camera: Dict[float, np.ndarray] = {}
        self._image_arrivals: Dict[float, float] = {}
        self._last_frame: Optional[np.ndarray] = None
        node = self.node
        node.create_subscription(String, 'vlit/episode', self._on_episode, STREAM_QOS)
        node.create_subscription(String, 'vlit/action', self._on_action, STREAM_QOS)
        node.create_subscription(Twist, 'cmd_vel', self._on_command, COMMAND_QOS)
        node.create_subscription(Image, 'camera/image_raw', self._on_camera, RECORDING_QOS)
        if video is not None:
            node.create_subscription(Image, 'sim/top_view', self._on_top_view, RECORDING_QOS)
            node.create_subscription(Odometry, 'sim/ground_truth', self._on_truth, STREAM_QOS)
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(node)
        self._spinner = threading.Thread(target=self._executor.spin, daemon=True)
        self._spinner.start()

    # -- callbacks ------------------------------------------------------------------------

    def _on_episode(self, msg: String) -> None:
        event = json.loads(msg.data)
        with self._lock:
            if event['event'] == 'start':
                scene = Scene.generate(event['seed'])
                task = task_from_dict(event['task'])
                target = task.target(scene) if isinstance(task, GotoTask) else None
                self._episode = _Episode(event['text'], event['time'], scene.arena_size,
                                         None if target is None else (target.x, target.y), [])
                self._action = ''
            else:
                self._episode = None
                if self.video is not None and self._last_frame is not None:
                    self._hold_verdict(event)
        self.events.put(event)

    def _hold_verdict(self, event: dict) -> None:
        frame = self._last_frame.copy()
        text = 'SUCCESS' if event['success'] else f'FAIL ({event["reason"]})'
        color = (90, 230, 90) if event['success'] else (240, 90, 90)
        cv2.putText(frame, text, (frame.shape[1] - 250, 37), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
                    color, 2, cv2.LINE_AA)
        for _ in range(VERDICT_FRAMES):
            self.video.add(frame)
        self._last_frame = None

    def _on_action(self, msg: String) -> None:
        report = json.loads(msg.data)
        arrival = time.monotonic()
        with self._lock:
            self._action = report.get('action', '')
            stamp = report.get('stamp')
            if stamp is None or report.get('latency_ms') is None:
                return
            seen = self._image_arrivals.get(stamp['sec'] + stamp['nanosec'] * 1e-9)
            end_to_end = None if seen is None else (arrival - seen) * 1e3
            self.latencies.append((arrival - self._started, report['latency_ms'], end_to_end))

    def _on_command(self, msg: Twist) -> None:
        self.last_command = (msg.linear.x, msg.angular.z)
        self._check_seen()

    def _check_seen(self) -> None:
        if self.last_command is not None and self._image_arrivals and self._top_seen:
            self._seen.set()

    def wait_for_graph(self, give_up) -> bool:
        """Wait until camera frames, top views and commands arrive, or `give_up()`."""
        while not self._seen.wait(0.1):
            if give_up():
                return False
        return True

    def _on_camera(self, msg: Image) -> None:
        stamp = _stamp_seconds(msg.header.stamp)
        with self._lock:
            self._image_arrivals[stamp] = time.monotonic()
            if len(self._image_arrivals) > RECORDING_DEPTH:
                self._image_arrivals.pop(next(iter(self._image_arrivals)))
            if self.video is not None:
                self._camera[stamp] = image_to_rgb(msg)
                if len(self._camera) > RECORDING_DEPTH:
                    self._camera.pop(next(iter(self._camera)))
        self._check_seen()

    def _on_truth(self, msg: Odometry) -> None:
        with self._lock:
            if self._episode is not None:
                position = msg.pose.pose.position
                self._episode.trail.append((position.x, position.y))

    def _on_top_view(self, msg: Image) -> None:
        stamp = _stamp_seconds(msg.header.stamp)
        self._top_seen = True
        self._check_seen()
        with self._lock:
            episode = self._episode
            if episode is None or stamp < episode.start_time or not self._camera:
                return
            camera = self._camera.get(stamp)
            if camera is None:
                camera = self._camera[max(self._camera)]
            frame = compose_frame(camera, image_to_rgb(msg), episode.text, self._action,
                                  stamp - episode.start_time, target_xy=episode.target,
                                  trail=list(episode.trail), arena_size=episode.arena_size)
            self.video.add(frame)
            self._last_frame = frame

    def close(self) -> None:
        """Stop spinning and shut the context down."""
        self._executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._spinner.join(timeout=5.0)


def plot_latency(latencies: List[tuple], path: Path) -> Optional[dict]:
    """Plot frame -> command latency over time and as a histogram; return the statistics."""
    if not latencies:
        return None
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    times = np.array([t for t, _, _ in latencies])
    follower = np.array([f for _, f, _ in latencies])
    observed = np.array([e for _, _, e in latencies if e is not None])
    stats = {'decisions': len(follower),
             'follower_median_ms': float(np.median(follower)),
             'follower_p95_ms': float(np.percentile(follower, 95)),
             'observed_median_ms': float(np.median(observed)) if observed.size else None,
             'observed_p95_ms': float(np.percentile(observed, 95)) if observed.size else None}
    figure, (series, histogram) = plt.subplots(1, 2, figsize=(11, 4))
    series.plot(times, follower, '.', markersize=3, label='in the follower: frame arrival -> '
                'cmd_vel published')
    if observed.size:
        observed_times = np.array([t for t, _, e in latencies if e is not None])
        series.plot(observed_times, observed, '.', markersize=3, alpha=0.6,
                    label='seen from outside: image -> vlit/action')
    series.axhline(50.0, color='gray', linestyle='--', linewidth=1, label='50 ms target')
    series.set_xlabel('wall time (s)')
    series.set_ylabel('latency (ms)')
    series.set_title('frame -> command latency per decision')
    series.legend(fontsize=8)
    bins = np.linspace(0.0, max(float(follower.max()),
                                float(observed.max()) if observed.size else 0.0) * 1.05, 40)
    histogram.hist(follower, bins=bins, alpha=0.7, label='in the follower')
    if observed.size:
        histogram.hist(observed, bins=bins, alpha=0.5, label='image -> vlit/action')
    histogram.set_xlabel('latency (ms)')
    histogram.set_ylabel('decisions')
    histogram.set_title(f'median {stats["follower_median_ms"]:.1f} ms, p95 '
                        f'{stats["follower_p95_ms"]:.1f} ms (in the follower)')
    histogram.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return stats


def _choose_policy(args: argparse.Namespace, console: Console):
    """Return (policy, checkpoint) for the follower, announcing a fallback."""
    if args.policy is not None:
        return args.policy, args.checkpoint or ''
    if args.checkpoint or bringup.shipped_checkpoint() is not None:
        return 'model', args.checkpoint or ''
    console.print(Panel(
        'No trained checkpoint ships with this copy of vlit_ros '
        f'({bringup.DEFAULT_CHECKPOINT} is missing), so the follower '
        'runs [bold]--policy random[/bold]: expect low success rates.\n'
        'Pass --checkpoint DIR for a trained model, or --policy PATH.py:Class for a plug-in.',
        title='fallback policy', border_style='yellow'))
    return 'random', ''


def _results_table(results: dict, title: str) -> Table:
    table = Table(title=title, title_justify='left')
    table.add_column('family')
    table.add_column('episodes', justify='right')
    table.add_column('success', justify='right')
    table.add_column('mean time to success', justify='right')
    for family in FAMILIES:
        row = results['per_family'].get(family)
        if row is None:
            continue
        mean = row['mean_time_to_success_s']
        table.add_row(family, str(row['episodes']), f'{row["success_rate"]:.0%}',
                      '-' if mean is None else f'{mean:.1f} s')
    table.add_section()
    table.add_row('all', str(results['episodes_total']), f'{results["success_rate"]:.0%}', '',
                  style='bold')
    return table


def _episode_line(event: dict) -> str:
    mark = '[green]✓[/green]' if event['success'] else '[red]✗[/red]'
    verdict = 'success' if event['success'] else event['reason']
    text = event['text'] if len(event['text']) <= 32 else event['text'][:31] + '…'
    return (f'{mark} {event["index"] + 1:>2}/{event["episodes"]} {event["family"]:<4} '
            f'{text!r:<34} {verdict} ({event["duration"]:.1f} s)')


def _show_events(monitor: DemoMonitor, finished: List[dict], console: Console,
                 progress: Optional[Progress] = None, bar=None) -> None:
    """Print a line per finished episode; move the progress bar when there is one."""
    while not monitor.events.empty():
        event = monitor.events.get()
        if event['event'] == 'end':
            finished.append(event)
            (progress.console if progress else console).print(_episode_line(event))
        if progress is None:
            continue
        if event['event'] == 'start':
            progress.update(bar, description=f'[{event["family"]}] {event["text"]!r}')
        else:
            progress.update(bar, completed=len(finished))


def run(args: argparse.Namespace) -> int:
    console = Console()
    if args.episodes < 1:
        console.print('[red]vlit-ros demo: --episodes must be at least 1[/red]')
        return 2
    policy, checkpoint = _choose_policy(args, console)
    run_dir = Path(args.out) / datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    run_dir.mkdir(parents=True, exist_ok=True)
    results_path = run_dir / 'results.json'
    try:
        config = bringup.BringupConfig(
            sim='mujoco', policy=policy, checkpoint=checkpoint, device=args.device,
            seed=args.seed, episodes=args.episodes, real_time_factor=args.speed,
            results_path=str(results_path.resolve()))
        graph = bringup.describe(config)
        graph = graph.with_parameters('sim', publish_top_view=not args.no_video)
        # The monitor must see the first episode start, like any trainer.
        listeners = graph.node('task').parameters.get('min_episode_listeners', 0) + 1
        graph = graph.with_parameters('task', on_finish='exit',
                                      min_episode_listeners=listeners)
        params = bringup.params_file(config)
    except bringup.BringupError as exc:
        console.print(f'[red]vlit-ros demo: {exc}[/red]')
        return 2
    domain_id = args.domain_id if args.domain_id is not None else \
        random.SystemRandom().randint(1, 100)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id))
    console.print(f'[bold]vlit-ros demo[/bold]: {args.episodes} episode'
                  f'{"s" if args.episodes != 1 else ""}, seed {args.seed}, '
                  f'policy {policy}, simulator at {args.speed:g}x real time, ROS domain '
                  f'{domain_id}; output in {run_dir}')
    video = None if args.no_video else VideoWriter(run_dir / 'demo.mp4')
    monitor = DemoMonitor(domain_id, video)
    runner = GraphRunner(graph, [params], env=env, log_dir=run_dir / 'logs', echo=False)
    started = time.monotonic()
    deadline = started + args.timeout
    finished: List[dict] = []
    with SignalForwarder() as signals:
        # The task starts once the monitor sees the simulator and the follower, so the video
        # and the latency plot miss nothing of the first episode.
        runner.start([n.name for n in graph.nodes if n.name != 'task'])
        with console.status('starting the simulator and the instruction follower'):
            if monitor.wait_for_graph(lambda: signals.signalled.is_set() or
                                      bool(runner.exited()) or time.monotonic() > deadline):
                runner.start()
        with Progress(SpinnerColumn(), TextColumn('{task.description}'), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                      transient=True) as progress:
            bar = progress.add_task('starting the task', total=args.episodes)

            def done():
                _show_events(monitor, finished, console, progress, bar)
                return signals.signalled.is_set() or 'task' in runner.exited() or \
                    time.monotonic() > deadline
            ended = runner.wait(done)
        interrupted = signals.signalled.is_set()
        timed_out = time.monotonic() > deadline
        codes = runner.shutdown()
    wall = time.monotonic() - started
    # The follower's zero command goes out as it stops, and under load the last episode's
    # end can trail the task's exit; give both time to arrive here.
    time.sleep(0.5)
    _show_events(monitor, finished, console)
    drain_until = time.monotonic() + FINAL_EVENTS_S
    while len(finished) < args.episodes and not interrupted and \
            time.monotonic() < drain_until:
        time.sleep(0.1)
        _show_events(monitor, finished, console)
    last_command = monitor.last_command
    monitor.close()
    if video is not None:
        video.close()
    latency = plot_latency(monitor.latencies, run_dir / 'latency.png')

    failed = {name: code for name, code in ended.items() if code}
    if failed:
        for name in failed:
            console.print(f'[red]{name} exited with {failed[name]}; the end of '
                          f'{run_dir / "logs" / (name + ".log")}:[/red]')
            log = (run_dir / 'logs' / f'{name}.log').read_text(errors='replace')
            console.print('\n'.join(log.splitlines()[-15:]), markup=False)
    if interrupted:
        console.print('[yellow]interrupted[/yellow]')
    if timed_out:
        console.print(f'[red]gave up after {args.timeout:g} s[/red]')
    ok = not failed and not interrupted and not timed_out and results_path.is_file()
    if results_path.is_file():
        results = json.loads(results_path.read_text())
        played = results['episodes_total']
        console.print(_results_table(results, f'policy {policy}, seed {args.seed}: {played} '
                                              f'episode{"s" if played != 1 else ""}'))
        console.print(f'simulated {results["sim_time_s"]:.1f} s of episodes in '
                      f'{results["wall_time_s"]:.1f} s ({results["real_time_factor"]:.1f}x '
                      f'real time); {wall:.1f} s in all, start-up and shutdown included')
    if latency is not None:
        observed = '' if latency['observed_median_ms'] is None else \
            (f'; image -> vlit/action seen from outside: median '
             f'{latency["observed_median_ms"]:.1f} ms, p95 {latency["observed_p95_ms"]:.1f} ms')
        console.print(f'frame -> cmd_vel in the follower: median '
                      f'{latency["follower_median_ms"]:.1f} ms, p95 '
                      f'{latency["follower_p95_ms"]:.1f} ms over {latency["decisions"]} '
                      f'decisions{observed}')
    stopped = last_command is not None and all(math.isclose(v, 0.0, abs_tol=1e-9)
                                               for v in last_command)
    if stopped:
        console.print('robot stopped: the last cmd_vel was zero')
    elif last_command is None:
        console.print('[red]no cmd_vel arrived from the follower[/red]')
    else:
        console.print(f'[red]the last cmd_vel was {last_command}, not zero[/red]')
    console.print('processes: ' + ', '.join(f'{name} exited with {code}'
                                            for name, code in codes.items()))
    outputs = [p for p in (results_path, run_dir / 'demo.mp4', run_dir / 'latency.png')
               if p.is_file()]
    console.print(''.join(f'wrote {p}\n' for p in outputs) + f'logs in {run_dir / "logs"}')
    return 0 if ok and stopped else 1
