"""
The instruction follower: camera frames + a spoken instruction -> policy -> safety gate.

Topics (relative names, DESIGN.md §2; QoS from `vlit_ros.qos`):

| direction | topic | type | QoS |
| --- | --- | --- | --- |
| in | `camera/image_raw` | sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) | IMAGE_QOS |
| in | `speech/text` | std_msgs/String | COMMAND_QOS |
| in | `odom` | nav_msgs/Odometry | STREAM_QOS |
| in | `estop` | std_msgs/Bool: True latches a stop, False releases it | COMMAND_QOS |
| in | `vlit/policy` | std_msgs/UInt8MultiArray policy update (policy 'model' only) | LATCHED_QOS |
| out | `cmd_vel` | geometry_msgs/Twist, or TwistStamped (`use_twist_stamped`) | COMMAND_QOS |
| out | `vlit/action` | std_msgs/String holding JSON, one per decision | STREAM_QOS |
| out | `vlit/experience` | std_msgs/String: a transition per decision (optional) | STREAM_QOS |
| out | `/diagnostics` | diagnostic_msgs/DiagnosticArray, 1 Hz | STREAM_QOS |

How it runs (DESIGN.md §6): the image callback only converts and stores the newest frame and
wakes the inference thread, which always takes the newest frame (frames that arrive while it
is busy are dropped), runs the policy and publishes at once. The inference thread is the only
caller of the policy (instruction resets included), so every ROS callback stays short and one
SingleThreadedExecutor serves them: rclpy 9.1's MultiThreadedExecutor stalled timers and
subscriptions for up to 2 s here (ros2/rclpy#1452), which a watchdog cannot afford. A
steady-clock timer at `control_rate_hz` runs the safety gate (`vlit_ros.core.safety`) and
republishes the held command; a second one, re-armed by every frame, fires `image_timeout_s`
after the last frame so a dead camera stops the robot without waiting for a control tick.

Instructions: empty, over-long or garbled text is rejected with a logged reason and changes
nothing. A stop phrase ("stop", "halt", "hold on", ...) stops the robot at once without asking
the policy. Any other text replaces the current instruction at once: the held command drops
to zero, odometry restarts from the current pose and the policy is reset before its next
frame (a policy whose reset raises rejects the instruction, and the robot stays stopped). An
estop (True) stops the robot and cancels the instruction; after the release (False) the robot
waits for a new instruction, so releasing an estop never restarts motion by itself.

`cmd_vel` as TwistStamped: `header.stamp` is the stamp of the camera frame the command was
computed from (so consumers can measure frame -> command latency), or the current time for
commands no frame produced (safety stops, stop phrases).

Besides `reset` and `act` (DESIGN.md §5), the follower reads two optional policy attributes:
`last_probabilities` (the distribution behind the last `act`: a sequence in the order of
`vlit_ros.core.actions.ACTIONS` or a mapping by action name), reported on `vlit/action` and
sampled from when `sample_actions` is true; and `version` (a string, e.g. a checkpoint hash),
reported as `policy_version` (default: the policy's class name).

Online learning (policy 'model'; layouts in `vlit_ros.core.online`): with
`publish_experience` (which needs `sample_actions`), every decision goes out on
`vlit/experience` as a `vlit_ros/experience/1` transition: the fused state and odometry
features the executor consumed (seen through a forward hook), the action taken with its
log-probability at `temperature`, the value, the policy version, the frame stamp and the
instruction counter (over a random per-process base) as episode id, plus the camera image
with `experience_images` (for a trainer that trains the fusion layers). A
`vlit_ros/policy/1` message on `vlit/policy` is checked by the inference thread (layout,
names, shapes, dtypes, finite values, the source checkpoint, and a mean KL to the current
policy of at most `max_policy_kl` on the last `POLICY_CHECK_STATES` states it decided on)
and swapped in between two decisions; a rejected update is logged and the previous policy
keeps driving. An update that arrives before any decision waits for the first ones (its KL
needs states to be measured on).

`vlit/action` JSON layout, version `vlit_ros/action/1`:

    {"layout": "vlit_ros/action/1",
     "action": "forward",                  # the action taken (sampled with sample_actions)
     "source": "policy",                   # or "stop_phrase"
     "probabilities": {"stop": 0.01, ...}, # null when the policy exposes none
     "instruction": "go to the red cube",
     "policy": "model", "policy_version": "...",
     "stamp": {"sec": 12, "nanosec": 500},  # header stamp of the frame used (null: none)
     "inference_ms": 7.1,                  # policy.act
     "latency_ms": 8.0,                    # frame arrival -> cmd_vel publish, in this node
     "command": [0.2, 0.0],                # (v m/s, w rad/s) published on cmd_vel
     "override": ""}                       # safety gate reason, '' when none
"""

