"""
The trainer node over real rclpy: rewards, experience, episodes, services and policy messages.

One trainer process (`python -m vlit_ros.nodes.trainer_node`) learns on a tiny checkpoint; the
test process plays the follower and the task node from a fresh rclpy Context, on a
ROS_DOMAIN_ID of its own with localhost-only discovery. The tests run in file order on the
same trainer: it first sees no learning, then learns, pauses, saves and rolls back.
"""

import json
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import pytest
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, Float32, String, UInt8MultiArray
from std_srvs.srv import SetBool, Trigger
from test_sim_node import new_domain, NodeProcess, Probe
import torch

from vlit_ros.core.actions import ACTION_INDEX
from vlit_ros.core.model import save_checkpoint, VLITModel
from vlit_ros.core.online import (decode_transition, encode_transition, read_policy_payload,
                                  source_hash_of, Transition, validate_policy_update)
from vlit_ros.nodes.images import rgb_to_image
from vlit_ros.qos import COMMAND_QOS, IMAGE_QOS, LATCHED_QOS, STREAM_QOS
from vlit_ros.training.presets import model_config

FORWARD = ACTION_INDEX['forward']
EPISODES_PER_ROLLOUT = 12
# Start-up (torch, rclpy, the model) and discovery on a loaded 2-core machine.
STARTUP_S = 40.0
EVENT_S = 10.0
# The fused state of the tiny test model (state query, sentence, grounding map, task numbers).
STATE_DIM = VLITModel(model_config('tiny', 'builtin')).vlm.state_dim


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = VLITModel(model_config('tiny', 'builtin')).eval()
    checkpoint = save_checkpoint(model, tmp_path_factory.mktemp('checkpoint'))
    return model, checkpoint, source_hash_of(checkpoint)


class Trainer:
    """The trainer process and a probe that feeds it and records what it publishes."""

    def __init__(self, checkpoint, output_dir):
        domain = new_domain()
        self.domain = domain
        self.output_dir = output_dir
        # Rewards arrive moments after their transitions here: no delay to take off.
        parameters = {'checkpoint': checkpoint, 'output_dir': output_dir,
                      'reference_return': 0.0, 'rollout_steps': EPISODES_PER_ROLLOUT,
                      'minibatch_size': EPISODES_PER_ROLLOUT, 'target_kl': 1.0,
                      'learning_rate': 0.003, 'settle_s': 0.2, 'reward_delay_s': 0.0,
                      'max_publish_rate_hz': 20.0, 'plot_period_s': 0.5,
                      'rollback_window': 1000, 'value_warmup_updates': 0}
        args = []
        for name, value in parameters.items():
            args += ['-p', f'{name}:={value}']
        self.process = NodeProcess('vlit_ros.nodes.trainer_node', domain, args)
        self.probe = Probe(domain, {'vlit/policy': (UInt8MultiArray, LATCHED_QOS),
                                    '/diagnostics': (DiagnosticArray, STREAM_QOS)})
        node = self.probe.node
        self.reward_pub = node.create_publisher(Float32, 'reward', STREAM_QOS)
        self.experience_pub = node.create_publisher(String, 'vlit/experience', STREAM_QOS)
        self.episode_pub = node.create_publisher(String, 'vlit/episode', STREAM_QOS)
        self.estop_pub = node.create_publisher(Bool, 'estop', COMMAND_QOS)
        self.episode = 0
        for publisher in (self.reward_pub, self.experience_pub, self.episode_pub,
                          self.estop_pub):
            assert self.probe.wait_for(lambda p=publisher: p.get_subscription_count() > 0,
                                       STARTUP_S), \
                f'the trainer does not subscribe {publisher.topic}:\n{self.process.output()}'
        assert self.probe.wait_for(lambda: self.probe.messages['/diagnostics'], EVENT_S)

    def diagnostics(self):
        """Return the latest trainer diagnostics as {key: value}."""
        with self.probe.lock:
            for _, array in reversed(self.probe.messages['/diagnostics']):
                for status in array.status:
                    if status.name.startswith('trainer'):
                        return dict({v.key: v.value for v in status.values},
                                    message=status.message)
        return {}

    def wait_for_diagnostics(self, predicate, timeout=EVENT_S):
        return self.probe.wait_for(lambda: predicate(self.diagnostics()), timeout)

    def policies(self):
        with self.probe.lock:
            return [bytes(m.data) for _, m in self.probe.messages['vlit/policy']]

    def feed(self, model, count, version, seed):
        """Play `count` one-step episodes: a transition, its reward, the episode end."""
        rng = np.random.default_rng(seed)
        fused = rng.normal(size=(count, model.vlm.state_dim)).astype(np.float32)
        odometry = rng.normal(scale=0.3, size=(count, 8)).astype(np.float32)
        with torch.no_grad():
            output = model.executor(torch.from_numpy(fused), torch.from_numpy(odometry),
                                    torch.zeros(count, dtype=torch.long))[0]
        log_probs = torch.log_softmax(output.logits, -1)
        transitions = []
        for row in range(count):
            action = int(rng.choice(log_probs.shape[1], p=log_probs[row].exp().numpy()
                                    / float(log_probs[row].exp().sum())))
            stamp = time.time()
            transition = Transition(fused[row], odometry[row], 0, action,
                                    float(log_probs[row, action]), float(output.value[row]),
                                    version, stamp, self.episode)
            self.episode += 1
            transitions.append(transition)
            self.experience_pub.publish(String(data=encode_transition(transition)))
            self.reward_pub.publish(Float32(data=float(action == FORWARD)))
            time.sleep(0.02)
            self.episode_pub.publish(String(data=json.dumps(
                {'layout': 'vlit_ros/episode/1', 'event': 'end', 'time': time.time(),
                 'success': action == FORWARD})))
            time.sleep(0.02)
        return transitions

    def call(self, service_type, name, request):
        return self.probe.call(service_type, name, request, timeout=EVENT_S)

    def listen(self, topic, msg_type, qos):
        """Also record `topic` from now on."""
        self.probe.subscribe(topic, msg_type, qos)

    def close(self):
        self.probe.close()
        return self.process.stop(timeout=30)


