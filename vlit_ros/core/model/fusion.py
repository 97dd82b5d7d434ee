"""
Cross-modal alignment: the vision-language model (encoders, projector, fusion, alignment).

- `Projector`: LLaVA's 2-layer MLP from vision tokens to the text encoder's space.
- `CrossModalFusion`: the instruction attends over the projected image tokens. Its queries
  are the sentence embedding (the "state" query) followed by the instruction's token
  features; each block is self-attention among the queries, cross-attention to the image
  tokens, and an MLP. The fused state is [state query output, scaled sentence embedding]:
  the raw sentence embedding rides along so instruction content ("90 degrees", "two
  meters") reaches the executor even where the image says nothing about it.
- `GroundingHead`: scores every image patch for showing the object the instruction names
  (a query from the sentence embedding against a key per patch, as in open-vocabulary
  detectors). Trained densely from ground-truth geometry during instruction tuning; the
  map and its centroid ride in the fused state, so the executor reads where the named
  object is and how much of the view it fills instead of having to pool it out.
- `TaskHead`: the requested turn angle and drive distance, two numbers the executor compares
  with odometry. The sentence embedding picks which of the instruction's token features to
  read (attention pooling): a number word moves a mean-pooled sentence embedding too little
  to read "0.5" from "1.5", but its own token feature differs plainly. Checkpoints from
  before it regress the numbers from the sentence embedding alone (`task_tokens` false).
- `VisionLanguageModel`: the encoders plus the above, the image-text alignment score, and
  the per-instruction embedding cache.
- The zoomed map (`FusionConfig.zoom_map`, `core.model.zoom`): the image centre upsampled
  2x is scored by the same encoder and grounding head, and each patch of the map keeps the
  higher of its own logit and those of the zoomed patches inside it. The zoom's tokens come
  without gradient (`VisionLanguageModel.zoom_tokens`): training pays one more forward pass
  of the vision encoder, not a backward one.
"""

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from vlit_ros.core.model.config import FusionConfig, ModelConfig
from vlit_ros.core.model.layers import init_weights, TransformerBlock
from vlit_ros.core.model.text import build_text_encoder, normalize_instruction, \
    stack_features, TextEmbeddingCache, TextFeatures
from vlit_ros.core.model.vision import build_vision_encoder
from vlit_ros.core.model.zoom import centre_zoom, merge_zoom_logits, zoom_cells
from vlit_ros.core.task_parameters import TASK_PARAMETERS


class Projector(nn.Module):
    """LLaVA-1.5 projector: Linear -> GELU -> Linear, vision width -> text width."""

    def __init__(self, vision_dim: int, hidden: int, text_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(vision_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, text_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)


# Initial logit of the grounding map: few patches show the named object.
GROUNDING_PRIOR_LOGIT = -3.0
# The grounding map's summary: log(1 + mass), centroid column and row.
GROUNDING_SUMMARY = 3


def task_parameters_of(fused: torch.Tensor) -> torch.Tensor:
    """Return the task parameters (..., 2) of a fused state that has them (its last entries)."""
    return fused[..., -len(TASK_PARAMETERS):]


class GroundingHead(nn.Module):
    """Per-patch logits of "this patch shows the object the instruction names"."""

    def __init__(self, text_dim: int, dim: int):
        super().__init__()
        self.query = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.key = nn.Linear(text_dim, dim)
        self.bias = nn.Parameter(torch.tensor(GROUNDING_PRIOR_LOGIT))
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, patches: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        """Return logits (B, N) of normalised patch tokens (B, N, D) for sentences (B, D)."""
        query = self.query(sentence.to(patches.dtype))
        return torch.einsum('bnd,bd->bn', self.key(patches), query) * self.scale + self.bias


class TaskHead(nn.Module):
    """The requested angle and distance (B, 2) read from the instruction's token features."""

    def __init__(self, text_dim: int, dim: int):
        super().__init__()
        self.query = nn.Linear(text_dim, dim)
        self.key = nn.Linear(text_dim, dim)
        self.out = nn.Sequential(nn.Linear(2 * text_dim, dim), nn.GELU(),
                                 nn.Linear(dim, len(TASK_PARAMETERS)))
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, text: TextFeatures) -> torch.Tensor:
        sentence = text.pooled
        tokens = text.tokens.to(sentence.dtype)
        scores = torch.einsum('bld,bd->bl', self.key(tokens), self.query(sentence)) * self.scale
        weights = scores.masked_fill(~text.mask, float('-inf')).softmax(-1)
        read = torch.einsum('bl,bld->bd', weights, tokens)
        return self.out(torch.cat([read, sentence], -1))


def sentence_task_head(text_dim: int, dim: int) -> nn.Module:
    """Build the task head of checkpoints without `task_tokens`: an MLP on the sentence."""
    return nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(),
                         nn.Linear(dim, len(TASK_PARAMETERS)))


