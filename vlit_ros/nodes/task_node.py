"""
The task node: plays a scenario of instructions in simulation and judges every episode.

For each episode it sets the scene, speaks the instruction on `speech/text` (the "user"),
judges the robot from the simulator's ground truth with `vlit_ros.sim.tasks.EpisodeJudge`
(the rules of `vlit-ros eval`, on simulated time), publishes the reward of every step and
the episode events, and at the end logs a summary and writes the results JSON of
`vlit-ros eval --json`.

Episode i is `make_episode(i, seed, instructions)`, exactly as in `vlit-ros eval`: scene
seed SEED + i and, with `scenario`, line i mod L of the instruction file. With
`reset_scenes` (the built-in simulator) an episode goes:

1. publish the scene on `sim/scene`, paused (`vlit_ros.nodes.sim_node` documents the
   layout) and wait until `sim/status` reports it loaded;
2. publish the `start` event, speak the instruction and wait until the follower's reader
   acknowledged it (reliable QoS), so its first frame of the episode meets the new instruction;
3. resume the simulator (`sim/pause`, false) and judge every `sim/ground_truth` message;
4. when the judge decides, pause the simulator and publish the `end` event.

Without `reset_scenes` (a simulator that cannot load scenes, e.g. Gazebo, whose world is
`Scene.generate(seed)`), every episode plays in that one scene and starts where the previous
one ended; generated instructions are drawn for the robot's current pose, so move tasks
have room.

The action the judge sees at a step is the follower's last decision on `vlit/action` for a
frame older than that step (those messages carry the frame stamp), counting only decisions
about this episode's instruction; with no publisher on `vlit/action`, a zero `cmd_vel`
counts as `stop`.

Topics (relative names; QoS from `vlit_ros.qos`):

| direction | topic | type | QoS |
| --- | --- | --- | --- |
| in | `sim/ground_truth` | nav_msgs/Odometry (frame `world`) | STREAM_QOS |
| in | `vlit/action` | std_msgs/String JSON (instruction_follower's layout) | STREAM_QOS |
| in | `cmd_vel` | geometry_msgs/Twist | COMMAND_QOS |
| in | `sim/status` | std_msgs/String JSON (sim_node's layout) | LATCHED_QOS |
| out | `sim/scene` | std_msgs/String JSON (sim_node's layout) | LATCHED_QOS |
| out | `speech/text` | std_msgs/String: the instruction | COMMAND_QOS |
| out | `reward` | std_msgs/Float32, one per judged step | STREAM_QOS |
| out | `vlit/episode` | std_msgs/String JSON, layout below | STREAM_QOS |
| client | `sim/pause` | std_srvs/SetBool | |

`vlit/episode` JSON layout, version `vlit_ros/episode/1`:

    {"layout": "vlit_ros/episode/1",
     "event": "start",            # or "end"
     "index": 3, "episodes": 8,   # episode index and the scenario's length
     "seed": 3,                   # scene seed
     "family": "goto", "text": "head to the red cube",
     "task": {"type": "goto", "color": "red", "shape": "cube"},
     "time": 41.2,                # simulated time (s) of the event
     "success": true,             # null at "start"
     "reason": "success",         # success, timeout, touched_<object>, ...; null at "start"
     "duration": 7.9,             # simulated seconds since the instruction; null at "start"
     "steps": 79,                 # judged steps; 0 at "start"
     "total_reward": 8.3}         # sum of the rewards; 0 at "start"
"""

import dataclasses
import json
import math
from pathlib import Path
import random
import sys
import threading
import time
from typing import List, Optional

from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from rclpy.duration import Duration
from rclpy.node import Node
from std_msgs.msg import Float32, String
from std_srvs.srv import SetBool

from vlit_ros.core.follower_logic import yaw_from_quaternion
from vlit_ros.evaluation import format_table, summarize
from vlit_ros.nodes.lifecycle import run_node, spin_until, StartupError
from vlit_ros.nodes.params import declare_parameters, ParameterError, ParameterSpec
from vlit_ros.nodes.sim_node import encode_scene_message
from vlit_ros.qos import COMMAND_QOS, LATCHED_QOS, STREAM_QOS
from vlit_ros.sim.episode import EpisodeResult, EpisodeSpec, make_episode
from vlit_ros.sim.scene import Scene
from vlit_ros.sim.tasks import (EpisodeJudge, FAMILIES, generate_instruction, load_instructions,
                                parse_families)