@pytest.fixture(scope='module')
def trainer(tiny, tmp_path_factory):
    harness = Trainer(tiny[1], tmp_path_factory.mktemp('online'))
    yield harness
    killed = harness.process.proc.poll() is not None
    code = harness.close()
    assert killed or code == 0, harness.process.output()


def test_topics_and_services_follow_the_design(trainer):
    node = trainer.probe.node
    services = dict(node.get_service_names_and_types())
    assert services.get('/vlit/pause_learning') == ['std_srvs/srv/SetBool']
    assert services.get('/vlit/save') == ['std_srvs/srv/Trigger']
    assert services.get('/vlit/rollback') == ['std_srvs/srv/Trigger']
    publishers = node.get_publishers_info_by_topic('/vlit/policy')
    assert [p.topic_type for p in publishers] == ['std_msgs/msg/UInt8MultiArray']
    assert publishers[0].qos_profile.durability == LATCHED_QOS.durability


def test_a_nan_reward_is_dropped_and_counted(trainer):
    before = trainer.diagnostics()
    for value in (float('nan'), float('inf'), 1e6, 0.5):
        trainer.reward_pub.publish(Float32(data=value))
    expected = {'dropped_non_finite': int(before['dropped_non_finite']) + 2,
                'dropped_absurd': int(before['dropped_absurd']) + 1,
                'rewards': int(before['rewards']) + 1}
    assert trainer.wait_for_diagnostics(
        lambda d: all(int(d.get(k, -1)) == v for k, v in expected.items())), \
        trainer.diagnostics()
    assert 'dropped reward nan' in trainer.process.output()
    assert trainer.diagnostics()['updates'] == '0'


