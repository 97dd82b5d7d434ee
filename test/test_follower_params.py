"""Tests for the parameter table helpers (vlit_ros.nodes.params) on a real rclpy node."""

import random

import pytest
import rclpy
from rclpy.context import Context

from vlit_ros.nodes.instruction_follower import PARAMETERS, read_config
from vlit_ros.nodes.params import declare_parameters, ParameterError, ParameterSpec


@pytest.fixture
def make_node(monkeypatch):
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    contexts = []

    def make(*overrides):
        context = Context()
        args = ['--ros-args'] + [arg for o in overrides for arg in ('-p', o)]
        rclpy.init(args=args, context=context,
                   domain_id=random.SystemRandom().randint(1, 100))
        contexts.append(context)
        return rclpy.create_node('params_test', context=context)
    yield make
    for context in contexts:
        rclpy.try_shutdown(context=context)


def test_descriptor_carries_description_range_and_read_only():
    rate = ParameterSpec('rate', 10.0, 'how often', 1.0, 100.0).descriptor()
    assert rate.description == 'how often' and rate.read_only
    assert (rate.floating_point_range[0].from_value,
            rate.floating_point_range[0].to_value) == (1.0, 100.0)
    seed = ParameterSpec('seed', -1, 'seed', -1, 10, read_only=False).descriptor()
    assert not seed.read_only
    assert (seed.integer_range[0].from_value, seed.integer_range[0].to_value,
            seed.integer_range[0].step) == (-1, 10, 1)
    assert not ParameterSpec('name', 'x', 'a name').descriptor().floating_point_range


@pytest.mark.parametrize('kwargs, message', [
    ({'default': 1.0, 'minimum': 0.0}, 'both ends'),
    ({'default': 'text', 'minimum': 0.0, 'maximum': 1.0}, 'only numbers'),
    ({'default': True, 'minimum': 0, 'maximum': 1}, 'only numbers'),
])
def test_spec_rejects_inconsistent_ranges(kwargs, message):
    with pytest.raises(TypeError, match=message):
        ParameterSpec('p', description='d', **kwargs)


def test_declare_returns_defaults_and_overrides(make_node):
    node = make_node('rate:=20.0')
    values = declare_parameters(node, [ParameterSpec('rate', 10.0, 'd', 1.0, 100.0),
                                       ParameterSpec('name', 'x', 'd')])
    assert values == {'rate': 20.0, 'name': 'x'}
    node.destroy_node()


@pytest.mark.parametrize('override, message', [
    ('rate:=20', r'must be of type float \(write a double with a decimal point'),
    ('rate:=500.0', r'must lie in \[1.0, 100.0\]'),
])
def test_declare_explains_bad_overrides(make_node, override, message):
    node = make_node(override)
    with pytest.raises(ParameterError, match=message):
        declare_parameters(node, [ParameterSpec('rate', 10.0, 'd', 1.0, 100.0)])
    node.destroy_node()


def test_follower_table_defaults_build_a_valid_config(make_node):
    node = make_node('policy:=random')
    config = read_config(node)
    assert config.policy == 'random' and config.control_rate_hz == 10.0
    assert config.safety.image_timeout_s == 0.25
    assert len({spec.name for spec in PARAMETERS}) == len(PARAMETERS)
    assert all(spec.description for spec in PARAMETERS)
    node.destroy_node()


def test_follower_contradictions_become_parameter_errors(make_node):
    node = make_node('policy:=random', 'turn_rate:=2.0')
    with pytest.raises(ParameterError, match="action 'turn_left' asks for"):
        read_config(node)
    node.destroy_node()
