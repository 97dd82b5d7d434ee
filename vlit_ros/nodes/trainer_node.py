"""
The trainer: online interactive learning from reward topics (DESIGN.md §2, issue 6).

A thin ROS shell around `vlit_ros.core.online`: experience, rewards and episode events go
into an `ExperienceBuffer`; a worker thread takes finished trajectories from it and runs
`OnlineLearner.update` (PPO-clip + GAE with a KL penalty and budget to the instruction-tuned
policy), then publishes the new weights at a bounded rate, checkpoints and plots.

Topics and services (relative names; QoS from `vlit_ros.qos`):

| direction | name | type | QoS |
| --- | --- | --- | --- |
| in | `reward` | std_msgs/Float32, stamped on arrival with this node's clock | STREAM_QOS |
| in | `vlit/experience` | std_msgs/String, `vlit_ros/experience/1` (core.online) | STREAM_QOS |
| in | `vlit/episode` | std_msgs/String, `vlit_ros/episode/1` (task node) | STREAM_QOS |
| in | `estop` | std_msgs/Bool: learning pauses while true | COMMAND_QOS |
| out | `vlit/policy` | std_msgs/UInt8MultiArray: `vlit_ros/policy/1` (core.online) | LATCHED_QOS |
| out | `/diagnostics` | diagnostic_msgs/DiagnosticArray, 1 Hz | STREAM_QOS |
| service | `vlit/pause_learning` | std_srvs/SetBool: true pauses updates, false resumes | |
| service | `vlit/save` | std_srvs/Trigger: checkpoint now into `output_dir` | |
| service | `vlit/rollback` | std_srvs/Trigger: to the last good weights, published at once | |

Rewards carry no stamp, so each is stamped when it arrives (with `use_sim_time`, simulated
time, like the camera stamps of the transitions), less `reward_delay_s` (default one control
period: the task node judges a step when it has ended, one frame after the frame the decision
used), and matched to the last transition at most `reward_window_s` older. The attribution
is only as good as the delivery latency is small against a control period. An `end` event on
`vlit/episode` ends the running trajectory at the event's time; the worker waits `settle_s`
(wall) after it for the episode's last rewards.

Threads: one SingleThreadedExecutor runs every callback (rclpy's MultiThreadedExecutor
stalls here, see instruction_follower); the callbacks only store and wake. The worker thread
does the learning, publishing, checkpoints and plots. `vlit/pause_learning` is instant (an
update in progress stops at its next gradient step and leaves the weights as they were);
`vlit/save` and `vlit/rollback` interrupt an update in progress the same way, then run in
the service callback: a rollback is a copy of a few tensors, a save writes the checkpoint
(the callback is busy for that write). The interrupted rollout is retried.

Outputs in `output_dir`: the checkpoint (`config.json`, `model.safetensors`,
`training_state/`, loadable by the follower and resumed by the next start), the last good
weights (`training_state/last_good.safetensors`), `learning_curves.png` (episode reward,
success rate, KL, policy version over wall time) and TensorBoard scalars in `tensorboard/`.
"""

import array
from dataclasses import dataclass, fields
import json
import math
import os
from pathlib import Path
import sys
import tempfile
import threading
import time
from typing import List, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.node import Node
from std_msgs.msg import Bool, Float32, String, UInt8MultiArray
from std_srvs.srv import SetBool, Trigger
import torch

from vlit_ros.core.model import load_checkpoint, read_checkpoint_info, VLITModel
from vlit_ros.core.online import (decode_transition, ExperienceBuffer, LearnerConfig,
                                  OnlineLearner, source_hash_of, STATE_DIR, STATE_FILE)
from vlit_ros.nodes.lifecycle import run_node, StartupError
from vlit_ros.nodes.params import declare_parameters, ParameterError, ParameterSpec
from vlit_ros.qos import COMMAND_QOS, LATCHED_QOS, STREAM_QOS

NODE_NAME = 'trainer'
EPISODE_LAYOUT = 'vlit_ros/episode/1'
DIAGNOSTICS_PERIOD_S = 1.0
LOG_THROTTLE_S = 5.0
# How often the worker looks at the buffer when nothing wakes it (wall s).
WORKER_POLL_S = 0.2
PLOT_FILE = 'learning_curves.png'

