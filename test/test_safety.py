"""Unit tests for the safety gate (vlit_ros.core.safety)."""

import math

import numpy as np
import pytest

from vlit_ros.core import safety
from vlit_ros.core.safety import SafetyConfig, SafetyGate

PERIOD = 0.1


def fresh_gate(**overrides):
    return SafetyGate(SafetyConfig(**overrides))


def step(gate, desired, now, image_age=0.0, inference_age=0.0, active=True):
    return gate.apply(desired, now, now - image_age, now - inference_age, active)


def run_until_steady(gate, desired, start=0.0, ticks=20):
    decision = None
    for i in range(ticks):
        decision = step(gate, desired, start + i * PERIOD)
    return decision


def test_passes_a_safe_command_through_after_ramping_up():
    gate = fresh_gate()
    decision = run_until_steady(gate, (0.4, 0.0))
    assert decision == (0.4, 0.0, '', '')
    assert not decision.stopped_by_gate


@pytest.mark.parametrize('field, value, message', [
    ('max_linear_speed', 0.0, 'positive'),
    ('max_angular_speed', -1.0, 'positive'),
    ('max_linear_accel', math.inf, 'positive'),
    ('max_angular_accel', math.nan, 'positive'),
    ('control_period_s', 0.0, 'positive'),
    ('image_timeout_s', 0.05, 'shorter than the control period'),
    ('inference_stall_timeout_s', 0.01, 'shorter than the control period'),
    ('image_timeout_s', True, 'positive'),
    ('instruction_required', 1, 'bool'),
])
def test_config_rejects_invalid_values(field, value, message):
    with pytest.raises(ValueError, match=message) as info:
        SafetyConfig(**{field: value})
    assert field in str(info.value)


def test_stale_image_stops():
    gate = fresh_gate(image_timeout_s=0.25)
    run_until_steady(gate, (0.4, 0.0))
    assert step(gate, (0.4, 0.0), 10.0, image_age=0.25).linear == 0.4
    decision = step(gate, (0.4, 0.0), 10.1, image_age=0.26)
    assert decision[:3] == (0.0, 0.0, safety.IMAGE_STALE)
    assert '0.260 s old' in decision.detail
    assert decision.stopped_by_gate


def test_no_image_yet_stops():
    decision = fresh_gate().apply((0.4, 0.0), 1.0, None, 1.0, True)
    assert decision[:3] == (0.0, 0.0, safety.NO_IMAGE)


def test_no_instruction_stops_unless_not_required():
    decision = step(fresh_gate(), (0.4, 0.0), 1.0, active=False)
    assert decision[:3] == (0.0, 0.0, safety.NO_INSTRUCTION)
    free = fresh_gate(instruction_required=False)
    assert run_until_steady(free, (0.4, 0.0)).linear == 0.4


def test_inference_missing_or_stalled_stops():
    gate = fresh_gate(inference_stall_timeout_s=0.5)
    assert gate.apply((0.4, 0.0), 1.0, 1.0, None, True).reason == safety.NO_INFERENCE
    run_until_steady(gate, (0.4, 0.0), start=2.0)
    assert step(gate, (0.4, 0.0), 5.0, inference_age=0.5).linear == 0.4
    decision = step(gate, (0.4, 0.0), 5.1, inference_age=0.6)
    assert decision[:3] == (0.0, 0.0, safety.INFERENCE_STALLED)


def test_estop_latches_until_explicit_release():
    gate = fresh_gate()
    run_until_steady(gate, (0.4, 0.3))
    gate.set_estop(True)
    for i in range(5):
        decision = step(gate, (0.4, 0.3), 10.0 + i * PERIOD)
        assert decision[:3] == (0.0, 0.0, safety.ESTOP)
    assert gate.estop_engaged
    gate.set_estop(True)
    assert gate.estop_engaged
    gate.set_estop(False)
    assert not gate.estop_engaged
    decision = step(gate, (0.4, 0.3), 11.0)
    assert decision.reason == safety.ACCELERATION_LIMIT
    assert 0.0 < decision.linear < 0.4


def test_estop_wins_over_every_other_reason():
    gate = fresh_gate()
    gate.set_estop(True)
    gate.fail('boom')
    decision = gate.apply((math.nan, 0.0), 1.0, None, None, False)
    assert decision.reason == safety.ESTOP


