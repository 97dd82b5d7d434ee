"""
Cross-modal alignment: the vision-language model (encoders, projector, fusion, alignment).

- `Projector`: LLaVA's 2-layer MLP from vision tokens to the text encoder's space.
- `CrossModalFusion`: the instruction attends over the projected image tokens. Its queries
  are the sentence embedding (the "state" query) followed by the instruction's token
  features; each block is self-attention among the queries, cross-attention to the image
  tokens, and an MLP. The fused state is [state query output, scaled sentence embedding]:
  the raw sentence embedding rides along so instruction content ("90 degrees", "two
  meters") reaches the executor even where the image says nothing about it.
- `VisionLanguageModel`: the encoders plus the above, the image-text alignment score, and
  the per-instruction embedding cache.
"""

import math
from typing import List, Optional, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from vlit_ros.core.model.config import FusionConfig, ModelConfig
from vlit_ros.core.model.layers import init_weights, TransformerBlock
from vlit_ros.core.model.text import build_text_encoder, normalize_instruction, \
    stack_features, TextEmbeddingCache, TextFeatures
from vlit_ros.core.model.vision import build_vision_encoder


class Projector(nn.Module):
    """LLaVA-1.5 projector: Linear -> GELU -> Linear, vision width -> text width."""

    def __init__(self, vision_dim: int, hidden: int, text_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(vision_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, text_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)


class CrossModalFusion(nn.Module):
    """Text queries over projected image tokens -> fused state (B, dim + text_dim)."""

    def __init__(self, text_dim: int, config: FusionConfig):
        super().__init__()
        self.state_dim = config.dim + text_dim
        self.sentence_in = nn.Linear(text_dim, config.dim)
        self.tokens_in = nn.Linear(text_dim, config.dim)
        # Image tokens are normalised once here rather than in every block.
        self.context_norm = nn.LayerNorm(text_dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(config.dim, config.heads, config.mlp_ratio, config.dropout,
                             context_dim=text_dim)
            for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        # The sentence embedding is unit-norm; scaled by sqrt(dim) its components are O(1)
        # like the normalised state's, so neither half dominates the executor's input.
        self.sentence_scale = math.sqrt(text_dim)

    def forward(self, image_tokens: torch.Tensor, text: TextFeatures) -> torch.Tensor:
        """Return the fused state of image tokens (B, N, text_dim) and encoded text."""
        batch = image_tokens.shape[0]
        queries = torch.cat([self.sentence_in(text.pooled).unsqueeze(1),
                             self.tokens_in(text.tokens)], 1)
        # The state query is always attendable, so no row of the attention is fully masked.
        key_mask = torch.cat([text.mask.new_ones((batch, 1)), text.mask], 1)
        context = self.context_norm(image_tokens)
        for block in self.blocks:
            queries = block(queries, key_mask=key_mask, context=context)
        state = self.norm(queries[:, 0])
        return torch.cat([state, text.pooled.to(state.dtype) * self.sentence_scale], -1)


class VisionLanguageModel(nn.Module):
    """Vision encoder, text encoder, projector, fusion and image-text alignment."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.vision = build_vision_encoder(config.vision)
        self.text = build_text_encoder(config.text)
        text_dim = self.text.dim
        self.text_dim = text_dim
        hidden = config.fusion.projector_hidden or text_dim
        self.projector = Projector(self.vision.dim, hidden, text_dim)
        self.fusion = CrossModalFusion(text_dim, config.fusion)
        self.state_dim = self.fusion.state_dim
        # Pooled image -> the text space, for the alignment score and the contrastive loss.
        self.image_alignment = nn.Sequential(nn.LayerNorm(text_dim),
                                             nn.Linear(text_dim, text_dim))
        for module in (self.projector, self.fusion, self.image_alignment):
            init_weights(module)
        self.text_cache = TextEmbeddingCache(config.text.cache_size)
        # Cached embeddings are stale once the text encoder's weights change.
        self.register_load_state_dict_post_hook(
            lambda module, incompatible: module.clear_text_cache())

    # -- images ------------------------------------------------------------------------

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) on the model's device -> normalised pixels for the encoder."""
        return self.vision.preprocess(images)

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels -> projected patch tokens (B, N, text_dim)."""
        return self.projector(self.vision(pixels))

    def image_embedding(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Projected patch tokens -> unit-norm image embedding in the text space (B, D)."""
        return F.normalize(self.image_alignment(image_tokens.mean(1)), dim=-1)

    def alignment_score(self, image_tokens: torch.Tensor, text: TextFeatures) -> torch.Tensor:
        """Return the cosine similarity (B,) of each image with its text."""
        return (self.image_embedding(image_tokens) * text.pooled).sum(-1)

    def fuse(self, image_tokens: torch.Tensor, text: TextFeatures) -> torch.Tensor:
        """Return the fused state (B, state_dim)."""
        return self.fusion(image_tokens, text)

    # -- text --------------------------------------------------------------------------

    def encode_text(self, texts: Sequence[str]) -> TextFeatures:
        """Encode texts now (no cache); gradients reach a trainable text encoder."""
        input_ids, attention_mask = self.text.tokenize(texts)
        return self.text(input_ids, attention_mask)

    def encode_instructions(self, texts: Sequence[str],
                            pad_to: Optional[int] = None) -> TextFeatures:
        """
        Encode instructions through the LRU cache (keyed by the normalised text).

        Only texts not in the cache are encoded, in one batch. While a trainable text
        encoder is training the cache is bypassed (its embeddings change every step and
        need gradients). `pad_to` fixes the token count (CUDA graphs need static shapes).
        """
        keys = [normalize_instruction(text) for text in texts]
        if self.training and not self.text.frozen:
            features = self.encode_text(keys)
            extra = 0 if pad_to is None else pad_to - features.tokens.shape[1]
            if extra < 0:
                raise ValueError(f'cannot pad {features.tokens.shape[1]} text tokens to '
                                 f'{pad_to}')
            if extra == 0:
                return features
            batch, _, dim = features.tokens.shape
            return TextFeatures(
                torch.cat([features.tokens, features.tokens.new_zeros(batch, extra, dim)], 1),
                torch.cat([features.mask, features.mask.new_zeros(batch, extra)], 1),
                features.pooled)
        missing = list(dict.fromkeys(key for key in keys if key not in self.text_cache))
        if missing:
            with torch.no_grad():
                fresh = self.encode_text(missing)
            for row, key in enumerate(missing):
                count = int(fresh.mask[row].sum())
                # Copies, so an entry does not keep its whole padded batch alive.
                self.text_cache.put(key, fresh.tokens[row, :count].clone(),
                                    fresh.pooled[row].clone())
        entries: List = []
        for key in keys:
            entry = self.text_cache.get(key)
            if entry is None:
                # More distinct texts than the cache holds: encode this one on its own.
                with torch.no_grad():
                    single = self.encode_text([key])
                entry = (single.tokens[0], single.pooled[0])
            entries.append(entry)
        return stack_features(entries, pad_to)

    def clear_text_cache(self) -> None:
        """Forget every cached instruction embedding."""
        self.text_cache.clear()

    def train(self, mode: bool = True) -> 'VisionLanguageModel':
        if mode != self.training and not self.text.frozen:
            self.clear_text_cache()
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        # Moving the model to another device or dtype leaves cached tensors behind.
        self.clear_text_cache()
        return super()._apply(fn, recurse)

    # -- checkpoints -------------------------------------------------------------------

    def referenced_prefixes(self) -> List[str]:
        """State-dict prefixes of frozen encoders named by the config instead of shipped."""
        prefixes = []
        if self.text.weights_referenced:
            prefixes.append('text.')
        if self.vision.weights_referenced:
            prefixes.append('vision.')
        return prefixes