from collections import deque
import dataclasses
import json
import math
import random
import sys
import threading
import time
from typing import Optional

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Twist, TwistStamped
from nav_msgs.msg import Odometry
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, String, UInt8MultiArray

from vlit_ros.core.actions import ACTION_INDEX, ActionParams, ACTIONS
from vlit_ros.core.follower_logic import (action_probabilities, check_instruction,
                                          FollowerConfig, FollowerObservation,
                                          is_stop_phrase, OdometryTracker, sample_action,
                                          yaw_from_quaternion)
from vlit_ros.core.safety import (ESTOP, FAILURE, GateDecision, NO_INFERENCE, NO_INSTRUCTION,
                                  SafetyConfig, SafetyGate)
from vlit_ros.nodes.images import image_to_rgb
from vlit_ros.nodes.lifecycle import run_node, StartupError
from vlit_ros.nodes.params import declare_parameters, ParameterError, ParameterSpec
from vlit_ros.policies import load_policy
from vlit_ros.qos import COMMAND_QOS, IMAGE_QOS, LATCHED_QOS, STREAM_QOS

ACTION_LAYOUT = 'vlit_ros/action/1'
NODE_NAME = 'instruction_follower'
DIAGNOSTICS_PERIOD_S = 1.0
# Per-frame warnings repeat at most this often.
LOG_THROTTLE_S = 5.0
# Safety stops _command_step does not warn about: routine ones (idle, a new instruction not
# yet inferred) and those logged where they begin (estop, failure).
_QUIET_STOPS = (NO_INSTRUCTION, NO_INFERENCE, ESTOP, FAILURE)
# Recent decisions a policy update's KL to the current policy is measured on.
POLICY_CHECK_STATES = 16

