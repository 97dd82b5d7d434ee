"""
Online learning core (`vlit_ros.core.online`): experience, rewards, PPO, guards, updates.

A tiny model with the built-in text encoder keeps every test on the CPU in well under a
second or two; PPO runs on the executor over synthetic fused states.
"""

import copy
from dataclasses import replace
import json
import math

import numpy as np
import pytest
import safetensors.torch
import torch

from vlit_ros.core.actions import ACTION_INDEX, NUM_ACTIONS
from vlit_ros.core.follower_logic import FollowerObservation
from vlit_ros.core.model import load_checkpoint, VLITModel
from vlit_ros.core.online import (_fusion_inputs, apply_policy_update, decode_transition,
                                  encode_policy, encode_transition, EpisodeSummary, ExecutorTap,
                                  EXPERIENCE_LAYOUT, ExperienceBuffer, LearnerConfig,
                                  match_rewards, OnlineLearner, pack_transition,
                                  read_policy_payload, reward_problem, Rollout,
                                  source_hash_of, Transition, unpack_transition,
                                  validate_policy_update)
from vlit_ros.core.policy import ModelPolicy
from vlit_ros.training.presets import model_config

FORWARD = ACTION_INDEX['forward']
# The fused state of the tiny test model (state query, sentence, grounding map, task numbers).
STATE_DIM = VLITModel(model_config('tiny', 'builtin')).vlm.state_dim
# The executor's input: fused state, odometry, previous action, and the progress features.
EXECUTOR_INPUT = VLITModel(model_config('tiny', 'builtin')).executor.body[0].in_features


@pytest.fixture(autouse=True, scope='module')
def few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def base_model():
    torch.manual_seed(0)
    return VLITModel(model_config('tiny', 'builtin')).eval()


@pytest.fixture
def model(base_model):
    return copy.deepcopy(base_model)


def weights(model):
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def assert_same_weights(model, before):
    after = model.state_dict()
    changed = [key for key, value in before.items() if not torch.equal(value, after[key])]
    assert not changed, f'weights changed: {changed[:5]}'


def optimizer_tensors(learner):
    return {(index, name): value.clone()
            for index, entries in learner.optimizer.state_dict()['state'].items()
            for name, value in entries.items() if torch.is_tensor(value)}


def states(model, count, seed):
    rng = np.random.default_rng(seed)
    fused = rng.normal(size=(count, model.vlm.state_dim)).astype(np.float32)
    odometry = rng.normal(scale=0.3, size=(count, 8)).astype(np.float32)
    return fused, odometry