def test_learns_from_experience_and_publishes_a_valid_policy(trainer, tiny):
    model, _, source = tiny
    transitions = trainer.feed(model, EPISODES_PER_ROLLOUT, source[:12], seed=1)
    assert trainer.probe.wait_for(lambda: trainer.policies(), EVENT_S), \
        trainer.process.output()
    header, _ = read_policy_payload(trainer.policies()[-1])
    assert header['policy_version'] == f'{source[:12]}+1'
    update = validate_policy_update(model, trainer.policies()[-1], transitions, max_kl=1.0,
                                    expected_source=source)
    assert update.kl > 0.0
    assert trainer.wait_for_diagnostics(lambda d: d['updates'] == '1')


def test_pausing_and_the_estop_stop_updates(trainer, tiny):
    model, _, source = tiny
    response = trainer.call(SetBool, 'vlit/pause_learning', SetBool.Request(data=True))
    assert response.success and response.message == 'learning paused'
    trainer.feed(model, EPISODES_PER_ROLLOUT, f'{source[:12]}+1', seed=2)
    assert trainer.wait_for_diagnostics(
        lambda d: int(d['finished_transitions']) >= EPISODES_PER_ROLLOUT)
    trainer.estop_pub.publish(Bool(data=True))
    assert trainer.wait_for_diagnostics(lambda d: d['pause_reasons'] == 'estop,request')
    time.sleep(1.0)  # several worker rounds and settle_s: still no update
    assert trainer.diagnostics()['updates'] == '1'
    response = trainer.call(SetBool, 'vlit/pause_learning', SetBool.Request(data=False))
    assert response.success and 'still paused: estop' in response.message
    time.sleep(0.5)
    assert trainer.diagnostics()['updates'] == '1'
    trainer.estop_pub.publish(Bool(data=False))
    assert trainer.wait_for_diagnostics(lambda d: d['updates'] == '2'), trainer.diagnostics()
    assert trainer.probe.wait_for(
        lambda: read_policy_payload(trainer.policies()[-1])[0]['policy_version'] ==
        f'{source[:12]}+2', EVENT_S)


def test_save_and_rollback_services(trainer, tiny):
    _, _, source = tiny
    response = trainer.call(Trigger, 'vlit/save', Trigger.Request())
    assert response.success, response.message
    state = json.loads((trainer.output_dir / 'training_state' / 'online.json').read_text())
    assert state['version'] == f'{source[:12]}+2' and state['updates'] == 2
    assert (trainer.output_dir / 'config.json').is_file()
    response = trainer.call(Trigger, 'vlit/rollback', Trigger.Request())
    assert response.success and source[:12] in response.message, response.message
    assert trainer.probe.wait_for(
        lambda: read_policy_payload(trainer.policies()[-1])[0]['policy_version'] ==
        source[:12], EVENT_S)
    response = trainer.call(Trigger, 'vlit/rollback', Trigger.Request())
    assert not response.success and 'nothing to roll back to' in response.message
    assert trainer.wait_for_diagnostics(lambda d: d['policy_version'] == source[:12])
    assert (trainer.output_dir / 'learning_curves.png').stat().st_size > 0
    assert list((trainer.output_dir / 'tensorboard').glob('events.out.tfevents.*'))


def test_a_checkpoint_that_does_not_load_stops_the_node_at_start_up(tmp_path):
    process = NodeProcess('vlit_ros.nodes.trainer_node', new_domain(),
                          ['-p', f'checkpoint:={tmp_path / "missing"}',
                           '-p', f'output_dir:={tmp_path / "out"}'])
    assert process.proc.wait(timeout=STARTUP_S) == 2
    assert 'could not start the learner' in process.output()
    assert 'missing is not a directory' in process.output()