_NAN = float('nan')
PARAMETERS = (
    ParameterSpec('checkpoint', '',
                  'instruction-tuned checkpoint to learn from (empty: the shipped default)'),
    ParameterSpec('output_dir', 'runs/online',
                  'checkpoint, training_state/, learning_curves.png and tensorboard/ go here'),
    ParameterSpec('resume', True,
                  'resume the learner saved in output_dir (when there is one)'),
    ParameterSpec('device', 'cpu', 'torch device of the learner: cpu, cuda, cuda:N'),
    ParameterSpec('torch_threads', 1, 'torch intra-op threads (0: torch default)', 0, 256),
    ParameterSpec('train_fusion', False,
                  'also train the cross-modal fusion layers (the follower must publish '
                  'images and instructions with its experience)'),
    ParameterSpec('rollout_steps', 2048,
                  'update once finished trajectories hold this many transitions (several '
                  'episodes: advantages normalised over one or two are mostly noise)',
                  1, 100_000),
    ParameterSpec('max_buffered', 8192,
                  'cut a long unfinished trajectory (its last value bootstraps the rest) '
                  'when this many transitions wait', 2, 1_000_000),
    ParameterSpec('gamma', 0.99, 'discount per control step', 0.0, 1.0),
    ParameterSpec('gae_lambda', 0.95, 'GAE lambda', 0.0, 1.0),
    ParameterSpec('clip', 0.2, 'PPO clip range of the probability ratio', 0.001, 1.0),
    ParameterSpec('learning_rate', 1e-4, 'Adam learning rate', 1e-8, 1.0),
    ParameterSpec('epochs', 4, 'passes over each rollout', 1, 100),
    ParameterSpec('minibatch_size', 64, 'transitions per gradient step', 1, 100_000),
    ParameterSpec('value_coef', 0.5, 'weight of the value loss', 0.0, 1000.0),
    ParameterSpec('entropy_coef', 0.001, 'weight of the entropy bonus', 0.0, 1000.0),
    ParameterSpec('kl_coef', 0.05,
                  'weight of the KL penalty to the instruction-tuned reference policy',
                  0.0, 1000.0),
    ParameterSpec('target_kl', 0.03,
                  'KL budget: an update stops once its approximate KL to the policy that '
                  'collected the data exceeds this', 1e-6, 1000.0),
    ParameterSpec('max_grad_norm', 1.0, 'gradient norm clip', 1e-6, 1e6),
    ParameterSpec('value_warmup_updates', 2,
                  'updates at the start that fit only the value head', 0, 100_000),
    ParameterSpec('rollback_window', 20,
                  'episodes in the moving average of episode reward (and episodes that '
                  'measure the reference policy before the first update)', 1, 10_000),
    ParameterSpec('rollback_margin', 1.5,
                  'roll back when the moving average falls this far below the reference ...',
                  0.0, 1000.0),
    ParameterSpec('rollback_sigmas', 3.0,
                  '... and this many standard errors of the difference of the two averages '
                  '(0: the margin alone)', 0.0, 1000.0),
    ParameterSpec('reference_return', _NAN,
                  "the reference policy's average episode reward when known (NaN: measure "
                  'it over the first rollback_window episodes)'),
    ParameterSpec('snapshots', 4, 'good snapshots kept in memory', 1, 1000),
    ParameterSpec('reward_window_s', 0.5,
                  'a reward belongs to the last transition at most this much older (s)',
                  0.01, 60.0),
    ParameterSpec('reward_delay_s', 0.1,
                  'rewards are stamped at arrival minus this (s): a reward judges the step '
                  'that ended when it was computed, whose decision used the frame one control '
                  'period earlier', 0.0, 10.0),
    ParameterSpec('reward_limit', 100.0, 'rewards beyond +-this are dropped as absurd',
                  1e-6, 1e9),
    ParameterSpec('settle_s', 0.3,
                  'after an episode ends, wait this long (wall s) for its last rewards',
                  0.0, 60.0),
    ParameterSpec('max_publish_rate_hz', 0.5,
                  'publish new weights on vlit/policy at most this often (Hz)', 0.001, 100.0),
    ParameterSpec('save_every_updates', 10,
                  'checkpoint into output_dir every this many updates (0: only on request and '
                  'at shutdown)', 0, 1_000_000),
    ParameterSpec('plot_period_s', 30.0,
                  'rewrite learning_curves.png at most this often (wall s)', 0.1, 86_400.0),
    ParameterSpec('seed', 0, 'seed of the minibatch order', 0, 2 ** 31 - 1),
)