NODE_NAME = 'task'
EPISODE_LAYOUT = 'vlit_ros/episode/1'
ON_FINISH = ('exit', 'idle')
# How long the follower may take to acknowledge an instruction (wall s).
SPEECH_ACK_S = 2.0
# How long the episode listeners may take to acknowledge the last event before exit (wall s).
EVENT_ACK_S = 5.0

PARAMETERS = (
    ParameterSpec('scenario', '',
                  'instruction file (JSON lines, as `vlit-ros eval --instructions`): episode i '
                  'uses line i mod L; empty: generated instructions cycling `families`'),
    ParameterSpec('families', ','.join(FAMILIES),
                  'comma-separated families of the generated instructions, cycled in this '
                  'order (as `vlit-ros eval --families`; not with `scenario`)'),
    ParameterSpec('seed', 0, 'episode i uses scene seed SEED + i', 0, 2 ** 31 - 1),
    ParameterSpec('episodes', 8, 'number of episodes to play', 1, 100_000),
    ParameterSpec('reset_scenes', True,
                  "load each episode's scene into the simulator over sim/scene (the built-in "
                  'sim); false: play every episode in the scene the simulator shows, '
                  'Scene.generate(seed) (e.g. Gazebo)'),
    ParameterSpec('results_path', '',
                  'write the results JSON (the `vlit-ros eval --json` schema) here at the end; '
                  'empty: do not write'),
    ParameterSpec('on_finish', 'exit',
                  "after the last episode: 'exit' ends the process, 'idle' keeps it up"),
    ParameterSpec('min_episode_listeners', 0,
                  'before the first episode, wait for this many subscribers on vlit/episode, '
                  'so a listener (a trainer, a recorder) misses no episode', 0, 100),
    ParameterSpec('startup_timeout_s', 120.0,
                  'wait this long for the simulator and the follower to appear (wall s)',
                  1.0, 3600.0),
    ParameterSpec('sim_timeout_s', 10.0,
                  'abort when the simulator does not answer for this long (wall s)',
                  0.5, 600.0),
)


class ScenarioAborted(RuntimeError):
    """The simulator or the follower went away; the scenario cannot go on."""


@dataclasses.dataclass
class _Episode:
    """The episode being judged, shared by the scenario thread and the callbacks."""

    spec: EpisodeSpec
    judge: EpisodeJudge
    # simulated time of the instruction; only later ground truth is judged
    start_time: float
    # only decisions about this text count
    text: str
    # frame stamps (s; -inf for stop phrases) and the decisions taken on them
    decisions: List[tuple] = dataclasses.field(default_factory=list)
    actions: List[str] = dataclasses.field(default_factory=list)
    total_reward: float = 0.0
    done: threading.Event = dataclasses.field(default_factory=threading.Event)


