"""ModelPolicy (the plug-in of DESIGN.md §5), the frame runner, and `vlit-ros bench`."""

import json
import math

import numpy as np
import pytest
from tiny_models import tiny_config
import torch

from vlit_ros import cli
from vlit_ros.core.actions import ACTIONS
from vlit_ros.core.follower_logic import action_probabilities, FollowerObservation
from vlit_ros.core.model import (CheckpointError, FrameRunner, PretrainingModel,
                                 save_checkpoint, VLITModel, weights_to_bytes)
from vlit_ros.core.policy import ModelPolicy
from vlit_ros.policies import load_policy

NO_CUDA = 'needs a CUDA device (bf16 autocast, torch.compile, CUDA graphs); none here'


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    # Batch-1 inference is fastest on one thread; a second one only waits on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def observation(seed=0, odom=(0.0, 0.0, 0.0, 0.0, 0.0), t=0.0):
    image = np.random.default_rng(seed).integers(0, 256, (96, 128, 3), np.uint8)
    return FollowerObservation(image, odom, t)


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return VLITModel(tiny_config())


@pytest.fixture(scope='module')
def checkpoint(model, tmp_path_factory):
    return save_checkpoint(model, tmp_path_factory.mktemp('policy'))


def test_act_returns_one_of_the_actions_on_a_random_image(model):
    policy = ModelPolicy(model)
    policy.reset('go to the red cube')
    action = policy.act(observation())
    assert action in ACTIONS
    probabilities = policy.last_probabilities
    assert len(probabilities) == len(ACTIONS)
    assert math.isclose(sum(probabilities), 1.0, rel_tol=1e-6)
    assert action == ACTIONS[int(np.argmax(probabilities))]
    assert policy.action_probabilities() == pytest.approx(dict(zip(ACTIONS, probabilities)))
    # What the follower node publishes on vlit/action.
    assert set(action_probabilities(policy)) == set(ACTIONS)
    assert policy.last_values.shape == (1,)


def test_from_checkpoint_and_the_plugin_loader(checkpoint):
    policy = load_policy('model', str(checkpoint))
    assert isinstance(policy, ModelPolicy)
    assert len(policy.version) == 12
    policy.reset('turn around')
    assert policy.act(observation(1, (0.1, 0.0, 0.3, 0.2, 0.5), 0.4)) in ACTIONS
    with pytest.raises(ValueError, match='needs a checkpoint directory'):
        ModelPolicy.from_checkpoint(None)


def test_a_pretraining_checkpoint_is_not_a_policy(model, tmp_path):
    directory = save_checkpoint(PretrainingModel(model.config, vlm=model.vlm), tmp_path)
    with pytest.raises(CheckpointError, match='fine-tune it'):
        ModelPolicy.from_checkpoint(directory)


@pytest.mark.parametrize('instruction', ['', '   ', '\t\n'])
def test_blank_instructions_are_refused(model, instruction):
    policy = ModelPolicy(model)
    with pytest.raises(ValueError, match='empty or only whitespace'):
        policy.reset(instruction)


def test_act_before_reset_and_mismatched_batches_are_refused(model):
    policy = ModelPolicy(model)
    with pytest.raises(RuntimeError, match='reset'):
        policy.act(observation())
    policy.reset_batch(['stop', 'turn left'])
    with pytest.raises(ValueError, match='use act_batch'):
        policy.act(observation())
    with pytest.raises(ValueError, match='3 observations for 2 robots'):
        policy.act_batch([observation()] * 3)
    with pytest.raises(ValueError, match='finite odom'):
        policy.act_batch([observation(), observation(odom=(0, 0, math.nan, 0, 0))])


def test_act_batch_matches_acting_robot_by_robot(model):
    instructions = ['go to the red cube', 'spin around', 'back up a meter']
    observations = [observation(i, (0.2 * i, 0.0, 0.1 * i, 0.1, 0.0), 0.5 * i)
                    for i in range(3)]
    together = ModelPolicy(model)
    together.reset_batch(instructions)
    actions = together.act_batch(observations)
    for robot, (text, obs) in enumerate(zip(instructions, observations)):
        alone = ModelPolicy(model)
        alone.reset(text)
        assert alone.act(obs) == actions[robot]
        assert np.allclose(alone.last_probabilities,
                           together.last_batch_probabilities[robot], atol=1e-5)


def test_previous_action_and_unwrapped_yaw_are_tracked(model):
    policy = ModelPolicy(model)
    policy.reset('turn around twice')
    first = policy.act(observation(odom=(0.0, 0.0, 3.0, 0.0, 0.8)))
    policy.act(observation(odom=(0.0, 0.0, -3.0, 0.0, 0.8)))
    robot = policy._robots[0]
    # +3.0 rad, then across the +-pi seam to -3.0: a further 2 pi - 6 rad to the left.
    assert robot.yaw_total == pytest.approx(3.0 + (2 * math.pi - 6.0))
    assert first in ACTIONS
    policy.note_taken_action('backward')
    assert robot.prev_action == ACTIONS.index('backward')
    policy.reset('stop')
    assert policy._robots[0].prev_action == ACTIONS.index('stop')
    assert policy._robots[0].yaw_total == 0.0


