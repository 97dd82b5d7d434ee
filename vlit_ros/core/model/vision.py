"""
Vision encoders: image batches in, patch tokens out.

Preprocessing (uint8 -> normalised float, resized when the camera size differs from the
encoder's) is a module of its own so that it can be timed and run on the accelerator.
"""

import json
from typing import Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from vlit_ros.core.model.config import stem_strides, VisionConfig
from vlit_ros.core.model.hf import load_pretrained, local_directory
from vlit_ros.core.model.layers import init_weights, TransformerBlock

# Normalisation of the towers when their directory has no preprocessor_config.json.
_DEFAULT_NORMALISATION = {
    'vit': ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    'clip': ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    'siglip': ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

ImageInput = Union[np.ndarray, torch.Tensor, Sequence[np.ndarray]]


def as_image_batch(images: ImageInput, device: torch.device) -> torch.Tensor:
    """
    Return uint8 images as a (B, H, W, 3) tensor on `device`.

    Accepts one H x W x 3 array, a B x H x W x 3 array or tensor, or a sequence of H x W x 3
    arrays of one size. Anything but uint8 RGB is refused: float images have no agreed scale.
    """
    if isinstance(images, (list, tuple)):
        shapes = {np.shape(image) for image in images}
        if len(shapes) != 1:
            raise ValueError(f'images of one batch must share a size, got {sorted(shapes)}')
        images = np.stack([np.asarray(image) for image in images])
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ValueError(f'images must be uint8 RGB, got dtype {images.dtype}')
        if not images.flags.writeable or not images.flags.c_contiguous:
            # torch.from_numpy needs a writable, contiguous buffer (camera frames are often
            # read-only views of a message buffer).
            images = np.array(images, order='C')
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise ValueError(f'images must be uint8 RGB arrays or tensors, got '
                         f'{getattr(images, "dtype", type(images).__name__)}')
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f'images must be H x W x 3 or B x H x W x 3, got shape '
                         f'{tuple(images.shape)}')
    return images.to(device, non_blocking=True)


class ImagePreprocessor(nn.Module):
    """uint8 (B, H, W, 3) -> normalised float (B, 3, height, width), resized if needed."""

    def __init__(self, height: int, width: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.size = (height, width)
        # Derived from the config, so not part of the checkpoint.
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.permute(0, 3, 1, 2).float().div_(255.0)
        if tuple(pixels.shape[-2:]) != self.size:
            pixels = F.interpolate(pixels, size=self.size, mode='bilinear', align_corners=False,
                                   antialias=True)
        return (pixels - self.mean) / self.std


def conv_stem(channels: int, patch_size: int, dim: int) -> nn.Sequential:
    """
    Return a convolutional patch embedding: pixels (B, 3, H, W) -> (B, dim, H/p, W/p).

    Stride-2 3x3 convolutions (`channels`, doubling each time), each with GroupNorm and GELU,
    then a convolution to `dim` whose kernel is its stride, 2 or 3 (`stem_strides`: three
    stride-2 layers and a 2x2 one for 16-pixel patches; Xiao et al. 2021, "Early convolutions
    help transformers see better"). No batch statistics, so training and acting compute the
    same function.
    """
    halvings, last = stem_strides(patch_size)
    layers, width = [], 3
    for index in range(halvings):
        out = channels * 2 ** index
        layers += [nn.Conv2d(width, out, 3, stride=2, padding=1),
                   nn.GroupNorm(min(8, out), out), nn.GELU()]
        width = out
    layers.append(nn.Conv2d(width, dim, last, stride=last))
    return nn.Sequential(*layers)


class ViTEncoder(nn.Module):
    """The built-in ViT: patch embedding, learned positions, pre-LN blocks, final norm."""

    weights_referenced = False

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.dim = config.dim
        # patch rows and columns; every token is a patch (no class token ahead of them)
        self.grid = (config.image_height // config.patch_size,
                     config.image_width // config.patch_size)
        self.leading_tokens = 0
        self.num_tokens = self.grid[0] * self.grid[1]
        mean, std = _DEFAULT_NORMALISATION['vit']
        self.preprocess = ImagePreprocessor(config.image_height, config.image_width, mean, std)
        self.patch_embedding = conv_stem(config.conv_stem, config.patch_size, config.dim) \
            if config.conv_stem else nn.Conv2d(3, config.dim, config.patch_size,
                                               stride=config.patch_size)
        self.position = nn.Parameter(torch.zeros(1, self.num_tokens, config.dim))
        self.blocks = nn.ModuleList(
            TransformerBlock(config.dim, config.heads, config.mlp_ratio, config.dropout)
            for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        init_weights(self)
        nn.init.trunc_normal_(self.position, std=0.02)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Return patch tokens (B, num_tokens, dim) of preprocessed pixels (B, 3, H, W)."""
        tokens = self.patch_embedding(pixels).flatten(2).transpose(1, 2) + self.position
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


class HFVisionTower(nn.Module):
    """
    A CLIP or SigLIP vision tower loaded from a local directory (`save_pretrained` layout).

    Images are resized to the tower's square input and normalised with the directory's
    preprocessor_config.json (or the family's usual statistics). All output tokens are kept
    (CLIP's class token included); the projector maps them to the text space.
    """

    def __init__(self, config: VisionConfig):
        super().__init__()
        from transformers import CLIPVisionModel, SiglipVisionModel
        path = local_directory(config.source, f'{config.kind} vision tower')
        model_cls = CLIPVisionModel if config.kind == 'clip' else SiglipVisionModel
        try:
            self.model = load_pretrained(model_cls, path)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f'could not load a {config.kind} vision tower from {path}: '
                             f'{exc}') from exc
        tower = self.model.config
        self.dim = int(tower.hidden_size)
        self.frozen = config.freeze
        # A frozen tower is not copied into checkpoints: `source` names it.
        self.weights_referenced = config.freeze
        side = tower.image_size // tower.patch_size
        self.grid = (side, side)
        # CLIP puts a class token ahead of the patch tokens; SigLIP has none.
        self.leading_tokens = 1 if config.kind == 'clip' else 0
        self.num_tokens = side * side + self.leading_tokens
        mean, std = _normalisation(path, config.kind)
        self.preprocess = ImagePreprocessor(tower.image_size, tower.image_size, mean, std)
        if self.frozen:
            self.model.requires_grad_(False)

    def train(self, mode: bool = True) -> 'HFVisionTower':
        super().train(mode)
        if self.frozen:
            # A frozen tower keeps its dropout and normalisation statistics fixed.
            self.model.eval()
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Return the tower's last hidden states (B, tokens, hidden) for preprocessed pixels."""
        return self.model(pixel_values=pixels).last_hidden_state


def _normalisation(path, kind: str) -> Tuple[Sequence[float], Sequence[float]]:
    mean, std = _DEFAULT_NORMALISATION[kind]
    preprocessor = path / 'preprocessor_config.json'
    if preprocessor.is_file():
        try:
            values = json.loads(preprocessor.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f'unreadable {preprocessor}: {exc}') from exc
        mean = values.get('image_mean', mean)
        std = values.get('image_std', std)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f'{preprocessor}: image_mean and image_std must have 3 values')
    return mean, std


def build_vision_encoder(config: VisionConfig) -> nn.Module:
    """Return the vision encoder a config asks for (`preprocess`, `dim`, `num_tokens`, `grid`)."""
    if config.kind == 'vit':
        return ViTEncoder(config)
    return HFVisionTower(config)