@torch.no_grad()
def collect(model, fused, odometry, version, seed, temperature=1.0, first_stamp=0.0,
            episode_length=1):
    """Sample the model's own actions: on-policy transitions, 0.1 s apart."""
    generator = torch.Generator().manual_seed(seed)
    output = model.executor(torch.from_numpy(fused), torch.from_numpy(odometry),
                            torch.zeros(len(fused), dtype=torch.long))[0]
    log_probs = torch.log_softmax(output.logits / temperature, -1)
    actions = torch.multinomial(log_probs.exp(), 1, generator=generator).squeeze(1)
    return [Transition(fused[i], odometry[i], 0, int(actions[i]), float(log_probs[i, actions[i]]),
                       float(output.value[i]), version, first_stamp + 0.1 * i,
                       i // episode_length, temperature)
            for i in range(len(fused))]


def rollout_of(transitions, reward_of, gamma=0.99, lam=0.95):
    """One-step episodes, each rewarded by `reward_of(action)`, through the buffer."""
    buffer = ExperienceBuffer(len(transitions[0].fused))
    for transition in transitions:
        buffer.add_transition(transition)
        buffer.add_reward(transition.stamp + 0.05, reward_of(transition.action))
        buffer.end_episode(transition.stamp + 0.06)
    return buffer.take(gamma, lam)


def forward_probability(model, fused, odometry):
    with torch.no_grad():
        logits = model.executor(torch.from_numpy(fused), torch.from_numpy(odometry),
                                torch.zeros(len(fused), dtype=torch.long))[0].logits
    return float(torch.softmax(logits, -1)[:, FORWARD].mean())


def learner_for(model, **settings):
    settings.setdefault('reference_return', 0.0)
    settings.setdefault('value_warmup_updates', 0)
    return OnlineLearner(model, LearnerConfig(**settings), source_hash='ab' * 32)


def one_transition(model, **changes):
    fused, odometry = states(model, 1, 0)
    values = {'fused': fused[0], 'odometry': odometry[0], 'prev_action': 0,
              'action': FORWARD, 'log_prob': -1.2, 'value': 0.4, 'policy_version': 'abc+3',
              'stamp': 1712.3456789, 'episode': 7, 'temperature': 0.8}
    values.update(changes)
    return Transition(**values)


# -- experience layout ------------------------------------------------------------------

def test_pack_unpack_round_trip_is_exact(model):
    image = np.random.default_rng(1).integers(0, 256, (96, 128, 3), np.uint8)
    for transition in (one_transition(model),
                       one_transition(model, instruction='go to the red cube', image=image)):
        header, values = pack_transition(transition)
        assert header['layout'] == EXPERIENCE_LAYOUT and len(values) == 8 + STATE_DIM
        for back in (unpack_transition(json.dumps(header), values, state_dim=STATE_DIM),
                     decode_transition(encode_transition(transition))):
            assert np.array_equal(back.fused, transition.fused)
            assert np.array_equal(back.odometry, transition.odometry)
            assert back.stamp == transition.stamp  # not rounded through float32
            assert (back.action, back.prev_action, back.episode, back.policy_version,
                    back.log_prob, back.value, back.temperature, back.instruction) == \
                (transition.action, transition.prev_action, transition.episode,
                 transition.policy_version, transition.log_prob, transition.value,
                 transition.temperature, transition.instruction)
            assert (back.image is None) == (transition.image is None)
            if back.image is not None:
                assert np.array_equal(back.image, image)


def _corrupt(header, values, change):
    header = dict(header)
    values = list(values)
    change(header, values)
    return header, values


@pytest.mark.parametrize('change, message', [
    (lambda h, v: h.update(layout='vlit_ros/experience/2'), 'layout'),
    (lambda h, v: h.pop('log_prob'), 'lacks log_prob'),
    (lambda h, v: v.pop(), f'carries {8 + STATE_DIM - 1} values'),
    (lambda h, v: v.__setitem__(3, float('nan')), 'NaN'),
    (lambda h, v: v.__setitem__(20, 1e39), 'float32'),
    (lambda h, v: h.update(value=float('inf')), 'value must be a finite number'),
    (lambda h, v: h.update(action=NUM_ACTIONS), 'not an action index'),
    (lambda h, v: h.update(episode=1.5), 'episode must be an integer'),
    (lambda h, v: h.update(log_prob=0.5), 'not a log-probability'),
    (lambda h, v: h.update(temperature=0.0), 'temperature must be positive'),
    (lambda h, v: h.update(odometry_dim=5), 'odometry_dim 5'),
    (lambda h, v: (h.update(state_dim=STATE_DIM - 4), v.__delitem__(slice(0, 4))),
     f'state_dim {STATE_DIM - 4}'),
    (lambda h, v: h.update(image_shape=[96, 128, 3], image='AAAA'), 'image has 3 bytes'),
    (lambda h, v: h.update(image_shape=[96, 128], image=''), 'image_shape'),
])
def test_bad_experience_is_rejected_with_the_reason(model, change, message):
    header, values = _corrupt(*pack_transition(one_transition(model)), change)
    with pytest.raises(ValueError, match=message):
        unpack_transition(header, values, state_dim=STATE_DIM)


def test_garbled_experience_messages_are_rejected(model):
    with pytest.raises(ValueError, match='not JSON'):
        decode_transition('{"layout": ')
    with pytest.raises(ValueError, match='"values"'):
        decode_transition('{"layout": "vlit_ros/experience/1"}')
    with pytest.raises(ValueError, match='not numbers'):
        header, values = pack_transition(one_transition(model))
        unpack_transition(header, ['x'] * len(values))


# -- rewards ----------------------------------------------------------------------------

def test_rewards_go_to_the_last_transition_within_the_window():
    stamps = [0.0, 0.1, 0.2]
    totals, unmatched = match_rewards(stamps, [(0.15, 1.0), (0.2, 2.0), (0.69, 4.0),
                                               (0.71, 8.0), (-0.1, 16.0), (0.0, 32.0)],
                                      window_s=0.5)
    assert totals.tolist() == [32.0, 1.0, 6.0]
    assert unmatched == 2  # 0.71 s is 0.51 s after the last transition; -0.1 s precedes all
    totals, unmatched = match_rewards(stamps, [(0.69, 4.0)], window_s=0.25)
    assert totals.tolist() == [0.0, 0.0, 0.0] and unmatched == 1
    with pytest.raises(ValueError, match='non-decreasing'):
        match_rewards([0.2, 0.1], [])


def test_non_finite_and_absurd_rewards_are_dropped_and_counted(model):
    assert reward_problem(float('nan')) == 'non_finite'
    assert reward_problem(float('-inf')) == 'non_finite'
    assert reward_problem(101.0) == 'absurd' and reward_problem(-3.0) is None
    buffer = ExperienceBuffer(STATE_DIM, reward_limit=100.0)
    assert not buffer.add_reward(1.0, float('nan'))
    assert not buffer.add_reward(1.0, 1e6)
    assert not buffer.add_reward(float('nan'), 1.0)
    assert buffer.add_reward(1.0, -100.0)
    assert buffer.counts['dropped_non_finite'] == 2 and buffer.counts['dropped_absurd'] == 1
    assert buffer.counts['rewards'] == 1


def test_buffer_cuts_trajectories_at_episode_ends_and_instruction_changes(model):
    fused, odometry = states(model, 7, 2)
    transitions = collect(model, fused, odometry, 'v0', seed=0, episode_length=3)
    # episodes 0 (3 steps), 1 (3 steps) and 2 (1 step, still running)
    buffer = ExperienceBuffer(STATE_DIM)
    for transition in reversed(transitions):  # arrival order does not matter
        buffer.add_transition(transition)
    buffer.add_reward(0.05, 1.0)
    buffer.add_reward(0.25, 2.0)     # after the last step of episode 0
    buffer.add_reward(0.45, 3.0)
    buffer.end_episode(0.26, success=True)
    assert buffer.finished() == 6   # episode 1 ends where episode 2 begins
    rollout = buffer.take(gamma=0.9, lam=1.0)
    assert len(rollout) == 6 and len(buffer) == 1
    assert rollout.reward.tolist() == [1.0, 0.0, 2.0, 0.0, 3.0, 0.0]
    assert [(e.total_reward, e.steps, e.success) for e in rollout.episodes] == \
        [(3.0, 3, True), (3.0, 3, None)]
    # GAE with lambda 1 is the discounted return minus the value; terminal at each end
    values = [t.value for t in transitions]
    expected_return = [1.0 + 0.9 ** 2 * 2.0, 0.9 * 2.0, 2.0, 0.9 * 3.0, 3.0, 0.0]
    assert rollout.returns.numpy() == pytest.approx(expected_return, abs=1e-5)
    assert rollout.advantage.numpy() == pytest.approx(
        np.array(expected_return) - np.array(values[:6]), abs=1e-5)
    # A reward for an already-trained transition is late, not given to another one.
    buffer.add_reward(0.55, 5.0)
    buffer.add_reward(0.65, 2.0)
    later = collect(model, fused[:1], odometry[:1], 'v0', seed=1, first_stamp=0.7)[0]
    buffer.add_transition(replace(later, episode=2))
    assert not buffer.add_transition(replace(later, stamp=0.1))
    assert buffer.counts['late_transitions'] == 1
    buffer.end_episode(0.8)
    rollout = buffer.take(gamma=0.9, lam=1.0)
    assert len(rollout) == 2 and rollout.reward.tolist() == [2.0, 0.0]
    assert buffer.counts['late_rewards'] == 1 and buffer.counts['unmatched_rewards'] == 0


def test_decisions_after_an_episode_end_are_dropped(model):
    fused, odometry = states(model, 5, 3)
    transitions = collect(model, fused, odometry, 'v0', seed=0, episode_length=4)
    # episode 0: 0.0 .. 0.3 s, ended at 0.15 s; episode 1 begins at 0.4 s
    buffer = ExperienceBuffer(STATE_DIM)
    for transition in transitions:
        buffer.add_transition(transition)
        buffer.add_reward(transition.stamp + 0.01, 1.0)
    buffer.end_episode(0.15, success=False)
    rollout = buffer.take(0.9, 1.0)
    assert len(rollout) == 2 and buffer.counts['after_end'] == 2
    assert [(e.steps, e.total_reward, e.success) for e in rollout.episodes] == \
        [(2, 2.0, False)]
    assert not buffer.add_transition(replace(transitions[0], stamp=0.45))
    assert buffer.counts['after_end'] == 3 and len(buffer) == 1


def test_forced_take_bootstraps_an_unfinished_trajectory(model):
    fused, odometry = states(model, 4, 3)
    transitions = collect(model, fused, odometry, 'v0', seed=0, episode_length=4)
    buffer = ExperienceBuffer(STATE_DIM)
    for transition in transitions:
        buffer.add_transition(transition)
    assert buffer.take(0.9, 1.0) is None
    rollout = buffer.take(0.9, 1.0, force=True)
    assert len(rollout) == 3 and len(buffer) == 1 and rollout.episodes == []
    assert float(rollout.returns[2]) == pytest.approx(0.9 * transitions[3].value, abs=1e-6)


# -- PPO --------------------------------------------------------------------------------

def test_ppo_raises_the_probability_of_the_rewarded_action(model):
    fused, odometry = states(model, 256, 4)
    before = forward_probability(model, fused, odometry)
    learner = learner_for(model, learning_rate=3e-3, kl_coef=0.0, target_kl=0.05)
    for iteration in range(8):
        transitions = collect(model, fused, odometry, learner.version, seed=iteration)
        report = learner.update(rollout_of(transitions, lambda a: float(a == FORWARD)))
        assert report.status == 'updated', report
        assert report.steps > 0 and math.isfinite(report.approx_kl)
    after = forward_probability(model, fused, odometry)
    assert before < 0.3 and after > before + 0.3, (before, after)
    assert learner.version == 'abababababab+8'


def test_the_kl_penalty_holds_the_policy_near_the_reference(model, base_model):
    fused, odometry = states(model, 256, 4)
    shifts = {}
    for kl_coef in (0.0, 5.0):
        candidate = copy.deepcopy(base_model)
        learner = learner_for(candidate, learning_rate=3e-3, kl_coef=kl_coef, target_kl=1.0)
        for iteration in range(4):
            transitions = collect(candidate, fused, odometry, learner.version, seed=iteration)
            learner.update(rollout_of(transitions, lambda a: float(a == FORWARD)))
        shifts[kl_coef] = forward_probability(candidate, fused, odometry)
    assert shifts[5.0] < shifts[0.0] - 0.05, shifts


def test_the_kl_budget_stops_an_update_on_stale_data(model):
    fused, odometry = states(model, 64, 5)
    transitions = collect(model, fused, odometry, 'old', seed=0)
    # The data was collected by a very different policy: log-probabilities far from now.
    stale = [replace(t, log_prob=t.log_prob - 2.0) for t in transitions]
    learner = learner_for(model, target_kl=0.01)
    before = weights(model)
    report = learner.update(rollout_of(stale, lambda a: 1.0))
    assert report.status == 'kl_budget' and report.steps == 0 and report.approx_kl > 0.01
    assert_same_weights(model, before)
    assert learner.version == 'abababababab'


def test_a_nan_reward_changes_no_weight(base_model):
    fused, odometry = states(base_model, 32, 6)
    results = []
    for poisoned in (False, True):
        model = copy.deepcopy(base_model)
        transitions = collect(model, fused, odometry, 'abababababab', seed=0)
        buffer = ExperienceBuffer(STATE_DIM)
        for transition in transitions:
            buffer.add_transition(transition)
            buffer.add_reward(transition.stamp + 0.01, float(transition.action == FORWARD))
            if poisoned:
                buffer.add_reward(transition.stamp + 0.02, float('nan'))
                buffer.add_reward(transition.stamp + 0.03, float('inf'))
            buffer.end_episode(transition.stamp + 0.05)
        learner = learner_for(model, target_kl=1.0)
        assert learner.update(buffer.take(0.99, 0.95)).status == 'updated'
        results.append(weights(model))
        assert buffer.counts['dropped_non_finite'] == (64 if poisoned else 0)
    assert all(torch.equal(results[0][key], results[1][key]) for key in results[0])


def test_a_nan_reward_that_reaches_a_rollout_leaves_the_weights_bit_identical(model):
    fused, odometry = states(model, 32, 6)
    rollout = rollout_of(collect(model, fused, odometry, 'v', seed=0), lambda a: 1.0)
    rollout.advantage[5] = float('nan')
    learner = learner_for(model)
    before = weights(model)
    report = learner.update(rollout)
    assert report.status == 'non_finite' and 'loss' in report.detail
    assert_same_weights(model, before)
    assert learner.version == 'abababababab' and learner.counts['non_finite'] == 1


def test_a_non_finite_gradient_midway_restores_weights_and_optimizer(model):
    fused, odometry = states(model, 128, 7)
    learner = learner_for(model, minibatch_size=16, target_kl=1.0)
    # A first, healthy update gives the optimizer some state to protect.
    learner.update(rollout_of(collect(model, fused, odometry, learner.version, seed=0),
                              lambda a: float(a == FORWARD)))
    before, moments = weights(model), optimizer_tensors(learner)
    calls = []

    def poison(gradient):
        calls.append(1)
        return gradient * float('nan') if len(calls) > 3 else gradient

    handle = model.executor.policy_head.weight.register_hook(poison)
    try:
        report = learner.update(rollout_of(collect(model, fused, odometry, learner.version,
                                                   seed=1), lambda a: float(a == FORWARD)))
    finally:
        handle.remove()
    assert len(calls) == 4  # three steps were taken before the fourth went wrong
    assert report.status == 'non_finite' and 'gradient' in report.detail
    assert_same_weights(model, before)
    after = optimizer_tensors(learner)
    assert after.keys() == moments.keys()
    assert all(torch.equal(after[key], moments[key]) for key in moments)
    assert learner.version == 'abababababab+1'


def test_pausing_stops_updates(model):
    fused, odometry = states(model, 32, 8)
    learner = learner_for(model, target_kl=1.0)
    rollout = rollout_of(collect(model, fused, odometry, learner.version, seed=0),
                         lambda a: float(a == FORWARD))
    before = weights(model)
    learner.set_paused('estop', True)
    learner.set_paused('request', True)
    assert learner.update(rollout).status == 'paused'
    learner.set_paused('estop', False)
    report = learner.update(rollout)
    assert report.status == 'paused' and 'request' in report.detail
    assert_same_weights(model, before)
    learner.set_paused('request', False)
    assert learner.update(rollout).status == 'updated'
    assert not all(torch.equal(value, model.state_dict()[key])
                   for key, value in before.items())


def test_updates_wait_until_the_reference_average_is_measured(model):
    fused, odometry = states(model, 1, 9)
    learner = OnlineLearner(model, LearnerConfig(rollback_window=3, target_kl=1.0,
                                                 value_warmup_updates=0),
                            source_hash='ab' * 32)
    for round_ in range(3):
        rollout = rollout_of(collect(model, fused, odometry, learner.version, seed=round_),
                             lambda a: 1.0)
        report = learner.update(rollout)
        assert report.status == ('updated' if round_ == 2 else 'measuring_reference'), report
    assert learner.reference_return == pytest.approx(1.0)


def test_value_warm_up_and_the_critic_leave_the_policy_alone(model):
    fused, odometry = states(model, 64, 13)
    learner = learner_for(model, value_warmup_updates=2, target_kl=1.0, learning_rate=1e-2)
    before = weights(model)
    for round_ in range(2):
        report = learner.update(rollout_of(collect(model, fused, odometry, learner.version,
                                                   seed=round_),
                                           lambda a: 3.0 * float(a == FORWARD)))
        assert report.status == 'updated' and report.steps > 0, report
    # Warm-up fits the value head alone: the value loss reaches neither the body nor the
    # policy head, so the policy is bit-identical.
    changed = {key for key, value in before.items()
               if not torch.equal(value, model.state_dict()[key])}
    assert changed == {'executor.value_head.weight', 'executor.value_head.bias'}
    learner.update(rollout_of(collect(model, fused, odometry, learner.version, seed=2),
                              lambda a: 3.0 * float(a == FORWARD)))
    assert not torch.equal(before['executor.policy_head.weight'],
                           model.state_dict()['executor.policy_head.weight'])
    with pytest.raises(ValueError, match='value_warmup_updates'):
        LearnerConfig(value_warmup_updates=-1)


# -- rollback ---------------------------------------------------------------------------

def test_rollback_restores_the_previous_weights_bit_exactly(model):
    fused, odometry = states(model, 64, 10)
    learner = learner_for(model, target_kl=1.0, learning_rate=1e-2)
    initial = weights(model)
    learner.update(rollout_of(collect(model, fused, odometry, learner.version, seed=0),
                              lambda a: float(a == FORWARD)))
    assert not torch.equal(model.state_dict()['executor.policy_head.weight'],
                           initial['executor.policy_head.weight'])
    assert learner.rollback() == 'abababababab'
    assert_same_weights(model, initial)
    with pytest.raises(ValueError, match='nothing to roll back to'):
        learner.rollback()


def test_a_falling_moving_average_rolls_back_to_the_last_good_weights(model, tmp_path):
    fused, odometry = states(model, 16, 11)
    learner = OnlineLearner(model, LearnerConfig(rollback_window=2, rollback_margin=0.5,
                                                 reference_return=1.0, target_kl=1.0,
                                                 learning_rate=1e-2, value_warmup_updates=0),
                            source_hash='ab' * 32, directory=tmp_path)

    def train():
        report = learner.update(rollout_of(collect(model, fused, odometry, learner.version,
                                                   seed=0), lambda a: 1.0))
        assert report.status == 'updated', report

    def episodes(total, version):
        return [EpisodeSummary(total, version, 10, None)] * 2

    train()
    good_version, good = learner.version, weights(model)
    # Two episodes of these weights as good as the reference: they become the last good.
    assert learner.record_episodes(episodes(0.9, good_version)) is None
    assert learner.good_versions == ['abababababab', good_version]
    on_disk = safetensors.torch.load_file(tmp_path / 'training_state' /
                                          'last_good.safetensors')
    assert all(torch.equal(on_disk[key], good[key]) for key in on_disk)
    train()
    bad_version = learner.version
    assert bad_version != good_version
    assert learner.record_episodes(episodes(0.2, bad_version)) == 'rolled_back'
    assert learner.version == good_version and learner.counts['rollbacks'] == 1
    assert_same_weights(model, good)
    # Late episodes of the abandoned weights do not count against the restored ones.
    assert learner.record_episodes(episodes(-5.0, bad_version)) is None


def test_the_guard_allows_for_the_spread_of_episode_rewards(model):
    fused, odometry = states(model, 16, 11)

    def learner_with(sigmas):
        learner = OnlineLearner(model, LearnerConfig(rollback_window=20, rollback_margin=1.5,
                                                     rollback_sigmas=sigmas, target_kl=1.0,
                                                     value_warmup_updates=0),
                                source_hash='ab' * 32)
        # The reference policy: goto-like episodes, a timeout (-4) or a success (+5).
        reference = [EpisodeSummary(r, learner.version, 10, None) for r in [-4.0, 5.0] * 10]
        assert learner.record_episodes(reference) is None
        assert learner.reference_return == pytest.approx(0.5)
        report = learner.update(rollout_of(collect(model, fused, odometry, learner.version,
                                                   seed=0), lambda a: 1.0))
        assert report.status == 'updated', report
        return learner

    # As good, but a few more timeouts by chance: 1.8 lower, within the noise.
    unlucky = [-4.0] * 14 + [5.0] * 6
    learner = learner_with(3.0)
    version = learner.version
    assert learner.record_episodes([EpisodeSummary(r, version, 10, None)
                                    for r in unlucky]) is None
    assert learner.rollback_threshold() < -3.0
    # The fixed margin alone mistakes that for a worse policy.
    learner = learner_with(0.0)
    assert learner.record_episodes([EpisodeSummary(r, learner.version, 10, None)
                                    for r in unlucky]) == 'rolled_back'
    # A collapse (every episode a timeout) is beyond the noise.
    learner = learner_with(3.0)
    assert learner.record_episodes([EpisodeSummary(-4.0, learner.version, 10, None)] * 20) \
        == 'rolled_back'
    assert learner.version == 'abababababab'


# -- policy updates ---------------------------------------------------------------------

def test_a_policy_update_round_trips_and_applies(model, base_model):
    fused, odometry = states(model, 64, 12)
    sample = collect(model, fused, odometry, 'v', seed=0)
    learner = learner_for(model, target_kl=1.0, learning_rate=1e-3)
    learner.update(rollout_of(sample, lambda a: float(a == FORWARD)))
    payload = learner.policy_payload()
    header, tensors = read_policy_payload(payload)
    assert header['policy_version'] == learner.version and \
        header['source_checkpoint'] == 'ab' * 32
    assert set(header['parameters']) == {k for k in model.state_dict()
                                         if k.startswith('executor.')}
    follower = copy.deepcopy(base_model)
    update = validate_policy_update(follower, payload, sample, max_kl=0.5,
                                    expected_source='ab' * 32)
    assert 0.0 < update.kl < 0.5 and update.policy_version == learner.version
    apply_policy_update(follower, update)
    for key, value in model.state_dict().items():
        assert torch.equal(follower.state_dict()[key], value), key


def _flip_a_tensor_byte(payload):
    data = bytearray(payload)
    data[-3] ^= 0x40
    return bytes(data)


def _relabel(payload, change):
    tensors = safetensors.torch.load(payload)
    length = int.from_bytes(payload[:8], 'little')
    metadata = json.loads(payload[8:8 + length])['__metadata__']
    header = json.loads(metadata['header'])
    change(metadata, header, tensors)
    metadata['header'] = json.dumps(header)
    return safetensors.torch.save(tensors, metadata=metadata)


def _other_model_payload():
    config = model_config('tiny', 'builtin')
    config.executor.hidden = 16
    return encode_policy(VLITModel(config), 'other')


@pytest.mark.parametrize('make, message', [
    (lambda p: p[:len(p) // 2], 'not a readable safetensors'),
    (lambda p: b'\x00' * 64, 'not a readable safetensors'),
    (_flip_a_tensor_byte, 'SHA-256'),
    (lambda p: _relabel(p, lambda m, h, t: m.update(layout='vlit_ros/policy/2')), 'layout'),
    (lambda p: _relabel(p, lambda m, h, t: h.update(layout_version=2)), 'layout version 2'),
    (lambda p: _relabel(p, lambda m, h, t: h.update(policy_version='')), 'policy_version'),
    (lambda p: _relabel(p, lambda m, h, t: t.pop('executor.value_head.bias')),
     'disagree'),
    (lambda p: _relabel(p, lambda m, h, t: h['parameters']['executor.value_head.bias']
                        .update(dtype='float16')), 'describes executor.value_head.bias'),
    (lambda p: _other_model_payload(),
     f'executor.body.0.weight is float32 \\[16, {EXECUTOR_INPUT}\\]'),
])
def test_corrupt_or_mismatched_policy_payloads_are_rejected(model, make, message):
    fused, odometry = states(model, 8, 13)
    sample = collect(model, fused, odometry, 'v', seed=0)
    payload = make(encode_policy(model, 'v1', 'ab' * 32))
    before = weights(model)
    with pytest.raises(ValueError, match=message):
        validate_policy_update(model, payload, sample, max_kl=1.0)
    assert_same_weights(model, before)


def test_policy_updates_with_nan_too_far_or_from_elsewhere_are_rejected(model, base_model):
    fused, odometry = states(model, 8, 14)
    sample = collect(model, fused, odometry, 'v', seed=0)
    poisoned = copy.deepcopy(base_model)
    with torch.no_grad():
        poisoned.executor.policy_head.bias[2] = float('nan')
    with pytest.raises(ValueError, match='NaN or infinite'):
        validate_policy_update(model, encode_policy(poisoned, 'v'), sample, 1.0)
    far = copy.deepcopy(base_model)
    with torch.no_grad():
        far.executor.policy_head.bias[FORWARD] += 10.0
    with pytest.raises(ValueError, match='too far: mean KL'):
        validate_policy_update(model, encode_policy(far, 'v'), sample, 0.1)
    payload = encode_policy(base_model, 'v', source_checkpoint='cd' * 32)
    with pytest.raises(ValueError, match='trained from checkpoint'):
        validate_policy_update(model, payload, sample, 1.0, expected_source='ab' * 32)
    with pytest.raises(ValueError, match='no recent states'):
        validate_policy_update(model, payload, [], 1.0)
    with pytest.raises(ValueError, match='needs recent states with their image'):
        validate_policy_update(model, encode_policy(base_model, 'v', include_fusion=True),
                               sample, 1.0)


# -- checkpoints ------------------------------------------------------------------------

def test_save_and_restore_resume_the_same_learning(model, tmp_path):
    fused, odometry = states(model, 64, 15)
    learner = learner_for(model, target_kl=1.0)
    learner.update(rollout_of(collect(model, fused, odometry, learner.version, seed=0),
                              lambda a: float(a == FORWARD)))
    learner.save(tmp_path / 'online')
    assert sorted(p.name for p in (tmp_path / 'online' / 'training_state').iterdir()) == \
        ['online.json', 'online.safetensors']
    restored = OnlineLearner.restore(tmp_path / 'online', load_checkpoint(tmp_path / 'online'))
    assert (restored.version, restored.updates, restored.good_versions) == \
        (learner.version, learner.updates, learner.good_versions)
    assert optimizer_tensors(restored).keys() == optimizer_tensors(learner).keys()
    rollout = rollout_of(collect(model, fused, odometry, learner.version, seed=1),
                         lambda a: float(a == FORWARD))
    learner.update(rollout)
    restored.update(rollout)
    for key, value in learner.model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[key], value), key
    # A follower started from the learner's checkpoint accepts that learner's updates.
    assert source_hash_of(tmp_path / 'online') == 'ab' * 32
    tensors_file = tmp_path / 'online' / 'training_state' / 'online.safetensors'
    tensors_file.write_bytes(tensors_file.read_bytes()[:-10])
    with pytest.raises(ValueError, match='SHA-256'):
        OnlineLearner.restore(tmp_path / 'online', load_checkpoint(tmp_path / 'online'))


# -- the fusion layers and the follower's tap ------------------------------------------

def test_the_tap_records_what_the_executor_consumed_and_fusion_can_train(model):
    policy = ModelPolicy(model)
    tap = ExecutorTap(policy.model)
    rng = np.random.default_rng(16)
    transitions = []
    for step in range(12):
        instruction = 'go to the red cube' if step % 2 else 'turn left'
        policy.reset(instruction)
        image = rng.integers(0, 256, (96, 128, 3), np.uint8)
        name = policy.act(FollowerObservation(image, (0.1, 0.0, 0.2, 0.3, 0.0), 0.5))
        action = ACTION_INDEX[name]
        transition = tap.transition(action, 1.0, 'v', 0.1 * step, step,
                                    instruction=instruction, image=image)
        assert transition.log_prob == pytest.approx(
            math.log(policy.last_probabilities[action]), abs=1e-5)
        transitions.append(transition)
    tap.close()
    assert transitions[0].fused.shape == (STATE_DIM,) and transitions[0].prev_action == 0
    learner = learner_for(model, train_fusion=True, target_kl=1.0, learning_rate=1e-2)
    fusion_before = model.vlm.fusion.norm.weight.detach().clone()
    with pytest.raises(ValueError, match='image and instruction'):
        learner.update(Rollout.from_trajectories(
            [([replace(t, image=None) for t in transitions],
              np.ones(12), 0.0)], 0.99, 0.95))
    rollout = Rollout.from_trajectories([(transitions, np.arange(12.0), 0.0)], 0.99, 0.95)
    assert learner.update(rollout).status == 'updated'
    assert not torch.equal(model.vlm.fusion.norm.weight, fusion_before)
    payload = learner.policy_payload()
    assert any(k.startswith('vlm.fusion.') for k in read_policy_payload(payload)[1])
    update = validate_policy_update(copy.deepcopy(model), payload, transitions, max_kl=1.0)
    assert update.includes_fusion and update.kl == pytest.approx(0.0, abs=1e-6)


def test_fusion_learning_recomputes_the_zoomed_map_the_follower_read():
    torch.manual_seed(3)
    config = model_config('tiny', 'builtin')
    model = VLITModel(replace(config, fusion=replace(config.fusion, zoom_map=True))).eval()
    policy = ModelPolicy(model)
    tap = ExecutorTap(policy.model)
    rng = np.random.default_rng(17)
    transitions = []
    for step in range(8):
        policy.reset('go to the red cube')
        image = rng.integers(0, 256, (96, 128, 3), np.uint8)
        action = ACTION_INDEX[policy.act(FollowerObservation(image, (0.0,) * 5, 0.5))]
        transitions.append(tap.transition(action, 1.0, 'v', 0.1 * step, step,
                                          instruction='go to the red cube', image=image))
    tap.close()
    # The learner rebuilds, from each image and instruction, the fused state the follower's
    # executor consumed: with the zoomed map merged in, as the model is configured.
    images = torch.from_numpy(np.stack([t.image for t in transitions]))
    inputs = _fusion_inputs(model, images, [t.instruction for t in transitions])
    assert inputs[2] is not None
    with torch.no_grad():
        rebuilt = model.vlm.fusion(*inputs)
        unzoomed = model.vlm.fusion(*inputs[:2])
    recorded = torch.from_numpy(np.stack([t.fused for t in transitions]))
    torch.testing.assert_close(rebuilt, recorded, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unzoomed, recorded, atol=1e-5, rtol=1e-5)
