"""
The vision-language model and the InstructionExecutor (pure PyTorch, no ROS).

Import what you need from here; the submodules are:

- `config`: `ModelConfig` and its sections (`VisionConfig`, `TextConfig`, ...).
- `vision`, `text`, `fusion`: encoders, projector, cross-attention fusion,
  `VisionLanguageModel`.
- `executor`: `InstructionExecutor`, `VLITModel` (the instruction-following model).
- `pretraining`: `PretrainingModel` and the three pretraining losses.
- `checkpoint`: `save_checkpoint`, `load_checkpoint`, `CheckpointError`.
- `inference`: `FrameRunner` (CPU, CUDA bf16, torch.compile, CUDA graphs).
"""

from vlit_ros.core.model.checkpoint import (CheckpointError, load_checkpoint,
                                            load_weights_from_bytes, read_checkpoint_info,
                                            save_checkpoint, shipped_parameter_count,
                                            shipped_state_dict, weights_to_bytes)
from vlit_ros.core.model.config import (ExecutorConfig, FusionConfig, ModelConfig,
                                        PretrainConfig, TextConfig, VisionConfig)
from vlit_ros.core.model.executor import (ActionChoice, ExecutorOutput, InstructionExecutor,
                                          odometry_features, VLITModel)
from vlit_ros.core.model.fusion import VisionLanguageModel
from vlit_ros.core.model.inference import FrameRunner
from vlit_ros.core.model.pretraining import (hard_negatives, info_nce, mask_tokens,
                                             PretrainingModel, PretrainingOutput)
from vlit_ros.core.model.text import normalize_instruction, TextFeatures
from vlit_ros.core.model.vision import as_image_batch

__all__ = [
    'ActionChoice', 'as_image_batch', 'CheckpointError', 'ExecutorConfig', 'ExecutorOutput',
    'FrameRunner', 'FusionConfig', 'hard_negatives', 'info_nce', 'InstructionExecutor',
    'load_checkpoint', 'load_weights_from_bytes', 'mask_tokens', 'ModelConfig',
    'normalize_instruction', 'odometry_features', 'PretrainConfig', 'PretrainingModel',
    'PretrainingOutput', 'read_checkpoint_info', 'save_checkpoint', 'shipped_parameter_count',
    'shipped_state_dict', 'TextConfig', 'TextFeatures', 'VisionConfig',
    'VisionLanguageModel', 'VLITModel', 'weights_to_bytes',
]
