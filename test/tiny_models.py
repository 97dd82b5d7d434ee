# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""The tiny model configuration the model, policy and checkpoint tests share."""

from vlit_ros.core.model import (ExecutorConfig, FusionConfig, ModelConfig, PretrainConfig,
                                 TextConfig, VisionConfig)


def tiny_config(text_kind: str = 'minilm', hidden: int = 32, **executor) -> ModelConfig:
    """
    Return a model small enough for unit tests, with the grounding and task heads.

    `text_kind` 'minilm' (frozen, from the installed wheel) or 'builtin' (trainable, tiny);
    `hidden` and `executor` configure the InstructionExecutor.
    """
    if text_kind not in ('minilm', 'builtin'):
        raise ValueError(f'text_kind must be minilm or builtin, got {text_kind!r}')
    text = TextConfig() if text_kind == 'minilm' else \
        TextConfig(kind='builtin', dim=32, depth=1, heads=2, embed_dim=16)
    return ModelConfig(vision=VisionConfig(dim=32, depth=1, heads=2), text=text,
                       fusion=FusionConfig(dim=32, depth=1, heads=2),
                       executor=ExecutorConfig(hidden=hidden, **executor),
                       pretrain=PretrainConfig(mlm_dim=32, mlm_heads=2, itm_hidden=32))