@dataclass(frozen=True)
class TrainerSettings:
    """Every parameter of the trainer, read once and checked together."""

    checkpoint: str
    output_dir: str
    resume: bool
    device: str
    torch_threads: int
    train_fusion: bool
    rollout_steps: int
    max_buffered: int
    gamma: float
    gae_lambda: float
    clip: float
    learning_rate: float
    epochs: int
    minibatch_size: int
    value_coef: float
    entropy_coef: float
    kl_coef: float
    target_kl: float
    max_grad_norm: float
    value_warmup_updates: int
    rollback_window: int
    rollback_margin: float
    rollback_sigmas: float
    reference_return: float
    snapshots: int
    reward_window_s: float
    reward_delay_s: float
    reward_limit: float
    settle_s: float
    max_publish_rate_hz: float
    save_every_updates: int
    plot_period_s: float
    seed: int

    def __post_init__(self):
        if not self.output_dir:
            raise ValueError('output_dir must name a directory')
        if self.max_buffered <= self.rollout_steps:
            raise ValueError(f'max_buffered ({self.max_buffered}) must exceed rollout_steps '
                             f'({self.rollout_steps}), or no rollout would ever be complete')
        if math.isinf(self.reference_return):
            raise ValueError('reference_return must be a number or NaN')

    def learner_config(self) -> LearnerConfig:
        """Return the `LearnerConfig` these settings describe."""
        names = {f.name for f in fields(LearnerConfig)}
        return LearnerConfig(**{name: getattr(self, name) for name in names})


def read_settings(node: Node) -> TrainerSettings:
    """Declare the parameters on `node` and check them together."""
    values = declare_parameters(node, PARAMETERS)
    try:
        if not values['checkpoint']:
            from vlit_ros.checkpoints import DEFAULT_CHECKPOINT
            if not (DEFAULT_CHECKPOINT / 'config.json').is_file():
                raise ValueError(f'no checkpoint given and none shipped in '
                                 f'{DEFAULT_CHECKPOINT}; pass checkpoint:=DIR')
            values['checkpoint'] = str(DEFAULT_CHECKPOINT)
        return TrainerSettings(**values)
    except ValueError as exc:
        raise ParameterError(str(exc)) from exc


def _wall() -> float:
    return time.monotonic()


