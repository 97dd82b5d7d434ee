"""Tests for the follower's ROS-free logic (vlit_ros.core.follower_logic)."""

from collections import Counter
import math
import random

import pytest

from vlit_ros.core.actions import ActionParams, ACTIONS
from vlit_ros.core.follower_logic import (action_probabilities, check_instruction,
                                          FollowerConfig, is_stop_phrase, OdometryTracker,
                                          sample_action, yaw_from_quaternion)
from vlit_ros.core.safety import SafetyConfig
from vlit_ros.sim import tasks


def test_instruction_whitespace_is_normalised():
    assert check_instruction('  go to\tthe red\n cube ') == 'go to the red cube'


@pytest.mark.parametrize('text, reason', [
    ('', 'empty instruction'),
    ('   \t\n', 'empty instruction'),
    ('???', 'no words'),
    ('1234 5678', 'no words'),
    ('go to the \x07 cube', 'unprintable'),
    ('go \ufffd\ufffd cube', 'undecodable'),
    ('go ' * 200, 'characters long'),
])
def test_garbage_instructions_are_rejected(text, reason):
    with pytest.raises(ValueError, match=reason):
        check_instruction(text)


def test_non_text_is_rejected():
    with pytest.raises(ValueError, match='must be text'):
        check_instruction(None)


@pytest.mark.parametrize('text', tasks.STOP_PHRASES + (
    'STOP!', 'Halt.', 'stand still', 'don\u2019t move', 'emergency stop', 'whoa whoa',
    'stop right now please', 'pause'))
def test_stop_phrases(text):
    assert is_stop_phrase(text)


def _task_phrasings():
    texts = [t.format(ref='red cube') for t in tasks.GOTO_TEMPLATES]
    texts += [t.format(ref='blue ball') for t in tasks.GOTO_HELD_OUT_TEMPLATES]
    texts += [text for text, _ in tasks.TURN_NAMED]
    texts += [t.format(dir='left', n=90) for t in tasks.TURN_DEGREE_TEMPLATES]
    texts += [t.format(d='a meter') for t in tasks.MOVE_FORWARD_TEMPLATES]
    texts += [t.format(d='half a meter') for t in tasks.MOVE_BACKWARD_TEMPLATES]
    return texts + ['move', 'go', "don't turn left", 'stay left of the green cylinder']


@pytest.mark.parametrize('text', _task_phrasings())
def test_task_phrasings_are_not_stop_phrases(text):
    assert not is_stop_phrase(text)


@pytest.mark.parametrize('yaw', [0.0, 0.5, -2.0, math.pi - 1e-6])
def test_yaw_from_quaternion(yaw):
    assert yaw_from_quaternion(0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)) == \
        pytest.approx(yaw)


def test_odometry_is_relative_to_the_instruction_start():
    tracker = OdometryTracker()
    assert not tracker.received
    assert tracker.relative() == (0.0, 0.0, 0.0, 0.0, 0.0)
    tracker.update((1.0, 2.0, math.pi / 2), 0.3, 0.1)
    assert tracker.received
    assert tracker.relative() == pytest.approx((0.0, 0.0, 0.0, 0.3, 0.1))
    tracker.update((1.0, 3.0, math.pi / 2), 0.4, 0.0)
    # One metre along the world y axis is one metre ahead for a robot facing +y.
    assert tracker.relative() == pytest.approx((1.0, 0.0, 0.0, 0.4, 0.0))
    tracker.restart()
    assert tracker.relative() == pytest.approx((0.0, 0.0, 0.0, 0.4, 0.0))
    tracker.update((0.0, 3.0, math.pi), 0.0, 0.5)
    assert tracker.relative() == pytest.approx((0.0, 1.0, math.pi / 2, 0.0, 0.5))


def test_restart_before_any_odometry_uses_the_first_pose():
    tracker = OdometryTracker()
    tracker.restart()
    tracker.update((5.0, 5.0, 1.0), 0.0, 0.0)
    assert tracker.relative() == pytest.approx((0.0, 0.0, 0.0, 0.0, 0.0))