def test_failure_holds_until_cleared():
    gate = fresh_gate()
    run_until_steady(gate, (0.4, 0.0))
    gate.fail('policy exploded')
    decision = step(gate, (0.4, 0.0), 5.0)
    assert decision == (0.0, 0.0, safety.FAILURE, 'policy exploded')
    assert gate.failure == 'policy exploded'
    assert step(gate, (0.4, 0.0), 5.1).reason == safety.FAILURE
    gate.clear_failure()
    assert gate.failure is None
    assert step(gate, (0.4, 0.0), 5.2).linear > 0.0


def test_fail_without_detail_still_names_a_reason():
    gate = fresh_gate()
    gate.fail('')
    assert step(gate, (0.1, 0.0), 1.0).detail == 'unspecified failure'


@pytest.mark.parametrize('desired', [
    (math.nan, 0.0), (0.0, math.inf), (-math.inf, 0.0), (None, 0.0), ('0.1', 0.0),
    (True, 0.0), (0.1,), (0.1, 0.0, 0.0),
])
def test_non_finite_or_malformed_command_stops(desired):
    gate = fresh_gate()
    run_until_steady(gate, (0.4, 0.0))
    decision = step(gate, desired, 10.0)
    assert decision[:3] == (0.0, 0.0, safety.NON_FINITE)
    assert all(math.isfinite(x) for x in decision[:2])


def test_numpy_numbers_are_accepted():
    gate = fresh_gate()
    decision = run_until_steady(gate, (np.float32(0.25), np.float64(-0.5)))
    assert decision.reason == ''
    assert decision.linear == pytest.approx(0.25)
    assert decision.angular == pytest.approx(-0.5)


def test_speed_is_clamped_both_ways():
    gate = fresh_gate(max_linear_speed=0.5, max_angular_speed=1.0)
    decision = run_until_steady(gate, (2.0, -3.0))
    assert (decision.linear, decision.angular) == (0.5, -1.0)
    assert decision.reason == safety.SPEED_LIMIT
    assert 'wanted (2.000, -3.000)' in decision.detail
    decision = run_until_steady(gate, (-2.0, 3.0), start=10.0)
    assert (decision.linear, decision.angular) == (-0.5, 1.0)


def test_acceleration_is_limited_per_control_period():
    gate = fresh_gate(max_linear_accel=2.0, max_angular_accel=4.0)
    outputs = [step(gate, (0.5, 1.0), i * PERIOD) for i in range(5)]
    assert [round(d.linear, 6) for d in outputs] == [0.2, 0.4, 0.5, 0.5, 0.5]
    assert [round(d.angular, 6) for d in outputs] == [0.4, 0.8, 1.0, 1.0, 1.0]
    assert outputs[0].reason == safety.ACCELERATION_LIMIT
    assert outputs[-1].reason == ''


def test_calls_closer_than_a_period_share_its_acceleration_budget():
    gate = fresh_gate(max_linear_accel=2.0)
    step(gate, (0.0, 0.0), 0.0)
    first = step(gate, (0.4, 0.0), 0.05)
    second = step(gate, (0.4, 0.0), 0.10)
    assert first.linear == pytest.approx(0.1)
    assert second.linear == pytest.approx(0.2)
    # A long pause does not bank acceleration: one period's worth at most.
    assert step(gate, (0.5, 0.0), 5.0).linear == pytest.approx(0.4)


def test_braking_is_never_rate_limited():
    gate = fresh_gate()
    run_until_steady(gate, (0.5, 1.0))
    decision = step(gate, (0.0, 0.0), 10.0)
    assert decision == (0.0, 0.0, '', '')
    run_until_steady(gate, (0.5, 1.0), start=20.0)
    assert step(gate, (0.1, 0.2), 30.0)[:2] == (0.1, 0.2)


def test_reversing_brakes_to_zero_then_accelerates():
    gate = fresh_gate(max_linear_accel=1.0)
    run_until_steady(gate, (0.4, 0.0))
    decision = step(gate, (-0.4, 0.0), 10.0)
    assert decision.linear == pytest.approx(-0.1)
    assert decision.reason == safety.ACCELERATION_LIMIT


def test_zero_override_resets_the_ramp():
    gate = fresh_gate()
    run_until_steady(gate, (0.4, 0.0))
    step(gate, (0.4, 0.0), 10.0, image_age=1.0)
    assert gate.last_output == (0.0, 0.0)
    assert step(gate, (0.4, 0.0), 10.1).linear == pytest.approx(0.2)


def test_clock_going_backwards_gives_no_acceleration():
    gate = fresh_gate()
    step(gate, (0.0, 0.0), 5.0)
    decision = gate.apply((0.4, 0.0), 4.0, 4.0, 4.0, True)
    assert decision.linear == 0.0
    assert decision.reason == safety.ACCELERATION_LIMIT