class FusionOutput(NamedTuple):
    """The fused state, with the grounding logits and task parameters it holds (or None)."""

    state: torch.Tensor
    grounding: Optional[torch.Tensor]
    task_parameters: Optional[torch.Tensor]
    # the normalised patch tokens (B, patches, text_dim) the grounding head scores, for
    # asking the head about other texts without running the fusion again
    patches: torch.Tensor


class CrossModalFusion(nn.Module):
    """
    Text queries over projected image tokens -> fused state (B, state_dim).

    The state is [state query output (dim), scaled sentence embedding (text_dim)], then,
    when configured, the grounding map's probabilities (one per patch) and summary (3),
    and the two task parameters.
    """

    def __init__(self, text_dim: int, config: FusionConfig, grid: Tuple[int, int] = (1, 1),
                 leading_tokens: int = 0, image_size: Optional[Tuple[int, int]] = None):
        super().__init__()
        self.leading_tokens = leading_tokens
        # the encoder's input size (rows, columns), and for each patch of the centre zoom the
        # full patch it falls in (moves with the model; not part of the checkpoint); a fusion
        # built without the size cannot zoom
        self.image_size = None if image_size is None else tuple(image_size)
        self.zoom_map = config.zoom_map
        self.register_buffer('zoom_cells', None if image_size is None else
                             zoom_cells(tuple(grid), self.image_size), persistent=False)
        patches = grid[0] * grid[1]
        self.grounding = GroundingHead(text_dim, config.grounding_dim) \
            if config.grounding_dim else None
        self.task_head: Optional[nn.Module] = None
        if config.task_parameters:
            self.task_head = TaskHead(text_dim, config.dim) if config.task_tokens \
                else sentence_task_head(text_dim, config.dim)
        self.state_dim = config.dim + text_dim + \
            (patches + GROUNDING_SUMMARY if self.grounding is not None else 0) + \
            (len(TASK_PARAMETERS) if self.task_head is not None else 0)
        # Patch centres on [-1, 1]: columns with + to the left (as bearings), rows with + down
        # (nearer the robot, for objects on the floor).
        rows, cols = grid
        column = torch.linspace(1.0, -1.0, cols) if cols > 1 else torch.zeros(1)
        row = torch.linspace(-1.0, 1.0, rows) if rows > 1 else torch.zeros(1)
        self.register_buffer('patch_column', column.repeat(rows), persistent=False)
        self.register_buffer('patch_row', row.repeat_interleave(cols), persistent=False)
        self.sentence_in = nn.Linear(text_dim, config.dim)
        self.tokens_in = nn.Linear(text_dim, config.dim)
        # The state starts with the query output (dim) and the sentence (text_dim); the map's
        # probabilities follow when there is a grounding head.
        self.map_start = config.dim + text_dim
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

    def forward(self, image_tokens: torch.Tensor, text: TextFeatures,
                zoom_tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Return the fused state of image tokens (B, N, text_dim) and encoded text.

        With `zoom_tokens`, the tokens of the images' centre zoom, the state holds the
        merged map (`with_zoom`).
        """
        fused = self.fuse(image_tokens, text)
        return fused.state if zoom_tokens is None else \
            self.with_zoom(fused, zoom_tokens, text).state

    def fuse(self, image_tokens: torch.Tensor, text: TextFeatures) -> FusionOutput:
        """Return the fused state with the grounding logits and task parameters in it."""
        batch = image_tokens.shape[0]
        queries = torch.cat([self.sentence_in(text.pooled).unsqueeze(1),
                             self.tokens_in(text.tokens)], 1)
        # The state query is always attendable, so no row of the attention is fully masked.
        key_mask = torch.cat([text.mask.new_ones((batch, 1)), text.mask], 1)
        context = self.context_norm(image_tokens)
        for block in self.blocks:
            queries = block(queries, key_mask=key_mask, context=context)
        state = self.norm(queries[:, 0])
        sentence = text.pooled.to(state.dtype)
        parts = [state, sentence * self.sentence_scale]
        logits = parameters = None
        patches = context[:, self.leading_tokens:]
        if self.grounding is not None:
            logits = self.grounding(patches, sentence)
            parts += self.grounding_features(logits)
        if self.task_head is not None:
            parameters = self.task_parameters(text)
            parts.append(parameters.to(state.dtype))
        return FusionOutput(torch.cat(parts, -1), logits, parameters, patches)

    def with_grounding(self, fused: FusionOutput, logits: torch.Tensor) -> FusionOutput:
        """
        Return `fused` with another grounding map (logits (B, patches)) in place of its own.

        The map's probabilities and summary in the state are recomputed from `logits`; the
        rest of the state (query output, sentence, task parameters) is kept.
        """
        if self.grounding is None:
            raise ValueError('this model has no grounding head (fusion.grounding_dim is 0)')
        state = fused.state
        start = self.map_start
        end = start + logits.shape[-1] + GROUNDING_SUMMARY
        parts = [state[:, :start],
                 *[part.to(state.dtype) for part in self.grounding_features(logits)],
                 state[:, end:]]
        return fused._replace(state=torch.cat(parts, -1), grounding=logits)

    def with_zoom(self, fused: FusionOutput, zoom_tokens: torch.Tensor,
                  text: TextFeatures) -> FusionOutput:
        """
        Return `fused` with its map merged with the map of the centre zoom's tokens.

        Each patch keeps the higher of its own logit and those of the zoomed patches inside
        it (`merge_zoom_logits`); the state's map and summary are recomputed from the merge.
        """
        if fused.grounding is None:
            raise ValueError('the zoomed map needs a grounding head (fusion.grounding_dim)')
        return self.with_grounding(fused, self.merge_zoom(fused.grounding,
                                                          self.grounding_logits(zoom_tokens,
                                                                                text)))

    def merge_zoom(self, logits: torch.Tensor, zoom_logits: torch.Tensor) -> torch.Tensor:
        """Return full-grid logits merged with those of the centre zoom (both (B, N))."""
        if self.zoom_cells is None:
            raise ValueError('the zoomed map needs the image size (CrossModalFusion image_size)')
        return merge_zoom_logits(logits, zoom_logits, self.zoom_cells)

    def grounding_logits(self, image_tokens: torch.Tensor, text: TextFeatures) -> torch.Tensor:
        """
        Return the grounding logits (B, patches) alone, as `fuse` computes them.

        The map reads only the normalised patch tokens and the sentence embedding, so the
        attention blocks are skipped.
        """
        if self.grounding is None:
            raise ValueError('this model has no grounding head (fusion.grounding_dim is 0)')
        patches = self.grounding_patches(image_tokens)
        return self.grounding(patches, text.pooled.to(patches.dtype))

    def grounding_patches(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Return the normalised patch tokens (B, patches, text_dim) the grounding head scores."""
        return self.context_norm(image_tokens)[:, self.leading_tokens:]

    def task_parameters(self, text: TextFeatures) -> torch.Tensor:
        """Return the task parameters (B, 2) of encoded text (see TASK_PARAMETERS)."""
        if isinstance(self.task_head, TaskHead):
            return self.task_head(text)
        return self.task_head(text.pooled)

    def grounding_features(self, logits: torch.Tensor) -> List[torch.Tensor]:
        """Return [probabilities (B, N), summary (B, 3)] of grounding logits (B, N)."""
        probabilities = torch.sigmoid(logits)
        mass = probabilities.sum(-1, keepdim=True)
        weights = probabilities / (mass + 1e-3)
        summary = torch.cat([torch.log1p(mass),
                             (weights * self.patch_column).sum(-1, keepdim=True),
                             (weights * self.patch_row).sum(-1, keepdim=True)], -1)
        return [probabilities, summary]


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
        self.fusion = CrossModalFusion(text_dim, config.fusion, self.vision.grid,
                                       self.vision.leading_tokens,
                                       self.vision.preprocess.size)
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

    def fuse_details(self, image_tokens: torch.Tensor, text: TextFeatures) -> FusionOutput:
        """Return the fused state with its grounding logits and task parameters."""
        return self.fusion.fuse(image_tokens, text)

    def zoom_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """
        Return the projected patch tokens of the 2x centre zoom of uint8 images (B, H, W, 3).

        Without gradient: the zoomed map is an input the executor learns to read, and the
        grounding head learns from the full images.
        """
        with torch.no_grad():
            return self.image_tokens(self.preprocess(centre_zoom(images)))

    def fuse_images(self, images: torch.Tensor, text: TextFeatures,
                    zoom: Optional[bool] = None) -> FusionOutput:
        """
        Return the fusion's output for uint8 images (B, H, W, 3) on the model's device.

        With `zoom` (default: the configuration's `fusion.zoom_map`) the map is merged with
        the centre zoom's (`CrossModalFusion.with_zoom`).
        """
        details = self.fuse_details(self.image_tokens(self.preprocess(images)), text)
        if zoom is None:
            zoom = self.fusion.zoom_map
        return self.fusion.with_zoom(details, self.zoom_tokens(images), text) if zoom \
            else details

    def grounding_logits(self, images: torch.Tensor, texts: Sequence[str],
                         zoom: Optional[bool] = None) -> torch.Tensor:
        """
        Return the grounding map's logits (B, patches) of uint8 images (B, H, W, 3).

        One instruction per image, through the text cache; gradients reach the vision
        encoder, projector and grounding head (wrap in `torch.no_grad()` to score). With
        `zoom` (default: the configuration's `fusion.zoom_map`) the map is merged with the
        centre zoom's.
        """
        if len(texts) != images.shape[0]:
            raise ValueError(f'{images.shape[0]} images but {len(texts)} texts')
        text = self.encode_instructions(texts)
        logits = self.fusion.grounding_logits(self.image_tokens(self.preprocess(images)), text)
        if zoom is None:
            zoom = self.fusion.zoom_map
        return self.fusion.merge_zoom(logits, self.fusion.grounding_logits(
            self.zoom_tokens(images), text)) if zoom else logits

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
