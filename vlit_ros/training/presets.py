"""
Model configurations for training: the CPU-sized model the default checkpoint ships, and more.

`ModelConfig()` (the model package's default) is sized for a GPU. On the 2-core machine the
default checkpoint is trained on, a training step of that model at batch 64 takes several
times longer than the `cpu` preset's; the `cpu` preset keeps the design (ViT patch tokens,
projector into MiniLM's space, cross-attention fusion, MLP executor) at a width and depth
that trains in the one-hour budget, and embeds patches through a small convolutional stem.
`tiny` is for tests and smoke runs only.
"""

import dataclasses
from typing import Optional

from vlit_ros.core.model import (ExecutorConfig, FusionConfig, ModelConfig, PretrainConfig,
                                 TextConfig, VisionConfig)

PRESETS = ('cpu', 'default', 'tiny')
TEXT_ENCODERS = ('minilm', 'builtin')
# Instruction and caption embeddings cached during training: more than the distinct
# instructions of a dataset (about a thousand), so the frozen encoder runs once per text.
TRAINING_TEXT_CACHE = 4096
# The `cpu` preset's ViT embeds patches through a convolutional stem (16, 32, 64 channels,
# then 128): goto 74.0% -> 81.5% on seeds 101-300 (twenty-first session, docs/TRAINING.md).
CPU_CONV_STEM = 16


def add_conv_stem_argument(parser) -> None:
    """Add `--conv-stem C` (a new model's ViT patch embedding) to a training command."""
    parser.add_argument('--conv-stem', type=int, default=None, metavar='C',
                        help="a new model's ViT embeds patches with a convolutional stem whose "
                             'first layer has C channels; 0: the linear patch embedding '
                             "(default: the preset's)")


def model_config(preset: str = 'cpu', text_encoder: str = 'minilm',
                 conv_stem: Optional[int] = None) -> ModelConfig:
    """
    Return the model configuration of a preset with the chosen text encoder.

    `conv_stem` overrides the preset's patch embedding: C > 0 channels in the first layer of
    a convolutional stem, 0 the linear one (`VisionConfig.conv_stem`).
    """
    config = _preset_config(preset, text_encoder)
    if conv_stem is not None:
        config = dataclasses.replace(config, vision=dataclasses.replace(config.vision,
                                                                        conv_stem=conv_stem))
    return config


def _preset_config(preset: str, text_encoder: str) -> ModelConfig:
    if preset not in PRESETS:
        raise ValueError(f'unknown model preset {preset!r}; expected one of {PRESETS}')
    if text_encoder not in TEXT_ENCODERS:
        raise ValueError(f'unknown text encoder {text_encoder!r}; expected one of '
                         f'{TEXT_ENCODERS}')
    text = TextConfig(kind=text_encoder, cache_size=TRAINING_TEXT_CACHE)
    if preset == 'default':
        return ModelConfig(text=text)
    if preset == 'tiny':
        if text_encoder == 'builtin':
            text = TextConfig(kind='builtin', cache_size=TRAINING_TEXT_CACHE, dim=32, depth=1,
                              heads=2, mlp_ratio=2.0)
        return ModelConfig(
            vision=VisionConfig(patch_size=16, dim=32, depth=1, heads=2, mlp_ratio=2.0),
            text=text,
            fusion=FusionConfig(projector_hidden=32, dim=32, depth=1, heads=2, mlp_ratio=2.0),
            executor=ExecutorConfig(hidden=32, layers=1),
            pretrain=PretrainConfig(mlm_dim=32, mlm_heads=2, itm_hidden=32))
    if text_encoder == 'builtin':
        text = TextConfig(kind='builtin', cache_size=TRAINING_TEXT_CACHE, dim=128, depth=2,
                          heads=4, mlp_ratio=2.0)
    return ModelConfig(
        vision=VisionConfig(patch_size=16, dim=128, depth=3, heads=4, mlp_ratio=2.0,
                            conv_stem=CPU_CONV_STEM),
        text=text,
        fusion=FusionConfig(projector_hidden=256, dim=128, depth=2, heads=4, mlp_ratio=2.0),
        executor=ExecutorConfig(hidden=256, layers=2),
        pretrain=PretrainConfig(mlm_dim=128, mlm_heads=4, itm_hidden=128))