def _stamp_seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class TaskNode(Node):
    """Speak instructions, judge the robot, publish rewards and episode events."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        try:
            values = declare_parameters(self, PARAMETERS)
            if values['on_finish'] not in ON_FINISH:
                raise ParameterError(f'on_finish must be one of {", ".join(ON_FINISH)}, '
                                     f'got {values["on_finish"]!r}')
            self._families = parse_families(values['families'])
            if values['scenario'] and self._families != FAMILIES:
                raise ValueError('families chooses generated instructions; a scenario file '
                                 'brings its own')
            self._instructions = load_instructions(values['scenario']) \
                if values['scenario'] else None
            self._check_scenario(values)
        except ValueError as exc:
            raise StartupError(f'invalid parameters: {exc}') from exc
        self._values = values
        self._lock = threading.Lock()
        self._status_changed = threading.Condition(self._lock)
        self._status: dict = {}
        self._truth_time: Optional[float] = None  # wall time of the last ground truth
        self._pose = None  # (stamp s, (x, y, yaw)) of the last ground truth
        self._last_command = (0.0, 0.0)
        self._episode: Optional[_Episode] = None
        self._policy_name: Optional[str] = None
        self._results: List[EpisodeResult] = []
        self._started: Optional[float] = None  # wall time of the first episode
        self._reported = False
        self.finished = threading.Event()
        self.exit_code = 0

        self._scene_pub = self.create_publisher(String, 'sim/scene', LATCHED_QOS)
        self._speech_pub = self.create_publisher(String, 'speech/text', COMMAND_QOS)
        self._reward_pub = self.create_publisher(Float32, 'reward', STREAM_QOS)
        self._event_pub = self.create_publisher(String, 'vlit/episode', STREAM_QOS)
        self.create_subscription(Odometry, 'sim/ground_truth', self._on_ground_truth,
                                 STREAM_QOS)
        self.create_subscription(String, 'vlit/action', self._on_action, STREAM_QOS)
        self.create_subscription(Twist, 'cmd_vel', self._on_command, COMMAND_QOS)
        self.create_subscription(String, 'sim/status', self._on_status, LATCHED_QOS)
        self._pause_client = self.create_client(SetBool, 'sim/pause')
        self._scenario = threading.Thread(target=self._play, name='scenario', daemon=True)
        self._scenario.start()

    def _check_scenario(self, values) -> None:
        """Check every goto of the instruction file names an object of its scene."""
        if not self._instructions:
            return
        if not values['reset_scenes']:
            scene = Scene.generate(values['seed'])
            for instruction in self._instructions[:values['episodes']]:
                if instruction.task.family == 'goto':
                    instruction.task.target(scene)
            return
        for index in range(values['episodes']):
            make_episode(index, values['seed'], self._instructions)

    # -- callbacks ------------------------------------------------------------------------

    def _on_status(self, msg: String) -> None:
        try:
            status = json.loads(msg.data)
        except ValueError:
            self.get_logger().warning(f'ignored malformed sim/status {msg.data!r}')
            return
        with self._status_changed:
            self._status = status
            self._status_changed.notify_all()

    def _on_command(self, msg: Twist) -> None:
        self._last_command = (msg.linear.x, msg.angular.z)

    def _on_action(self, msg: String) -> None:
        try:
            report = json.loads(msg.data)
            action, text = report['action'], report.get('instruction')
            stamp = report.get('stamp')
            seconds = -math.inf if stamp is None else stamp['sec'] + stamp['nanosec'] * 1e-9
        except (ValueError, KeyError, TypeError):
            self.get_logger().warning(f'ignored malformed vlit/action {msg.data[:200]!r}',
                                      throttle_duration_sec=5.0)
            return
        with self._lock:
            self._policy_name = report.get('policy', self._policy_name)
            episode = self._episode
            if episode is None or text != episode.text:
                return
            if seconds != -math.inf and seconds < episode.start_time:
                return
            episode.decisions.append((seconds, action))

    def _on_ground_truth(self, msg: Odometry) -> None:
        stamp = _stamp_seconds(msg.header.stamp)
        position, orientation = msg.pose.pose.position, msg.pose.pose.orientation
        pose = (position.x, position.y, yaw_from_quaternion(
            orientation.x, orientation.y, orientation.z, orientation.w))
        velocity = (msg.twist.twist.linear.x, msg.twist.twist.angular.z)
        with self._lock:
            self._truth_time = time.monotonic()
            self._pose = (stamp, pose)
            episode = self._episode
            if episode is None or episode.done.is_set() or stamp <= episode.start_time:
                return
            action = self._action_for_step(episode, stamp)
            reward = episode.judge.update(stamp - episode.start_time, pose, velocity, action)
            episode.actions.append(action)
            episode.total_reward += reward
            if episode.judge.done:
                episode.done.set()
        self._reward_pub.publish(Float32(data=float(reward)))

    def _action_for_step(self, episode: _Episode, stamp: float) -> str:
        """Return the action in force during the step that ended at `stamp` (_lock held)."""
        if episode.decisions or self.count_publishers('vlit/action') > 0:
            taken = [action for seconds, action in episode.decisions if seconds < stamp]
            return taken[-1] if taken else 'none'
        return 'stop' if self._last_command == (0.0, 0.0) else 'moving'

    # -- the scenario ---------------------------------------------------------------------

    def _play(self) -> None:
        try:
            self._wait_for_graph()
            self._started = time.monotonic()
            for index in range(self._values['episodes']):
                self._results.append(self._play_episode(index))
        except ScenarioAborted as exc:
            self.get_logger().error(f'scenario aborted after {len(self._results)} '
                                    f'episode(s): {exc}')
            self.exit_code = 1
        except Exception as exc:  # a bug must not leave the process hanging
            self.get_logger().fatal(f'scenario failed: {exc!r}')
            self.exit_code = 1
        self.report()
        if self._values['on_finish'] == 'exit':
            # Exiting drops what the listeners have not received yet: the last episode's end.
            if not self._event_pub.wait_for_all_acked(Duration(seconds=EVENT_ACK_S)):
                self.get_logger().warning('the vlit/episode listeners did not acknowledge '
                                          f'the last event within {EVENT_ACK_S:g} s')
            self.finished.set()

    def _wait_for_graph(self) -> None:
        """Wait for the simulator, a listener on speech/text and the episode listeners."""
        deadline = time.monotonic() + self._values['startup_timeout_s']

        def missing():
            parts = []
            if self._values['reset_scenes']:
                if not self._pause_client.service_is_ready():
                    parts.append('the sim/pause service')
                if self._scene_pub.get_subscription_count() == 0:
                    parts.append('a sim/scene subscriber')
            elif self._pose is None:
                parts.append('sim/ground_truth')
            if self._speech_pub.get_subscription_count() == 0:
                parts.append('a speech/text subscriber (the follower)')
            listeners = self._event_pub.get_subscription_count()
            if listeners < self._values['min_episode_listeners']:
                parts.append(f'{self._values["min_episode_listeners"] - listeners} more '
                             'vlit/episode subscriber(s)')
            return parts
        while missing():
            if time.monotonic() > deadline or not self.context.ok():
                raise ScenarioAborted(f'no {" or ".join(missing())} after '
                                      f'{self._values["startup_timeout_s"]:g} s')
            time.sleep(0.05)

    def _play_episode(self, index: int) -> EpisodeResult:
        values = self._values
        if values['reset_scenes']:
            spec = make_episode(index, values['seed'], self._instructions,
                                families=self._families)
            start_time = self._load_scene(spec, index)
            start_pose = (spec.scene.robot_x, spec.scene.robot_y, spec.scene.robot_yaw)
        else:
            start_time, start_pose = self._current_pose()
            spec = self._episode_here(index, start_pose)
        text = spec.instruction.text
        episode = _Episode(spec, EpisodeJudge(spec.instruction.task, spec.scene, start_pose),
                           start_time, text)
        with self._lock:
            self._episode = episode
        self._publish_event('start', episode, start_time)
        self._speech_pub.publish(String(data=text))
        if not self._speech_pub.wait_for_all_acked(Duration(seconds=SPEECH_ACK_S)):
            self.get_logger().warning(f'the follower did not acknowledge {text!r} within '
                                      f'{SPEECH_ACK_S:g} s')
        if values['reset_scenes']:
            self._set_paused(False)
        self._wait_until_judged(episode)
        if values['reset_scenes']:
            self._set_paused(True)
        with self._lock:
            self._episode = None
        outcome = episode.judge.outcome
        self._publish_event('end', episode, start_time + outcome.duration)
        self.get_logger().info(
            f'episode {index + 1}/{values["episodes"]} [{spec.family}] {text!r}: '
            f'{"SUCCESS" if outcome.success else "FAIL"} ({outcome.reason}) after '
            f'{outcome.duration:.1f} s, reward {episode.total_reward:.2f}')
        return EpisodeResult(index, spec.seed, spec.family, text,
                             spec.instruction.task.to_dict(), outcome.success, outcome.reason,
                             outcome.duration, len(episode.actions), episode.total_reward,
                             episode.actions)

    def _load_scene(self, spec: EpisodeSpec, index: int) -> float:
        """Load the episode's scene, paused; return the simulated time of the reset."""
        scene_id = f'{self.get_fully_qualified_name()}:{id(self):x}:{index}'
        self._scene_pub.publish(String(data=encode_scene_message(
            spec.scene, spec.initial_twist, paused=True, scene_id=scene_id)))
        with self._status_changed:
            loaded = self._status_changed.wait_for(
                lambda: self._status.get('scene_id') == scene_id,
                timeout=self._values['sim_timeout_s'])
            if not loaded:
                raise ScenarioAborted(f'the simulator did not load scene {spec.seed} within '
                                      f'{self._values["sim_timeout_s"]:g} s')
            return float(self._status['reset_time'])

    def _current_pose(self):
        with self._lock:
            return self._pose

    def _episode_here(self, index: int, pose) -> EpisodeSpec:
        """Episode `index` in the simulator's one scene, starting from `pose`."""
        seed = self._values['seed']
        scene = dataclasses.replace(Scene.generate(seed), robot_x=pose[0], robot_y=pose[1],
                                    robot_yaw=pose[2])
        if self._instructions:
            instruction = self._instructions[index % len(self._instructions)]
            return EpisodeSpec(index, seed, instruction.task.family, instruction, scene)
        rng = random.Random(seed + index)
        # A robot facing a wall has no room for a move task: take the next family then.
        families = self._families
        for shift in range(len(families)):
            family = families[(index + shift) % len(families)]
            try:
                instruction = generate_instruction(scene, family, rng)
            except ValueError:
                continue
            return EpisodeSpec(index, seed, family, instruction, scene)
        raise ScenarioAborted(f'no feasible instruction at pose {pose}')

    def _set_paused(self, paused: bool) -> None:
        future = self._pause_client.call_async(SetBool.Request(data=paused))
        answered = threading.Event()
        future.add_done_callback(lambda _: answered.set())
        if not answered.wait(self._values['sim_timeout_s']) or not future.result().success:
            raise ScenarioAborted(f'sim/pause ({paused}) got no answer within '
                                  f'{self._values["sim_timeout_s"]:g} s')

    def _wait_until_judged(self, episode: _Episode) -> None:
        timeout = self._values['sim_timeout_s']
        while not episode.done.wait(0.1):
            with self._lock:
                silent = time.monotonic() - (self._truth_time or 0.0)
            if silent > timeout or not self.context.ok():
                raise ScenarioAborted(f'no sim/ground_truth for {timeout:g} s')

    def _publish_event(self, event: str, episode: _Episode, sim_time: float) -> None:
        spec, outcome = episode.spec, episode.judge.outcome
        report = {
            'layout': EPISODE_LAYOUT, 'event': event, 'index': spec.index,
            'episodes': self._values['episodes'], 'seed': spec.seed, 'family': spec.family,
            'text': episode.text, 'task': spec.instruction.task.to_dict(),
            'time': round(sim_time, 6),
            'success': None if outcome is None else outcome.success,
            'reason': None if outcome is None else outcome.reason,
            'duration': None if outcome is None else round(outcome.duration, 3),
            'steps': len(episode.actions), 'total_reward': round(episode.total_reward, 4),
        }
        self._event_pub.publish(String(data=json.dumps(report)))

    def report(self) -> None:
        """Log the summary of the episodes played so far and write the results (once)."""
        with self._lock:
            if self._reported:
                return
            self._reported = True
            results = list(self._results)
        if not results:
            return
        values = self._values
        wall = time.monotonic() - (self._started or time.monotonic())
        summary = summarize(results)
        sim_seconds = sum(r.duration for r in results)
        summary.update({
            'seed': values['seed'],
            'wall_time_s': round(wall, 2),
            'sim_time_s': round(sim_seconds, 2),
            'real_time_factor': round(sim_seconds / wall, 2) if wall > 0 else math.inf,
            'episodes': [r.to_dict() for r in results],
            'policy': self._policy_name,
            'checkpoint': None,
            'instructions': values['scenario'] or None,
            'world': 'shifted' if self._status.get('shifted') else 'nominal',
            'completed': self.exit_code == 0 and len(results) == values['episodes'],
        })
        title = f'policy={self._policy_name} episodes={len(results)} seed={values["seed"]}'
        self.get_logger().info('results\n' + format_table(summary, title))
        if values['results_path']:
            path = Path(values['results_path'])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=2) + '\n')
            self.get_logger().info(f'wrote {path}')


def main(args=None) -> int:
    """Run the node; return 0 when the scenario completed, 1 when aborted, 2 on bad input."""
    def spin(node, executor, interrupted):
        spin_until(executor, interrupted, node.finished.is_set)
        return node.exit_code
    # Interrupted: the episodes played so far are still worth their results (exit code 0).
    return run_node(TaskNode, NODE_NAME, args, spin=spin, stop=lambda node: node.report())


if __name__ == '__main__':
    sys.exit(main())
