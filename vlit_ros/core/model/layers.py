"""Transformer building blocks shared by the ViT, the text encoder, the fusion and the heads."""

from typing import Optional

import torch
from torch import nn
import torch.nn.functional as F


class Attention(nn.Module):
    """
    Multi-head attention over `scaled_dot_product_attention`.

    Self-attention when `context_dim` is None (one fused q/k/v projection), otherwise
    cross-attention from `x` to a context of width `context_dim`.
    """

    def __init__(self, dim: int, heads: int, context_dim: Optional[int] = None,
                 dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.cross = context_dim is not None
        if self.cross:
            self.query = nn.Linear(dim, dim)
            self.key_value = nn.Linear(context_dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Attend from `x` (B, L, dim) to itself or to `context` (B, S, context_dim).

        `key_mask` (B, S) is True for keys that may be attended to (False: padding).
        """
        batch, length, dim = x.shape
        head_dim = dim // self.heads
        if self.cross:
            query = self.query(x).view(batch, length, self.heads, head_dim).transpose(1, 2)
            key, value = self.key_value(context).view(
                batch, context.shape[1], 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        else:
            query, key, value = self.qkv(x).view(
                batch, length, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(query, key, value, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(batch, length, dim))


class FeedForward(nn.Module):
    """The Transformer MLP: Linear -> GELU -> Linear."""

    def __init__(self, dim: int, mlp_ratio: float, dropout: float = 0.0):
        super().__init__()
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """
    Pre-LayerNorm block: self-attention, optional cross-attention, MLP, each residual.

    With `context_dim` set the block also attends to a context (image tokens); the context
    is expected to be normalised by the caller once, not by every block.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float = 0.0,
                 context_dim: Optional[int] = None):
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attention = Attention(dim, heads, dropout=dropout)
        self.norm_cross = nn.LayerNorm(dim) if context_dim is not None else None
        self.cross_attention = Attention(dim, heads, context_dim, dropout) \
            if context_dim is not None else None
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_ratio, dropout)
        self.residual_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor] = None,
                context: Optional[torch.Tensor] = None,
                context_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.residual_dropout(self.self_attention(self.norm_self(x), key_mask=key_mask))
        if self.cross_attention is not None:
            x = x + self.residual_dropout(self.cross_attention(self.norm_cross(x), context,
                                                               key_mask=context_mask))
        return x + self.mlp(self.norm_mlp(x))


def init_weights(module: nn.Module) -> None:
    """Initialise Linear / Embedding weights like ViT and BERT (normal, std 0.02)."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.trunc_normal_(sub.weight, std=0.02)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding):
            nn.init.trunc_normal_(sub.weight, std=0.02)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