_A = ActionParams()
_S = SafetyConfig()
PARAMETERS = (
    ParameterSpec('policy', 'model', "'model', 'random', or PATH.py:Class (a policy plug-in)"),
    ParameterSpec('checkpoint', '', "checkpoint directory for policy 'model'"),
    ParameterSpec('device', 'cpu', "torch device for policy 'model': cpu, cuda, cuda:N, mps"),
    ParameterSpec('seed', -1, "seed of policy 'random' and of sample_actions (-1: unseeded)",
                  -1, 2 ** 31 - 1),
    ParameterSpec('torch_threads', 1,
                  'torch intra-op threads for a torch policy (0: torch default); more threads '
                  'barely help batch-1 inference and stall it when cores are shared', 0, 256),
    ParameterSpec('control_rate_hz', 10.0,
                  'rate of the watchdog that republishes the held command (Hz)', 1.0, 100.0),
    ParameterSpec('forward_speed', _A.forward_speed, 'linear speed of forward (m/s)',
                  0.01, 5.0),
    ParameterSpec('arc_speed', _A.arc_speed,
                  'linear speed of forward_left / forward_right (m/s)', 0.01, 5.0),
    ParameterSpec('arc_turn_rate', _A.arc_turn_rate,
                  'yaw rate of forward_left / forward_right (rad/s)', 0.01, 10.0),
    ParameterSpec('turn_rate', _A.turn_rate,
                  'yaw rate of turn_left / turn_right in place (rad/s)', 0.01, 10.0),
    ParameterSpec('backward_speed', _A.backward_speed,
                  'speed of backward (m/s, positive)', 0.01, 5.0),
    ParameterSpec('max_linear_speed', _S.max_linear_speed,
                  'safety limit on |linear velocity| (m/s)', 0.01, 5.0),
    ParameterSpec('max_angular_speed', _S.max_angular_speed,
                  'safety limit on |angular velocity| (rad/s)', 0.01, 10.0),
    ParameterSpec('max_linear_accel', _S.max_linear_accel,
                  'safety limit on speeding up, linear (m/s^2); braking is not limited',
                  0.01, 50.0),
    ParameterSpec('max_angular_accel', _S.max_angular_accel,
                  'safety limit on speeding up, angular (rad/s^2); braking is not limited',
                  0.01, 100.0),
    ParameterSpec('image_timeout_s', _S.image_timeout_s,
                  'stop when the newest camera frame is older than this (s)', 0.01, 10.0),
    ParameterSpec('inference_stall_timeout_s', _S.inference_stall_timeout_s,
                  'stop when the last inference finished longer ago than this (s)',
                  0.01, 60.0),
    ParameterSpec('use_twist_stamped', False,
                  'publish geometry_msgs/TwistStamped instead of Twist on cmd_vel'),
    ParameterSpec('sample_actions', False,
                  "sample from the policy's action probabilities instead of taking its choice"),
    ParameterSpec('temperature', 1.0, 'softmax temperature when sampling', 0.01, 100.0),
    ParameterSpec('frame_id', 'base_link', 'frame_id of TwistStamped commands'),
    ParameterSpec('publish_experience', False,
                  "publish every decision on vlit/experience for the trainer (policy 'model' "
                  'with sample_actions)'),
    ParameterSpec('experience_images', False,
                  'also put the camera image in each experience message (for a trainer that '
                  'trains the fusion layers)'),
    ParameterSpec('max_policy_kl', 1.0,
                  'reject a vlit/policy update whose mean KL to the current policy on recent '
                  'states exceeds this', 0.0, 100.0),
)


@dataclasses.dataclass(frozen=True)
class LearningOptions:
    """The follower's side of online learning, checked against the rest of its config."""

    # publish a transition per decision on vlit/experience
    publish_experience: bool = False
    # include the camera image in those transitions
    experience_images: bool = False
    # bound on the mean KL of an accepted policy update to the current policy
    max_policy_kl: float = 1.0


def read_learning_options(node: Node, config: FollowerConfig) -> LearningOptions:
    """Return the learning options `read_config` declared, checked against `config`."""
    options = LearningOptions(**{field.name: node.get_parameter(field.name).value
                                 for field in dataclasses.fields(LearningOptions)})
    if options.publish_experience and config.policy != 'model':
        raise ParameterError(f"publish_experience needs policy 'model' (its fused states "
                             f'are the experience), not {config.policy!r}')
    if options.publish_experience and not config.sample_actions:
        raise ParameterError('publish_experience needs sample_actions:=true: the learner '
                             'improves the distribution the actions are drawn from')
    if options.experience_images and not options.publish_experience:
        raise ParameterError('experience_images only matters with publish_experience:=true')
    return options


def read_config(node: Node) -> FollowerConfig:
    """Declare the parameters on `node` and check them together."""
    values = declare_parameters(node, PARAMETERS)
    try:
        actions = ActionParams(**{name: values[name] for name in (
            'forward_speed', 'arc_speed', 'arc_turn_rate', 'turn_rate', 'backward_speed')})
        safety = SafetyConfig(
            control_period_s=1.0 / values['control_rate_hz'],
            max_linear_speed=values['max_linear_speed'],
            max_angular_speed=values['max_angular_speed'],
            max_linear_accel=values['max_linear_accel'],
            max_angular_accel=values['max_angular_accel'],
            image_timeout_s=values['image_timeout_s'],
            inference_stall_timeout_s=values['inference_stall_timeout_s'])
        checkpoint = values['checkpoint']
        if values['policy'] == 'model' and not checkpoint:
            # No checkpoint given: the one shipped with the package, when it is installed.
            from vlit_ros.checkpoints import DEFAULT_CHECKPOINT
            if (DEFAULT_CHECKPOINT / 'config.json').is_file():
                checkpoint = str(DEFAULT_CHECKPOINT)
        return FollowerConfig(
            policy=values['policy'], checkpoint=checkpoint,
            device=values['device'], seed=values['seed'],
            torch_threads=values['torch_threads'],
            control_rate_hz=values['control_rate_hz'], actions=actions, safety=safety,
            use_twist_stamped=values['use_twist_stamped'],
            sample_actions=values['sample_actions'], temperature=values['temperature'],
            frame_id=values['frame_id'])
    except ValueError as exc:
        raise ParameterError(str(exc)) from exc


