"""CLIP / SigLIP towers from local directories, with tiny random models saved here."""

import json

import numpy as np
import pytest
import safetensors.torch
import torch
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig,
                          CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel)

from vlit_ros.core.actions import ACTIONS
from vlit_ros.core.follower_logic import FollowerObservation
from vlit_ros.core.model import (ExecutorConfig, FusionConfig, load_checkpoint, ModelConfig,
                                 PretrainConfig, PretrainingModel, save_checkpoint,
                                 shipped_state_dict, TextConfig, VisionConfig, VLITModel)
from vlit_ros.core.model.checkpoint import WEIGHTS_FILE
from vlit_ros.core.policy import ModelPolicy

TOWER = {'image_size': 32, 'patch_size': 8, 'hidden_size': 32, 'intermediate_size': 64,
         'num_hidden_layers': 1, 'num_attention_heads': 2}


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    # Tiny tensors gain nothing from a second thread on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def byte_level_alphabet():
    """GPT-2's byte -> printable character table, which CLIP's BPE vocabulary starts from."""
    printable = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + \
        list(range(ord('®'), ord('ÿ') + 1))
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            characters.append(256 + extra)
            extra += 1
    return [chr(c) for c in characters]


@pytest.fixture(scope='module')
def towers(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp('towers')
    CLIPVisionModel(CLIPVisionConfig(**TOWER)).save_pretrained(root / 'clip_vision')
    SiglipVisionModel(SiglipVisionConfig(**TOWER)).save_pretrained(root / 'siglip_vision')
    (root / 'siglip_vision' / 'preprocessor_config.json').write_text(
        json.dumps({'image_mean': [0.5, 0.5, 0.5], 'image_std': [0.25, 0.25, 0.25]}))
    # A character-level CLIP tokenizer (no merges) keeps the vocabulary at 514 entries.
    alphabet = byte_level_alphabet()
    vocab = {token: i for i, token in enumerate(alphabet + [c + '</w>' for c in alphabet] +
                                                ['<|startoftext|>', '<|endoftext|>'])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    tokenizer.save_pretrained(root / 'clip_text')
    CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=48,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)).save_pretrained(root / 'clip_text')
    return root


def config(vision=None, text=None):
    return ModelConfig(vision=vision or VisionConfig(dim=32, depth=1, heads=2),
                       text=text or TextConfig(),
                       fusion=FusionConfig(dim=32, depth=1, heads=2),
                       executor=ExecutorConfig(hidden=32),
                       pretrain=PretrainConfig(mlm_dim=32, mlm_heads=2, itm_hidden=32))


def images(count=2):
    return np.random.default_rng(0).integers(0, 256, (count, 96, 128, 3), np.uint8)


@pytest.mark.parametrize('kind, tokens', [('clip', 17), ('siglip', 16)])
def test_frozen_vision_tower_is_loaded_projected_and_referenced(towers, tmp_path, kind, tokens):
    source = str(towers / f'{kind}_vision')
    torch.manual_seed(0)
    model = VLITModel(config(VisionConfig(kind=kind, source=source))).eval()
    vlm = model.vlm
    pixels = vlm.preprocess(torch.from_numpy(images()))
    assert pixels.shape == (2, 3, 32, 32)
    black = vlm.preprocess(torch.zeros((1, 96, 128, 3), dtype=torch.uint8))
    # SigLIP: this directory's preprocessor_config.json; CLIP: CLIP's usual statistics.
    expected = -0.5 / 0.25 if kind == 'siglip' else -0.48145466 / 0.26862954
    assert torch.allclose(black[0, 0], torch.full((32, 32), expected))
    assert vlm.image_tokens(pixels).shape == (2, tokens, 384)
    assert all(not p.requires_grad for p in vlm.vision.parameters())
    vlm.train()
    assert not vlm.vision.model.training
    directory = save_checkpoint(model.eval(), tmp_path / kind)
    stored = safetensors.torch.load_file(str(directory / WEIGHTS_FILE))
    assert not any(key.startswith('vlm.vision.') for key in stored)
    loaded = load_checkpoint(directory)
    batch = {'image': images(), 'text': ['go to the red cube'] * 2,
             'odom': np.zeros((2, 5)), 't': np.zeros(2)}
    with torch.no_grad():
        assert torch.equal(model(batch)[0].logits, loaded(batch)[0].logits)


def test_trainable_vision_tower_is_shipped(towers, tmp_path):
    vision = VisionConfig(kind='clip', source=str(towers / 'clip_vision'), freeze=False)
    torch.manual_seed(0)
    model = VLITModel(config(vision))
    with torch.no_grad():
        next(model.vlm.vision.model.parameters()).add_(0.5)
    assert any(key.startswith('vlm.vision.model.') for key in shipped_state_dict(model))
    loaded = load_checkpoint(save_checkpoint(model, tmp_path))
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_clip_text_tower_encodes_and_trains_mlm(towers):
    text = TextConfig(kind='clip', source=str(towers / 'clip_text'))
    torch.manual_seed(0)
    model = PretrainingModel(config(text=text))
    encoder = model.vlm.text
    assert encoder.dim == 32 and encoder.frozen
    features = model.vlm.encode_text(['go to the red cube', 'stop'])
    assert features.pooled.shape == (2, 32)
    assert torch.allclose(features.pooled.norm(dim=-1), torch.ones(2), atol=1e-5)
    # CLIP has no mask token: its unknown token stands in.
    assert encoder.mask_token_id == encoder.tokenizer.unk_token_id
    output, loss = model({'image': images(), 'text': ['a red cube', 'a blue sphere']})
    loss.backward()
    assert torch.isfinite(output.mlm_loss)
    assert all(p.grad is None for p in encoder.parameters())
    assert model.mlm_head.vocab_bias.grad is not None


def test_policy_runs_on_a_clip_vision_tower(towers):
    vision = VisionConfig(kind='siglip', source=str(towers / 'siglip_vision'))
    torch.manual_seed(0)
    policy = ModelPolicy(VLITModel(config(vision)))
    policy.reset('turn left')
    image = images(1)[0]
    assert policy.act(FollowerObservation(image, (0, 0, 0, 0, 0), 0.0)) in ACTIONS


def test_missing_tower_directories_are_reported(tmp_path):
    with pytest.raises(ValueError, match='not a local directory'):
        VLITModel(config(VisionConfig(kind='clip', source=str(tmp_path / 'nowhere'))))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='no config.json'):
        VLITModel(config(text=TextConfig(kind='clip', source=str(tmp_path / 'empty'))))