class _Policy:
    def __init__(self, probabilities):
        self.last_probabilities = probabilities


def test_action_probabilities_from_sequence_or_mapping():
    values = [0.1, 0.5, 0.1, 0.1, 0.1, 0.05, 0.05]
    expected = dict(zip(ACTIONS, values))
    assert action_probabilities(_Policy(values)) == pytest.approx(expected)
    assert action_probabilities(_Policy({'forward': 1.0})) == \
        {a: (1.0 if a == 'forward' else 0.0) for a in ACTIONS}


@pytest.mark.parametrize('policy', [object(), _Policy(None), _Policy([0.5, 0.5]),
                                    _Policy([math.nan] * len(ACTIONS))])
def test_action_probabilities_absent_or_malformed(policy):
    assert action_probabilities(policy) is None


def test_follower_config_accepts_defaults_for_plugins():
    config = FollowerConfig(policy='random')
    assert config.safety.control_period_s == pytest.approx(1.0 / config.control_rate_hz)


@pytest.mark.parametrize('fields, message', [
    ({'policy': 'expert'}, 'ground truth'),
    ({'policy': 'magic'}, 'PATH.py:Class'),
    ({'policy': 'model'}, 'needs a checkpoint'),
    ({'policy': 'random', 'checkpoint': '/tmp/ckpt'}, 'only used by policy'),
    ({'device': 'tpu'}, 'device must be'),
    ({'torch_threads': -1}, 'torch_threads must be >= 0'),
    ({'sample_actions': True}, 'sample_actions needs a policy with action probabilities'),
    ({'temperature': 0.0}, 'temperature must be positive'),
    ({'control_rate_hz': 20.0}, 'does not match control_rate_hz'),
    ({'use_twist_stamped': True, 'frame_id': ''}, 'needs a frame_id'),
    ({'actions': ActionParams(forward_speed=0.8)}, "action 'forward' asks for"),
    ({'safety': SafetyConfig(max_angular_speed=0.5)}, 'the gate would clip it'),
])
def test_follower_config_rejects_contradictions(fields, message):
    fields = {'policy': 'random', **fields}
    with pytest.raises(ValueError, match=message):
        FollowerConfig(**fields)


def test_follower_config_model_with_checkpoint_and_sampling():
    config = FollowerConfig(policy='model', checkpoint='/ckpt', device='cuda:1',
                            sample_actions=True, temperature=0.5)
    assert config.sample_actions


def test_sample_action_follows_the_distribution_and_temperature():
    probabilities = {'forward': 0.7, 'turn_left': 0.2, 'stop': 0.1, 'backward': 0.0}
    rng = random.Random(0)
    counts = Counter(sample_action(probabilities, 1.0, rng) for _ in range(4000))
    assert set(counts) == {'forward', 'turn_left', 'stop'}
    assert counts['forward'] / 4000 == pytest.approx(0.7, abs=0.03)
    assert counts['stop'] / 4000 == pytest.approx(0.1, abs=0.02)
    cold = Counter(sample_action(probabilities, 0.05, rng) for _ in range(500))
    assert cold['forward'] >= 495
    hot = Counter(sample_action(probabilities, 100.0, rng) for _ in range(3000))
    assert hot['stop'] / 3000 == pytest.approx(1 / 3, abs=0.05)


def test_sample_action_is_reproducible_and_needs_some_mass():
    probabilities = dict(zip(ACTIONS, [1 / len(ACTIONS)] * len(ACTIONS)))
    draws = [[sample_action(probabilities, 1.0, random.Random(7)) for _ in range(3)]
             for _ in range(2)]
    assert draws[0] == draws[1]
    with pytest.raises(ValueError, match='positive probability'):
        sample_action({'stop': 0.0}, 1.0, random.Random(0))