def _steady_seconds(clock: Clock) -> float:
    return clock.now().nanoseconds * 1e-9


class InstructionFollower(Node):
    """Follow spoken instructions with a policy, behind a safety gate."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        try:
            self.config = read_config(self)
            self.learning = read_learning_options(self, self.config)
        except ParameterError as exc:
            raise StartupError(f'invalid parameters: {exc}') from exc
        config = self.config
        try:
            self._policy = load_policy(config.policy, config.checkpoint or None,
                                       config.device,
                                       seed=None if config.seed < 0 else config.seed)
        except Exception as exc:
            raise StartupError(f'could not load policy {config.policy!r}: {exc}') from exc
        torch = sys.modules.get('torch')
        if torch is not None and config.torch_threads > 0:
            torch.set_num_threads(config.torch_threads)
        self._policy_version = str(getattr(self._policy, 'version', '') or
                                   type(self._policy).__name__)
        # Policy 'model' only: the executor's inputs of each decision (experience, and the
        # states a policy update is checked on) and the checkpoint updates must come from.
        self._tap = None
        self._source_hash = None
        if config.policy == 'model':
            from vlit_ros.core.online import ExecutorTap, source_hash_of
            self._tap = ExecutorTap(self._policy.model)
            self._source_hash = source_hash_of(config.checkpoint)
        self._recent_states = deque(maxlen=POLICY_CHECK_STATES)  # inference thread only
        # Experience episode ids: the instruction counter over a random base, so that ids
        # never repeat across restarts (the trainer drops decisions of an ended episode id).
        self._episode_base = random.SystemRandom().randrange(1, 2 ** 32) << 20
        self._gate = SafetyGate(config.safety)
        self._rng = random.Random(None if config.seed < 0 else config.seed)
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)

        # State shared by the callbacks and the inference thread, guarded by _lock. Only the
        # inference thread calls the policy.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._pending = None  # (image, stamp, arrival) of the newest frame not yet used
        self._reset_request = None  # (generation, text) the policy must be reset to
        self._policy_generation = -1  # generation the policy was last reset for
        self._image_time: Optional[float] = None
        self._inference_time: Optional[float] = None
        self._mode = 'idle'  # 'idle', 'policy' (the policy drives) or 'stop' (stop phrase)
        self._instruction = ''
        self._generation = 0  # bumped by every instruction change; stale results are dropped
        self._instruction_start = self.get_clock().now()
        self._held = (0.0, 0.0)
        self._held_stamp: Optional[Time] = None
        self._odometry = OdometryTracker()
        self._last_decision = GateDecision(0.0, 0.0)
        self._stats = {'frames': 0, 'dropped': 0, 'rejected': 0, 'inferences': 0,
                       'ticks': 0, 'inference_ms': None, 'latency_ms': None}
        self._stats_since = _steady_seconds(self._steady)
        self._rejection = ('', 0.0)  # last logged reason for rejecting a frame, and when
        self._policy_update: Optional[bytes] = None  # newest vlit/policy payload unchecked
        self._states_ready = False  # the inference thread has states to check updates on
        self._learning_stats = {'experience': 0, 'updates_accepted': 0,
                                'updates_rejected': 0}

        command_type = TwistStamped if config.use_twist_stamped else Twist
        self._cmd_pub = self.create_publisher(command_type, 'cmd_vel', COMMAND_QOS)
        self._action_pub = self.create_publisher(String, 'vlit/action', STREAM_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', STREAM_QOS)

        self.create_subscription(Image, 'camera/image_raw', self._on_image, IMAGE_QOS)
        self.create_subscription(String, 'speech/text', self._on_speech, COMMAND_QOS)
        self.create_subscription(Odometry, 'odom', self._on_odom, STREAM_QOS)
        self.create_subscription(Bool, 'estop', self._on_estop, COMMAND_QOS)
        if self._tap is not None:
            self.create_subscription(UInt8MultiArray, 'vlit/policy', self._on_policy,
                                     LATCHED_QOS)
        self._experience_pub = self.create_publisher(
            String, 'vlit/experience', STREAM_QOS) if self.learning.publish_experience \
            else None
        # Steady clocks: the watchdog must keep running when simulated time stalls.
        self.create_timer(config.safety.control_period_s, self._on_control_tick,
                          clock=self._steady)
        self._stale_timer = self.create_timer(config.safety.image_timeout_s,
                                              self._on_image_timeout, clock=self._steady)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._on_diagnostics, clock=self._steady)

        self._worker = threading.Thread(target=self._inference_loop, name='inference',
                                        daemon=True)
        self._worker.start()
        self.get_logger().info(
            f'following instructions with policy {config.policy!r} ({self._policy_version}) '
            f'on {config.device}; cmd_vel as {command_type.__name__}; waiting for '
            f'speech/text')

    # -- inputs ---------------------------------------------------------------------------

    def _on_image(self, msg: Image) -> None:
        arrival = _steady_seconds(self._steady)
        try:
            image = image_to_rgb(msg)
        except ValueError as exc:
            reason = str(exc)
            with self._lock:
                self._stats['rejected'] += 1
                # A new reason is logged at once; a repeated one at most every LOG_THROTTLE_S.
                log = reason != self._rejection[0] or \
                    arrival - self._rejection[1] >= LOG_THROTTLE_S
                if log:
                    self._rejection = (reason, arrival)
            if log:
                self.get_logger().warning(f'rejected camera frame: {reason}')
            return
        with self._wake:
            if self._pending is not None:
                self._stats['dropped'] += 1
            self._pending = (image, msg.header.stamp, arrival)
            self._image_time = arrival
            self._stats['frames'] += 1
            self._wake.notify()
        self._stale_timer.reset()

    def _on_speech(self, msg: String) -> None:
        try:
            text = check_instruction(msg.data)
        except ValueError as exc:
            self.get_logger().warning(f'rejected instruction: {exc}')
            return
        mode = 'stop' if is_stop_phrase(text) else 'policy'
        with self._wake:
            accepted = self._start_instruction(text, mode)
            decision = self._command_step()
            if accepted and mode == 'policy':
                self._reset_request = (self._generation, text)
                self._wake.notify()
        if not accepted:
            return
        if mode == 'stop':
            self.get_logger().info(f'stop phrase {text!r}: stopping')
            self._publish_action('stop', 'stop_phrase', None, None, None, None, decision,
                                 text)
        else:
            self.get_logger().info(f'following {text!r}')

    def _on_odom(self, msg: Odometry) -> None:
        pose = msg.pose.pose
        q = pose.orientation
        values = (pose.position.x, pose.position.y,
                  yaw_from_quaternion(q.x, q.y, q.z, q.w),
                  msg.twist.twist.linear.x, msg.twist.twist.angular.z)
        if not all(math.isfinite(v) for v in values):
            self.get_logger().warning(f'ignored non-finite odometry {values}',
                                      throttle_duration_sec=LOG_THROTTLE_S)
            return
        with self._lock:
            self._odometry.update(values[:3], values[3], values[4])

    def _on_estop(self, msg: Bool) -> None:
        with self._lock:
            engaged_before = self._gate.estop_engaged
            self._gate.set_estop(msg.data)
            if msg.data and not engaged_before:
                self._start_instruction('', 'idle')
            self._command_step()
        if msg.data and not engaged_before:
            self.get_logger().warning('estop engaged: stopped, instruction cancelled')
        elif not msg.data and engaged_before:
            self.get_logger().info('estop released: waiting for a new instruction')

    def _on_policy(self, msg: UInt8MultiArray) -> None:
        payload = bytes(msg.data)
        with self._wake:
            # Only the newest update matters; an older unchecked one is superseded.
            self._policy_update = payload
            self._wake.notify()

    # -- inference ------------------------------------------------------------------------

    def _update_ready(self) -> bool:
        return self._policy_update is not None and self._states_ready

    def _inference_loop(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._stopping or self._reset_request is not None
                                    or self._pending is not None or self._update_ready())
                if self._stopping:
                    return
                reset, self._reset_request = self._reset_request, None
                frame, self._pending = self._pending, None
                update = None
                if self._update_ready():
                    update, self._policy_update = self._policy_update, None
            if update is not None:
                # Between two decisions: no decision ever sees half-swapped weights.
                self._swap_policy(update)
            try:
                if reset is not None:
                    self._reset_policy(*reset)
                if frame is not None:
                    self._infer(frame)
            except Exception as exc:
                self._fail(f'inference failed: {exc!r}')

    def _reset_policy(self, generation: int, text: str) -> None:
        try:
            self._policy.reset(text)
        except Exception as exc:
            with self._lock:
                if generation != self._generation:
                    return
                # The policy may be half reset: keep the robot stopped until a new instruction.
                self._start_instruction('', 'idle')
                self._command_step()
            self.get_logger().warning(f'rejected instruction {text!r}: the policy refused it: '
                                      f'{exc!r}')
            return
        with self._lock:
            self._policy_generation = generation

    def _swap_policy(self, payload: bytes) -> None:
        from vlit_ros.core.online import apply_policy_update, validate_policy_update
        try:
            update = validate_policy_update(self._policy.model, payload,
                                            list(self._recent_states),
                                            self.learning.max_policy_kl, self._source_hash)
        except Exception as exc:  # whatever is wrong with an update must not stop inference
            with self._lock:
                self._learning_stats['updates_rejected'] += 1
            self.get_logger().warning(f'rejected policy update: {exc}; policy '
                                      f'{self._policy_version} keeps driving')
            return
        apply_policy_update(self._policy.model, update)
        self._policy.version = update.policy_version
        previous = self._policy_version
        with self._lock:
            self._policy_version = update.policy_version
            self._learning_stats['updates_accepted'] += 1
        self.get_logger().info(f'policy {previous} -> {update.policy_version} (mean KL '
                               f'{update.kl:.4f} on {len(self._recent_states)} recent states)')

    def _record_decision(self, action: str, stamp: Time, generation: int, instruction: str,
                         image) -> None:
        """Keep the decision's state for update checks; publish it as experience."""
        from vlit_ros.core.online import encode_transition
        seconds = stamp.sec + stamp.nanosec * 1e-9
        if seconds == 0.0:  # a camera driver that does not stamp its frames
            seconds = self.get_clock().now().nanoseconds * 1e-9
        temperature = self.config.temperature if self.config.sample_actions else 1.0
        transition = self._tap.transition(ACTION_INDEX[action], temperature,
                                          self._policy_version, seconds,
                                          self._episode_base + generation,
                                          instruction=instruction, image=image)
        self._recent_states.append(transition)
        if not self._states_ready:
            with self._lock:
                self._states_ready = True
        if self._experience_pub is None:
            return
        if not self.learning.experience_images:
            transition = dataclasses.replace(transition, image=None)
        self._experience_pub.publish(String(data=encode_transition(transition)))
        with self._lock:
            self._learning_stats['experience'] += 1

    def _infer(self, frame) -> None:
        image, stamp, arrival = frame
        with self._lock:
            generation = self._generation
            if self._mode != 'policy' or self._policy_generation != generation or \
                    self._gate.failure is not None:
                return
            instruction = self._instruction
            odom = self._odometry.relative()
            t = (self.get_clock().now() - self._instruction_start).nanoseconds * 1e-9
        started = time.perf_counter()
        try:
            action = self._policy.act(FollowerObservation(image, odom, max(t, 0.0)))
            if action not in ACTIONS:
                raise ValueError(f'policy returned {action!r}; expected one of '
                                 f'{", ".join(ACTIONS)}')
            probabilities = action_probabilities(self._policy)
            if self.config.sample_actions:
                if probabilities is None:
                    raise ValueError('sample_actions needs a policy that exposes '
                                     'last_probabilities')
                action = sample_action(probabilities, self.config.temperature, self._rng)
                # The executor conditions on the action taken, not the one it liked best.
                if callable(getattr(self._policy, 'note_taken_action', None)):
                    self._policy.note_taken_action(action)
        except Exception as exc:
            self._fail(f'policy failed: {exc!r}', generation)
            return
        inference_ms = (time.perf_counter() - started) * 1e3
        with self._lock:
            if generation != self._generation:
                return
            self._held = self.config.actions.twist(action)
            self._held_stamp = stamp
            self._inference_time = _steady_seconds(self._steady)
            decision = self._command_step()
            latency_ms = (_steady_seconds(self._steady) - arrival) * 1e3
            self._stats['inferences'] += 1
            self._stats['inference_ms'] = inference_ms
            self._stats['latency_ms'] = latency_ms
        self._publish_action(action, 'policy', probabilities, stamp, inference_ms, latency_ms,
                             decision, instruction)
        if self._tap is not None:
            try:
                self._record_decision(action, stamp, generation, instruction, image)
            except Exception as exc:  # learning bookkeeping must never stop the robot
                self.get_logger().error(f'could not record the decision for learning: '
                                        f'{exc!r}', throttle_duration_sec=LOG_THROTTLE_S)

    def _fail(self, detail: str, generation: Optional[int] = None) -> None:
        """Stop until the next instruction, unless the failure belongs to an older one."""
        with self._lock:
            if generation is not None and generation != self._generation:
                return
            self._gate.fail(detail)
            self._command_step()
        self.get_logger().error(f'{detail}; stopped until the next instruction',
                                throttle_duration_sec=LOG_THROTTLE_S)

    # -- commands -------------------------------------------------------------------------

    def _start_instruction(self, text: str, mode: str) -> bool:
        """Replace the current instruction (_lock held); False if the estop forbids it."""
        if mode != 'idle' and self._gate.estop_engaged:
            self.get_logger().warning(f'ignored instruction {text!r}: estop engaged')
            return False
        self._generation += 1
        self._mode = mode
        self._instruction = text
        self._instruction_start = self.get_clock().now()
        self._held = (0.0, 0.0)
        self._held_stamp = None
        self._inference_time = None
        self._odometry.restart()
        if mode != 'idle':
            self._gate.clear_failure()
        return True

    def _command_step(self) -> GateDecision:
        """Run the safety gate on the held command and publish the result (_lock held)."""
        now = _steady_seconds(self._steady)
        # A stop phrase needs no inference; the other checks (estop, camera) still apply.
        inference_time = now if self._mode == 'stop' else self._inference_time
        decision = self._gate.apply(self._held, now, self._image_time, inference_time,
                                    self._mode != 'idle')
        stop = decision.reason if decision.stopped_by_gate else ''
        last = self._last_decision.reason if self._last_decision.stopped_by_gate else ''
        if stop != last:
            if stop and stop not in _QUIET_STOPS:
                self.get_logger().warning(f'safety stop: {stop} ({decision.detail})')
            elif not stop and last not in _QUIET_STOPS:
                self.get_logger().info('safety stop cleared')
        self._last_decision = decision
        stamp = self._held_stamp
        if stamp is None or decision.stopped_by_gate:
            stamp = self.get_clock().now().to_msg()
        self._publish_twist(decision.linear, decision.angular, stamp)
        return decision

    def _publish_twist(self, linear: float, angular: float, stamp: Time) -> None:
        twist = Twist()
        twist.linear.x = float(linear)
        twist.angular.z = float(angular)
        if self.config.use_twist_stamped:
            msg = TwistStamped()
            msg.header.stamp = stamp
            msg.header.frame_id = self.config.frame_id
            msg.twist = twist
            self._cmd_pub.publish(msg)
        else:
            self._cmd_pub.publish(twist)

    def _publish_action(self, action, source, probabilities, stamp, inference_ms, latency_ms,
                        decision, instruction) -> None:
        report = {
            'layout': ACTION_LAYOUT, 'action': action, 'source': source,
            'probabilities': probabilities, 'instruction': instruction,
            'policy': self.config.policy, 'policy_version': self._policy_version,
            'stamp': None if stamp is None else {'sec': stamp.sec, 'nanosec': stamp.nanosec},
            'inference_ms': None if inference_ms is None else round(inference_ms, 3),
            'latency_ms': None if latency_ms is None else round(latency_ms, 3),
            'command': [decision.linear, decision.angular], 'override': decision.reason,
        }
        self._action_pub.publish(String(data=json.dumps(report)))

    # -- timers ---------------------------------------------------------------------------

    def _on_control_tick(self) -> None:
        with self._lock:
            self._stats['ticks'] += 1
            self._command_step()

    def _on_image_timeout(self) -> None:
        with self._lock:
            self._command_step()

    def _on_diagnostics(self) -> None:
        now = _steady_seconds(self._steady)
        with self._lock:
            stats = dict(self._stats)
            learning = dict(self._learning_stats)
            elapsed = max(now - self._stats_since, 1e-9)
            self._stats_since = now
            self._stats['ticks'] = 0
            decision = self._last_decision
            mode, instruction = self._mode, self._instruction
            image_age = None if self._image_time is None else now - self._image_time
            odometry = self._odometry.received
            estop = self._gate.estop_engaged
            failure = self._gate.failure
        status = DiagnosticStatus(name=f'{self.get_name()}: control',
                                  hardware_id=self.config.device)
        if failure is not None:
            status.level, status.message = DiagnosticStatus.ERROR, f'failure: {failure}'
        elif mode != 'idle' and decision.stopped_by_gate:
            status.level = DiagnosticStatus.WARN
            status.message = f'safety stop: {decision.reason}'
        elif estop:
            status.level, status.message = DiagnosticStatus.WARN, 'estop engaged'
        else:
            status.level = DiagnosticStatus.OK
            status.message = {'idle': 'waiting for an instruction', 'stop': 'stopped on request',
                              'policy': f'following {instruction!r}'}[mode]
        values = {
            'image_age_s': 'none' if image_age is None else f'{image_age:.3f}',
            'inference_ms': _format_ms(stats['inference_ms']),
            'frame_to_command_ms': _format_ms(stats['latency_ms']),
            'control_rate_hz': f'{stats["ticks"] / elapsed:.1f}',
            'frames_received': str(stats['frames']),
            'frames_dropped': str(stats['dropped']),
            'frames_rejected': str(stats['rejected']),
            'inferences': str(stats['inferences']),
            'device': self.config.device,
            'policy': self.config.policy,
            'policy_version': self._policy_version,
            'mode': mode,
            'instruction': instruction,
            'safety_override': decision.reason,
            'safety_detail': decision.detail,
            'estop': str(estop),
            'odometry_received': str(odometry),
            'command': f'{decision.linear:.3f} {decision.angular:.3f}',
            'experience_published': str(learning['experience']),
            'policy_updates_accepted': str(learning['updates_accepted']),
            'policy_updates_rejected': str(learning['updates_rejected']),
        }
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)

    # -- shutdown -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the inference thread and publish a zero command (before rclpy shuts down)."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._worker.join(timeout=5.0)
        with self._lock:
            self._gate.set_estop(True)
            self._mode = 'idle'
            if not self.context.ok():
                self.get_logger().error('ROS was shut down first: no zero command sent')
                return
            self._publish_twist(0.0, 0.0, self.get_clock().now().to_msg())
        self._cmd_pub.wait_for_all_acked(Duration(seconds=1.0))


def _format_ms(value: Optional[float]) -> str:
    return 'none' if value is None else f'{value:.2f}'


def main(args=None) -> int:
    """Run the node; return non-zero when it cannot start."""
    return run_node(InstructionFollower, NODE_NAME, args, stop=lambda node: node.stop())


if __name__ == '__main__':
    sys.exit(main())