def test_sampling_is_reproducible_under_a_seed(model):
    runs = []
    for _ in range(2):
        policy = ModelPolicy(model, greedy=False, temperature=2.0, seed=5)
        policy.reset('go to the blue sphere')
        runs.append([policy.act(observation(i)) for i in range(10)])
    assert runs[0] == runs[1]
    with pytest.raises(ValueError, match='temperature'):
        ModelPolicy(model, temperature=-1.0)


def test_eval_samples_with_a_temperature_reproducibly_and_refuses_it_elsewhere(
        checkpoint, tmp_path, capsys):
    def run(*extra):
        out = tmp_path / f'eval_{len(list(tmp_path.iterdir()))}.json'
        assert cli.main(['eval', '--checkpoint', str(checkpoint), '--families', 'turn',
                         '--episodes', '2', '--seed', '3', '--quiet', '--json', str(out)]
                        + list(extra)) == 0
        summary = json.loads(out.read_text())
        return summary, [e['steps'] for e in summary['episodes']]

    greedy, greedy_steps = run()
    assert greedy['temperature'] is None and greedy['sample_seed'] is None
    sampled, steps = run('--temperature', '3', '--sample-seed', '7')
    assert sampled['temperature'] == 3.0 and sampled['sample_seed'] == 7
    assert run('--temperature', '3', '--sample-seed', '7')[1] == steps
    assert 'temperature=3 sample-seed=7' in capsys.readouterr().out
    policy = load_policy('model', str(checkpoint), temperature=3.0, sample_seed=7)
    assert not policy.greedy and policy.temperature == 3.0
    for bad in (['--temperature', '0'], ['--policy', 'expert', '--temperature', '1']):
        assert cli.main(['eval', '--checkpoint', str(checkpoint), '--episodes', '1',
                         '--quiet'] + bad) == 2
        assert 'temperature' in capsys.readouterr().err


def test_update_weights_validates_and_reencodes(model):
    torch.manual_seed(3)
    trained = VLITModel(tiny_config('builtin')).eval()
    policy = ModelPolicy(VLITModel(tiny_config('builtin')))
    policy.reset('go to the red cube')
    obs = observation()
    policy.act(obs)
    policy.update_weights(weights_to_bytes(trained), 'step-100')
    assert policy.version == 'step-100'
    # Same previous action as the reference's first frame: only the weights differ.
    policy.note_taken_action('stop')
    policy.act(obs)
    reference = ModelPolicy(trained)
    reference.reset('go to the red cube')
    reference.act(obs)
    assert policy.last_probabilities == pytest.approx(reference.last_probabilities, abs=1e-6)
    with pytest.raises(CheckpointError):
        policy.update_weights(weights_to_bytes(model), 'wrong model')
    assert policy.version == 'step-100'


def test_cuda_only_paths_are_refused_on_cpu(model):
    with pytest.raises(ValueError, match='CUDA paths'):
        FrameRunner(model, compile_model=True)
    with pytest.raises(ValueError, match='CUDA paths'):
        FrameRunner(model, cuda_graph=True)
    with pytest.raises(ValueError, match='bf16 autocast is used on CUDA'):
        FrameRunner(model, precision='bf16')


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize('options', [{'precision': 'bf16'},
                                     {'precision': 'bf16', 'cuda_graph': True},
                                     {'precision': 'fp32', 'compile_model': True}])
def test_cuda_paths_agree_with_cpu(options):
    torch.manual_seed(0)
    config = tiny_config()
    cpu_policy = ModelPolicy(VLITModel(config))
    cuda_model = VLITModel(config)
    cuda_model.load_state_dict(cpu_policy.model.state_dict())
    cuda_policy = ModelPolicy(cuda_model, 'cuda', **options)
    observations = [observation(i, (0.1 * i, 0.0, 0.2, 0.1, 0.0), 0.3 * i) for i in range(2)]
    for policy in (cpu_policy, cuda_policy):
        policy.reset_batch(['go to the red cube', 'turn left'])
    for _ in range(3):  # a CUDA graph is captured on the first call and replayed after
        cpu_policy.act_batch(observations)
        cuda_policy.act_batch(observations)
        assert np.allclose(cpu_policy.last_batch_probabilities,
                           cuda_policy.last_batch_probabilities, atol=0.02)


def test_bench_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    rc = cli.main(['bench', '--iterations', '3', '--warmup', '1', '--batch', '4',
                   '--json', str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert [b['batch'] for b in result['batches']] == [1, 4]
    for entry in result['batches']:
        assert set(entry['stages']) == {'preprocess', 'vision', 'fusion', 'executor', 'frame'}
        for stage in entry['stages'].values():
            assert 0.0 < stage['median_ms'] <= stage['p95_ms']
    assert result['text_encoding']['median_ms'] > 0.0
    assert 0.0 < result['shipped_weights_mb'] < 25.0
    assert result['parameters']['text'] > result['shipped_parameters'] / 10
    assert 'whole per-frame model' in capsys.readouterr().out


def test_bench_refuses_cuda_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    assert cli.main(['bench', '--device', 'cuda', '--iterations', '1']) == 2
    assert 'CUDA is not available' in capsys.readouterr().err
