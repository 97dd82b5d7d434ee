"""
Vision-language pretraining: L = L_MLM + L_ITM + L_VLM (each weighted by `PretrainConfig`).

- L_VLM, image-text contrastive alignment: symmetric InfoNCE between the pooled image
  embedding and the sentence embedding, with a learned temperature clamped at
  `temperature_min`.
- L_ITM, image-text matching: a binary classifier on the fused state. Each image is paired
  with its caption (label 1), with a hard negative caption (label 0: the caller's
  `negative_text`, else one mined from the batch) and each caption with a hard negative
  image mined from the batch (label 0). Mining samples in-batch negatives with probability
  softmax(similarity / temperature), the learned contrastive temperature (ALBEF): mostly
  the hardest, but every pair gets visited, where always taking the single most similar one
  leaves most mismatched pairs untrained. Similarities for mining are detached, and a
  caption identical to the positive one is never a negative (synthetic captions repeat
  within a batch).
- L_MLM, masked-word prediction conditioned on the image. The default text encoder,
  MiniLM, is frozen, so MLM cannot train it: instead the frozen encoder reads the masked
  caption, and a small trainable decoder (self-attention over those token features,
  cross-attention to the projected image tokens) predicts the masked words through the text
  encoder's own word-embedding matrix (tied, so no 30522-row output layer is trained). A word
  like "red" that the text context leaves open can only be recovered from the image, which
  is what teaches the vision side and the projector. With the built-in encoder the same
  loss also trains the encoder. Masked positions get the mask token (the unknown token for
  CLIP, whose vocabulary has none); at least one word per caption is masked.
"""

import math
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from vlit_ros.core.model.config import ModelConfig, PretrainConfig
from vlit_ros.core.model.fusion import VisionLanguageModel
from vlit_ros.core.model.layers import init_weights, TransformerBlock
from vlit_ros.core.model.text import normalize_instruction, TextFeatures
from vlit_ros.core.model.vision import as_image_batch

IGNORE_INDEX = -100