class TrainerNode(Node):
    """Learn from rewards while the robot works; publish improved policies."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        try:
            self.settings = read_settings(self)
        except ParameterError as exc:
            raise StartupError(f'invalid parameters: {exc}') from exc
        settings = self.settings
        if settings.torch_threads > 0:
            torch.set_num_threads(settings.torch_threads)
        self._output = Path(settings.output_dir).expanduser()
        try:
            self._learner = self._load_learner()
            self._learner.model.to(settings.device)
        except (OSError, ValueError, RuntimeError) as exc:
            raise StartupError(f'could not start the learner: {exc}') from exc
        model = self._learner.model
        self._buffer = ExperienceBuffer(model.vlm.state_dim, settings.reward_window_s,
                                        settings.reward_limit, 2 * settings.max_buffered)
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)

        # _lock guards the buffer, the counters and the histories; _learner_lock the learner.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._learner_lock = threading.Lock()
        self._stopping = False
        self._last_end_wall = -math.inf
        self._pending_rollout = None
        self._publish_due = False
        self._last_publish_wall = -math.inf
        self._last_plot_wall = -math.inf
        self._started_wall = _wall()
        self._estop = False
        self._requested_pause = False
        self._counts = {'experience_rejected': 0, 'episode_events': 0, 'published': 0}
        self._last_report = None
        # (wall s since start, total reward, success or None, policy version) per episode
        self._episodes: List[tuple] = []
        # (wall s since start, approx KL, reference KL, updates, status) per update attempt
        self._updates: List[tuple] = []
        self._writer = self._tensorboard()

        self._policy_pub = self.create_publisher(UInt8MultiArray, 'vlit/policy', LATCHED_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', STREAM_QOS)
        self.create_subscription(Float32, 'reward', self._on_reward, STREAM_QOS)
        self.create_subscription(String, 'vlit/experience', self._on_experience, STREAM_QOS)
        self.create_subscription(String, 'vlit/episode', self._on_episode, STREAM_QOS)
        self.create_subscription(Bool, 'estop', self._on_estop, COMMAND_QOS)
        self.create_service(SetBool, 'vlit/pause_learning', self._on_pause)
        self.create_service(Trigger, 'vlit/save', self._on_save)
        self.create_service(Trigger, 'vlit/rollback', self._on_rollback)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._on_diagnostics, clock=self._steady)
        if self._learner.version != self._learner.base_version:
            # Resumed learned weights: followers that join get them at once.
            self._publish_due = True
        self._worker = threading.Thread(target=self._work, name='learner', daemon=True)
        self._worker.start()
        self.get_logger().info(
            f'learning from {settings.checkpoint} ({self._learner.base_version}); policy '
            f'{self._learner.version}; writing to {self._output}')

    def _load_learner(self) -> OnlineLearner:
        settings = self.settings
        info = read_checkpoint_info(settings.checkpoint)
        if info['architecture'] != VLITModel.architecture:
            raise ValueError(f'{settings.checkpoint} holds a {info["architecture"]}; the '
                             f'trainer needs an instruction-tuned {VLITModel.architecture}')
        # Followers running this checkpoint report its weights hash as their version.
        base_version = str(info['weights_sha256'])[:12]
        source_hash = source_hash_of(settings.checkpoint)
        saved = self._output / STATE_DIR / STATE_FILE
        if settings.resume and saved.is_file():
            learner = OnlineLearner.restore(self._output, load_checkpoint(self._output),
                                            self._output)
            if learner.source_hash != source_hash:
                raise ValueError(f'{self._output} holds a learner started from checkpoint '
                                 f'{learner.source_hash[:12]}, not {source_hash[:12]} '
                                 f'({settings.checkpoint}); use another output_dir or '
                                 f'resume:=false')
            if learner.config.train_fusion != settings.train_fusion:
                raise ValueError(f'{self._output} holds a learner with train_fusion '
                                 f'{learner.config.train_fusion}; parameter says '
                                 f'{settings.train_fusion}')
            self.get_logger().info(f'resumed the learner in {self._output} at '
                                   f'{learner.version}')
            return learner
        return OnlineLearner(load_checkpoint(settings.checkpoint),
                             settings.learner_config(), source_hash, self._output, base_version)

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            self.get_logger().warning(f'no TensorBoard scalars: {exc}')
            return None
        return SummaryWriter(str(self._output / 'tensorboard'))

    # -- callbacks --------------------------------------------------------------------------

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_reward(self, msg: Float32) -> None:
        stamp = self._now() - self.settings.reward_delay_s
        with self._lock:
            accepted = self._buffer.add_reward(stamp, float(msg.data))
            counts = dict(self._buffer.counts)
        if not accepted:
            self.get_logger().warning(
                f'dropped reward {msg.data!r} (non-finite so far: '
                f'{counts["dropped_non_finite"]}, beyond +-{self.settings.reward_limit:g}: '
                f'{counts["dropped_absurd"]})', throttle_duration_sec=LOG_THROTTLE_S)

    def _on_experience(self, msg: String) -> None:
        try:
            model = self._learner.model
            transition = decode_transition(msg.data, model.vlm.state_dim,
                                           model.executor.odometry_width)
        except ValueError as exc:
            with self._lock:
                self._counts['experience_rejected'] += 1
            self.get_logger().warning(f'rejected experience: {exc}',
                                      throttle_duration_sec=LOG_THROTTLE_S)
            return
        with self._wake:
            self._buffer.add_transition(transition)
            self._wake.notify()

    def _on_episode(self, msg: String) -> None:
        try:
            event = json.loads(msg.data)
            if event.get('layout') != EPISODE_LAYOUT:
                raise ValueError(f'layout {event.get("layout")!r}, expected {EPISODE_LAYOUT}')
            kind, stamp = event['event'], float(event['time'])
            success = event.get('success')
            if not math.isfinite(stamp) or success not in (True, False, None):
                raise ValueError('time must be finite and success true, false or null')
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.get_logger().warning(f'ignored malformed vlit/episode: {exc}',
                                      throttle_duration_sec=LOG_THROTTLE_S)
            return
        if kind != 'end':
            return
        with self._wake:
            self._counts['episode_events'] += 1
            self._buffer.end_episode(stamp, success)
            self._last_end_wall = _wall()
            self._wake.notify()

    def _on_estop(self, msg: Bool) -> None:
        engaged = bool(msg.data)
        if engaged == self._estop:
            return
        self._estop = engaged
        self._learner.set_paused('estop', engaged)
        if engaged:
            self.get_logger().warning('estop engaged: learning paused')
        else:
            self.get_logger().info('estop released: learning resumes')
            with self._wake:
                self._wake.notify()

    def _on_pause(self, request: SetBool.Request, response: SetBool.Response):
        self._requested_pause = bool(request.data)
        self._learner.set_paused('request', self._requested_pause)
        reasons = self._learner.pause_reasons
        response.success = True
        if request.data:
            response.message = 'learning paused'
        elif reasons:
            response.message = f'pause request lifted; still paused: {", ".join(reasons)}'
        else:
            response.message = 'learning resumed'
        self.get_logger().info(response.message)
        with self._wake:
            self._wake.notify()
        return response

    def _on_save(self, request: Trigger.Request, response: Trigger.Response):
        self._learner.interrupt()
        with self._learner_lock:
            try:
                self._learner.save(self._output)
            except (OSError, RuntimeError, ValueError) as exc:
                response.success = False
                response.message = f'save failed: {exc}'
                self.get_logger().error(response.message)
                return response
            version = self._learner.version
        response.success = True
        response.message = f'saved policy {version} to {self._output}'
        self.get_logger().info(response.message)
        return response

    def _on_rollback(self, request: Trigger.Request, response: Trigger.Response):
        self._learner.interrupt()
        with self._learner_lock:
            try:
                version = self._learner.rollback()
            except ValueError as exc:
                response.success = False
                response.message = str(exc)
                return response
            self._publish_policy()
        response.success = True
        response.message = f'rolled back to policy {version}'
        self.get_logger().warning(response.message)
        return response

    # -- the worker -------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._wake:
                self._wake.wait(WORKER_POLL_S)
                if self._stopping:
                    return
                rollout = self._take_rollout()
            if rollout is not None:
                self._train(rollout)
            self._publish_if_due()
            self._plot_if_due()

    def _take_rollout(self):
        """Return the rollout to train on now, or None (_lock held)."""
        if self._pending_rollout is not None:
            if self._learner.paused:
                return None
            rollout, self._pending_rollout = self._pending_rollout, None
            return rollout
        if self._learner.paused:
            return None
        force = len(self._buffer) >= self.settings.max_buffered
        settled = _wall() - self._last_end_wall >= self.settings.settle_s
        if not force and (not settled or
                          self._buffer.finished() < self.settings.rollout_steps):
            return None
        return self._buffer.take(self.settings.gamma, self.settings.gae_lambda, force=force)

    def _train(self, rollout) -> None:
        started = _wall()
        with self._learner_lock:
            try:
                report = self._learner.update(rollout)
            except ValueError as exc:
                self.get_logger().error(f'update refused: {exc}',
                                        throttle_duration_sec=LOG_THROTTLE_S)
                return
            updates = self._learner.updates
        seconds = _wall() - started
        elapsed = _wall() - self._started_wall
        with self._lock:
            self._last_report = report
            if report.status in ('paused', 'interrupted'):
                self._pending_rollout = rollout
            else:
                for episode in rollout.episodes:
                    self._episodes.append((elapsed, episode.total_reward, episode.success,
                                           episode.policy_version))
            self._updates.append((elapsed, report.approx_kl, report.reference_kl, updates,
                                  report.status))
            if report.status in ('updated', 'rolled_back'):
                self._publish_due = True
        self._log_scalars(report, rollout, updates)
        detail = f'; {report.detail}' if report.detail else ''
        message = (f'{report.status}: policy {report.version}, {report.transitions} '
                   f'transitions, {report.steps} steps in {seconds:.2f} s, KL '
                   f'{report.approx_kl:.4f} (reference {report.reference_kl:.4f}), average '
                   f'reward {report.average_return:.3f} (reference '
                   f'{report.reference_return:.3f}){detail}')
        if report.status in ('non_finite', 'rolled_back'):
            self.get_logger().warning(message)
        else:
            self.get_logger().info(message)
        every = self.settings.save_every_updates
        if report.status == 'updated' and every and updates % every == 0:
            with self._learner_lock:
                self._learner.save(self._output)

    def _log_scalars(self, report, rollout, updates: int) -> None:
        if self._writer is None:
            return
        for episode in rollout.episodes:
            self._writer.add_scalar('episode/reward', episode.total_reward)
            if episode.success is not None:
                self._writer.add_scalar('episode/success', float(episode.success))
        if report.status == 'updated':
            for name in ('approx_kl', 'reference_kl', 'policy_loss', 'value_loss', 'entropy',
                         'clip_fraction'):
                self._writer.add_scalar(f'update/{name}', getattr(report, name), updates)
        self._writer.add_scalar('policy/version', updates, updates)
        if math.isfinite(report.average_return):
            self._writer.add_scalar('reward/moving_average', report.average_return, updates)
        with self._lock:
            counts = dict(self._buffer.counts)
        for name in ('dropped_non_finite', 'dropped_absurd', 'unmatched_rewards',
                     'late_rewards'):
            self._writer.add_scalar(f'rewards/{name}', counts[name], updates)
        self._writer.flush()

    def _publish_if_due(self) -> None:
        period = 1.0 / self.settings.max_publish_rate_hz
        with self._lock:
            due = self._publish_due and _wall() - self._last_publish_wall >= period
        if due:
            with self._learner_lock:
                self._publish_policy()

    def _publish_policy(self) -> None:
        """Publish the learner's weights now (_learner_lock held)."""
        payload = self._learner.policy_payload()
        msg = UInt8MultiArray()
        msg.data = array.array('B', payload)
        self._policy_pub.publish(msg)
        with self._lock:
            self._publish_due = False
            self._last_publish_wall = _wall()
            self._counts['published'] += 1
        self.get_logger().info(f'published policy {self._learner.version} '
                               f'({len(payload) / 1e6:.2f} MB)')

    def _plot_if_due(self, force: bool = False) -> None:
        with self._lock:
            if not force and _wall() - self._last_plot_wall < self.settings.plot_period_s:
                return
            if not self._episodes and not self._updates:
                return
            episodes, updates = list(self._episodes), list(self._updates)
            self._last_plot_wall = _wall()
        try:
            write_learning_curves(self._output / PLOT_FILE, episodes, updates,
                                  self.settings.rollback_window,
                                  self._learner.reference_return)
        except (OSError, ValueError) as exc:
            self.get_logger().warning(f'could not write the learning curves: {exc}',
                                      throttle_duration_sec=LOG_THROTTLE_S)

    # -- diagnostics ------------------------------------------------------------------------

    def _on_diagnostics(self) -> None:
        with self._lock:
            counts = dict(self._buffer.counts, **self._counts)
            buffered, finished = len(self._buffer), self._buffer.finished()
            report = self._last_report
        learner = self._learner
        status = DiagnosticStatus(name=f'{self.get_name()}: learning',
                                  hardware_id=self.settings.device)
        if learner.paused:
            status.level = DiagnosticStatus.WARN
            status.message = f'paused: {", ".join(learner.pause_reasons)}'
        elif report is not None and report.status in ('non_finite', 'rolled_back'):
            status.level = DiagnosticStatus.WARN
            status.message = f'last update: {report.status}'
        else:
            status.level = DiagnosticStatus.OK
            status.message = 'learning' if learner.reference_ready else \
                'measuring the reference policy'
        values = {
            'policy_version': learner.version, 'updates': str(learner.updates),
            'paused': str(learner.paused), 'pause_reasons': ','.join(learner.pause_reasons),
            'buffered_transitions': str(buffered), 'finished_transitions': str(finished),
            'good_versions': ','.join(learner.good_versions),
            'reference_return': _format(learner.reference_return),
            'average_return': _format(learner.average_return),
            'last_status': '' if report is None else report.status,
            'last_approx_kl': '' if report is None else _format(report.approx_kl),
        }
        values.update({key: str(value) for key, value in counts.items()})
        values.update({f'learner_{key}': str(value) for key, value in learner.counts.items()})
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array_msg = DiagnosticArray(status=[status])
        array_msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array_msg)

    # -- shutdown ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the worker, then save the learner and the plots one last time."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._learner.interrupt()
        self._worker.join(timeout=30.0)
        with self._learner_lock:
            try:
                self._learner.save(self._output)
                self.get_logger().info(f'saved policy {self._learner.version} to '
                                       f'{self._output}')
            except (OSError, RuntimeError, ValueError) as exc:
                self.get_logger().error(f'final save failed: {exc}')
        self._plot_if_due(force=True)
        if self._writer is not None:
            self._writer.close()
        if self.context.ok() and self._counts['published']:
            self._policy_pub.wait_for_all_acked(Duration(seconds=1.0))