def test_a_follower_learns_through_the_trainer_and_outlives_it(trainer, tiny):
    """The last test: it kills the trainer."""
    _, checkpoint, source = tiny
    follower = NodeProcess('vlit_ros.nodes.instruction_follower', trainer.domain, [
        '-p', 'policy:=model', '-p', f'checkpoint:={checkpoint}', '-p', 'seed:=1',
        '-p', 'sample_actions:=true', '-p', 'publish_experience:=true'])
    node = trainer.probe.node
    camera = node.create_publisher(Image, 'camera/image_raw', IMAGE_QOS)
    speech = node.create_publisher(String, 'speech/text', COMMAND_QOS)
    trainer.listen('vlit/action', String, STREAM_QOS)
    trainer.listen('vlit/experience', String, STREAM_QOS)
    streaming = threading.Event()
    frames = np.random.default_rng(0).integers(0, 256, (8, 96, 128, 3), np.uint8)

    def stream():
        index = 0
        while not streaming.is_set():
            camera.publish(rgb_to_image(frames[index % 8], stamp=node.get_clock().now().to_msg()))
            index += 1
            streaming.wait(0.1)

    def actions():
        with trainer.probe.lock:
            return [json.loads(m.data) for _, m in trainer.probe.messages['vlit/action']]

    def experience():
        with trainer.probe.lock:
            return [decode_transition(m.data, STATE_DIM)
                    for _, m in trainer.probe.messages['vlit/experience']]

    streamer = threading.Thread(target=stream, daemon=True)
    try:
        assert trainer.probe.wait_for(lambda: camera.get_subscription_count() > 0 and
                                      speech.get_subscription_count() > 0, STARTUP_S), \
            follower.output()
        streamer.start()
        speech.publish(String(data='go to the red cube'))
        # The test is the reward oracle: +1 for every forward the follower reports.
        rewarded = 0
        deadline = time.monotonic() + 2 * EVENT_S
        while rewarded < EPISODES_PER_ROLLOUT + 2 and time.monotonic() < deadline:
            transitions = experience()
            for transition in transitions[rewarded:]:
                trainer.reward_pub.publish(Float32(data=float(transition.action == FORWARD)))
            rewarded = max(rewarded, len(transitions))
            time.sleep(0.02)
        assert rewarded >= EPISODES_PER_ROLLOUT + 2, follower.output()
        trainer.episode_pub.publish(String(data=json.dumps(
            {'layout': 'vlit_ros/episode/1', 'event': 'end', 'time': time.time(),
             'success': None})))
        speech.publish(String(data='turn left'))

        first = experience()[0]
        decided = [a for a in actions() if a['instruction'] == 'go to the red cube']
        assert first.policy_version == source[:12] and first.fused.shape == (STATE_DIM,)
        assert first.action == ACTION_INDEX[decided[0]['action']]
        assert np.exp(first.log_prob) == pytest.approx(
            decided[0]['probabilities'][decided[0]['action']], abs=1e-4)

        # The trainer learns from it; the follower swaps the new policy in.
        assert trainer.probe.wait_for(
            lambda: any(a['policy_version'].startswith(f'{source[:12]}+') for a in actions()),
            2 * EVENT_S), trainer.process.output() + follower.output()
        learned = read_policy_payload(trainer.policies()[-1])[0]['policy_version']
        assert actions()[-1]['policy_version'] == learned
        trainer.process.proc.kill()
        trainer.process.proc.wait(timeout=10)
        since = time.monotonic()
        assert trainer.probe.wait_for(
            lambda: len([m for t, m in trainer.probe.messages['vlit/action'] if t > since + 1])
            >= 5, EVENT_S), follower.output()
        assert all(a['policy_version'] == learned for a in actions()[-5:])
        # A corrupted policy message is rejected; the learned policy keeps driving.
        payload = bytearray(trainer.policies()[-1])
        payload[-3] ^= 0x40
        corrupt = node.create_publisher(UInt8MultiArray, 'vlit/policy', LATCHED_QOS)
        corrupt.publish(UInt8MultiArray(data=bytes(payload)))
        deadline = time.monotonic() + EVENT_S
        while 'rejected policy update' not in follower.output() and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert 'do not match their SHA-256' in follower.output()
        since = time.monotonic()
        assert trainer.probe.wait_for(
            lambda: len(trainer.probe.since('vlit/action', since)) >= 5, EVENT_S)
        assert all(a['policy_version'] == learned for a in actions()[-5:])
    finally:
        streaming.set()
        if streamer.is_alive():
            streamer.join(timeout=5)
        code = follower.stop(timeout=20)
    assert code == 0, follower.output()