def info_nce(image_embedding: torch.Tensor, text_embedding: torch.Tensor,
             logit_scale: torch.Tensor) -> torch.Tensor:
    """
    Symmetric InfoNCE of matching unit-norm embeddings (B, D) at scale exp(logit_scale).

    Row i of each is a matching pair. Two identical captions give identical columns, whose
    logits tie, so the loss never pushes a caption away from its own duplicate.
    """
    logits = logit_scale.exp() * image_embedding @ text_embedding.t()
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def hard_negatives(similarity: torch.Tensor, allowed: torch.Tensor, temperature: float,
                   generator: Optional[torch.Generator] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Pick one negative column per row among the allowed ones, favouring similar ones.

    Samples with probability softmax(similarity / temperature) over the allowed columns;
    `temperature` 0 takes the most similar. Returns (indices (B,), has_negative (B,) bool);
    rows with no allowed column are False (their index is meaningless).
    """
    valid = allowed.any(1)
    scores = similarity.detach().float().masked_fill(~allowed, float('-inf'))
    if temperature == 0.0:
        return scores.argmax(1), valid
    # Rows without any allowed column get uniform weights so that sampling stays defined.
    weights = torch.softmax(scores / temperature, dim=1).nan_to_num(0.0)
    weights[~valid] = 1.0
    return torch.multinomial(weights, 1, generator=generator).squeeze(1), valid


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                special_ids: Sequence[int], mask_token_id: int, probability: float,
                generator: Optional[torch.Generator] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Mask words for MLM: return (masked ids, labels with IGNORE_INDEX where not masked).

    Each real, non-special token is masked with `probability`; a row that would get none
    has its lowest-scoring candidate masked, so every caption with a word contributes.
    """
    candidates = attention_mask.bool()
    for special in special_ids:
        candidates &= input_ids != special
    scores = torch.rand(input_ids.shape, generator=generator,
                        device=generator.device if generator is not None else input_ids.device)
    scores = scores.to(input_ids.device).masked_fill(~candidates, 2.0)
    masked = scores < probability
    first = scores.argmin(1, keepdim=True)
    masked.scatter_(1, first, masked.gather(1, first) | candidates.gather(1, first))
    labels = input_ids.masked_fill(~masked, IGNORE_INDEX)
    return input_ids.masked_fill(masked, mask_token_id), labels


class MaskedWordHead(nn.Module):
    """Decoder over masked-caption token features and image tokens -> hidden states."""

    def __init__(self, text_dim: int, vocab_size: int, config: PretrainConfig):
        super().__init__()
        self.input = nn.Linear(text_dim, config.mlm_dim)
        self.context_norm = nn.LayerNorm(text_dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(config.mlm_dim, config.mlm_heads, 4.0, context_dim=text_dim)
            for _ in range(config.mlm_depth))
        # BERT's prediction transform, back to the width of the tied word embedding.
        self.output = nn.Sequential(nn.Linear(config.mlm_dim, text_dim), nn.GELU(),
                                    nn.LayerNorm(text_dim))
        self.vocab_bias = nn.Parameter(torch.zeros(vocab_size))
        init_weights(self)

    def forward(self, text: TextFeatures, image_tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.input(text.tokens)
        context = self.context_norm(image_tokens)
        for block in self.blocks:
            hidden = block(hidden, key_mask=text.mask, context=context)
        return self.output(hidden)


class PretrainingOutput(NamedTuple):
    """The three losses and what they were computed from (for logging and tests)."""

    mlm_loss: torch.Tensor
    itm_loss: torch.Tensor
    itc_loss: torch.Tensor
    # ITM logits and labels (1 matched, 0 not), one per scored image-text pair
    itm_logits: torch.Tensor
    itm_labels: torch.Tensor
    # cosine similarity of every image (rows) with every caption (columns)
    similarity: torch.Tensor
    # fraction of masked words predicted exactly
    mlm_accuracy: torch.Tensor
    temperature: torch.Tensor


class PretrainingModel(nn.Module):
    """
    The vision-language model with its pretraining heads.

    `forward(batch)` takes {'image': uint8 (B, H, W, 3), 'text': B captions, optionally
    'negative_text': B hard-negative captions} and returns (PretrainingOutput, total loss).
    """

    architecture = 'PretrainingModel'

    def __init__(self, config: ModelConfig, vlm: Optional[VisionLanguageModel] = None):
        super().__init__()
        self.config = config
        self.vlm = vlm if vlm is not None else VisionLanguageModel(config)
        settings = config.pretrain
        self.mlm_head = MaskedWordHead(self.vlm.text_dim, self.vlm.text.vocab_size, settings)
        self.itm_head = nn.Sequential(nn.Linear(self.vlm.state_dim, settings.itm_hidden),
                                      nn.GELU(), nn.Linear(settings.itm_hidden, 1))
        init_weights(self.itm_head)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / settings.temperature_init)))
        self.max_logit_scale = math.log(1.0 / settings.temperature_min)

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def itm_logits(self, image_tokens: torch.Tensor, text: TextFeatures) -> torch.Tensor:
        """Return the matching logit (B,) of each image with its text."""
        return self.itm_head(self.vlm.fuse(image_tokens, text)).squeeze(-1)

    def forward(self, batch: Mapping[str, Any]) -> Tuple[PretrainingOutput, torch.Tensor]:
        settings = self.config.pretrain
        captions = [normalize_instruction(text) for text in batch['text']]
        images = as_image_batch(batch['image'], self.device)
        if images.shape[0] != len(captions):
            raise ValueError(f'{images.shape[0]} images but {len(captions)} captions')
        image_tokens = self.vlm.image_tokens(self.vlm.preprocess(images))
        input_ids, attention_mask = self.vlm.text.tokenize(captions)
        text = self.vlm.text(input_ids, attention_mask)

        same_text = torch.tensor([[a == b for b in captions] for a in captions],
                                 device=image_tokens.device)
        image_embedding = self.vlm.image_embedding(image_tokens)
        similarity = image_embedding @ text.pooled.t()
        logit_scale = self.logit_scale.clamp(0.0, self.max_logit_scale)
        temperature = (-logit_scale).detach().exp()
        itc_loss = info_nce(image_embedding, text.pooled, logit_scale)

        itm_logits, itm_labels = self._matching(image_tokens, text, captions, similarity,
                                                same_text, batch.get('negative_text'),
                                                float(temperature))
        itm_loss = F.binary_cross_entropy_with_logits(itm_logits, itm_labels)

        masked_ids, labels = mask_tokens(input_ids, attention_mask,
                                         self.vlm.text.special_token_ids,
                                         self.vlm.text.mask_token_id, settings.mlm_mask_prob)
        hidden = self.mlm_head(self.vlm.text(masked_ids, attention_mask), image_tokens)
        selected = labels != IGNORE_INDEX
        word_logits = self.vlm.text.vocab_logits(hidden[selected]) + self.mlm_head.vocab_bias
        targets = labels[selected]
        mlm_loss = F.cross_entropy(word_logits.float(), targets)
        mlm_accuracy = (word_logits.detach().argmax(-1) == targets).float().mean()

        loss = settings.mlm_weight * mlm_loss + settings.itm_weight * itm_loss + \
            settings.itc_weight * itc_loss
        output = PretrainingOutput(mlm_loss, itm_loss, itc_loss, itm_logits.detach(),
                                   itm_labels, similarity.detach(), mlm_accuracy,
                                   temperature)
        return output, loss

    def _matching(self, image_tokens: torch.Tensor, text: TextFeatures,
                  captions: Sequence[str], similarity: torch.Tensor, same_text: torch.Tensor,
                  negative_text: Optional[Sequence[str]], temperature: float
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return ITM logits and labels: positives, text negatives, image negatives."""
        allowed = ~same_text
        rows = torch.arange(len(captions), device=image_tokens.device)
        logits = [self.itm_logits(image_tokens, text)]
        labels = [torch.ones(len(captions), device=image_tokens.device)]
        if negative_text is not None:
            negatives = [normalize_instruction(t) for t in negative_text]
            if len(negatives) != len(captions):
                raise ValueError(f'{len(negatives)} negative captions for {len(captions)} '
                                 f'images')
            # A "negative" that is the caption itself would teach the wrong label.
            keep = torch.tensor([n != c for n, c in zip(negatives, captions)],
                                device=image_tokens.device)
            if keep.any():
                kept = [n for n, k in zip(negatives, keep.tolist()) if k]
                negative = self.vlm.text(*self.vlm.text.tokenize(kept))
                logits.append(self.itm_logits(image_tokens[keep], negative))
        else:
            text_index, keep = hard_negatives(similarity, allowed, temperature)
            if keep.any():
                logits.append(self.itm_logits(image_tokens[keep],
                                              text.index(text_index[keep])))
        if len(logits) > 1:
            labels.append(torch.zeros(logits[-1].shape[0], device=image_tokens.device))
        image_index, keep = hard_negatives(similarity.t(), allowed.t(), temperature)
        if keep.any():
            logits.append(self.itm_logits(image_tokens[image_index[keep]],
                                          text.index(rows[keep])))
            labels.append(torch.zeros(logits[-1].shape[0], device=image_tokens.device))
        return torch.cat(logits), torch.cat(labels)