def _format(value: Optional[float]) -> str:
    return 'none' if value is None or not math.isfinite(value) else f'{value:.4f}'


def write_learning_curves(path: Path, episodes: List[tuple], updates: List[tuple],
                          window: int, reference: Optional[float]) -> None:
    """
    Plot episode reward, success rate, KL and policy version over wall time, as a PNG.

    `episodes`: (seconds, total reward, success or None, version); `updates`: (seconds,
    approx KL, reference KL, updates so far, status). Written to a temporary file and
    renamed, so a reader never sees half a PNG.
    """
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(4, 1, figsize=(8, 10), sharex=True)
    minutes = [e[0] / 60.0 for e in episodes]
    rewards = [e[1] for e in episodes]
    axes[0].plot(minutes, rewards, '.', alpha=0.4, label='episode')
    axes[0].plot(minutes, _moving_average(rewards, window), label=f'last {window}')
    if reference is not None:
        axes[0].axhline(reference, color='gray', linestyle='--', label='reference')
    axes[0].set_ylabel('episode reward')
    axes[0].legend(loc='lower right', fontsize='small')
    judged = [(e[0] / 60.0, float(e[2])) for e in episodes if e[2] is not None]
    axes[1].plot([j[0] for j in judged], _moving_average([j[1] for j in judged], window))
    axes[1].set_ylim(-0.05, 1.05)
    axes[1].set_ylabel(f'success rate (last {window})')
    updated = [u for u in updates if u[4] == 'updated']
    axes[2].plot([u[0] / 60.0 for u in updated], [u[1] for u in updated], '.-',
                 label='to the collecting policy')
    axes[2].plot([u[0] / 60.0 for u in updated], [u[2] for u in updated], '.-',
                 label='to the reference')
    axes[2].set_ylabel('KL')
    axes[2].legend(loc='upper left', fontsize='small')
    axes[3].step([u[0] / 60.0 for u in updates], [u[3] for u in updates], where='post')
    for rollback in (u for u in updates if u[4] == 'rolled_back'):
        axes[3].axvline(rollback[0] / 60.0, color='red', alpha=0.5)
    axes[3].set_ylabel('policy version (updates)')
    axes[3].set_xlabel('wall time (min)')
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.',
                                         suffix='.png')
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=80)
        os.replace(temporary, path)
    finally:
        plt.close(figure)
        if os.path.exists(temporary):
            os.unlink(temporary)


def _moving_average(values: List[float], window: int) -> List[float]:
    averages, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        averages.append(total / min(index + 1, window))
    return averages


def main(args=None) -> int:
    """Run the node; return non-zero when it cannot start."""
    return run_node(TrainerNode, NODE_NAME, args, stop=lambda node: node.stop())


if __name__ == '__main__':
    sys.exit(main())
