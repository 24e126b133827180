"""Pooling: a sequence of LLM hidden states -> one vector per item (recipes.md §7).

- ``last``: the hidden state of the last real token. With the EOS-appending templates this is the
  ``<eos>`` state (LLaVa-E, mmE5, recipes.md §7.1); with the one-word templates it is the state after
  "... in one word:" (LLaVa-P / E5-V, §7.2). The index comes from the attention mask, so left and
  right padding (and no padding) all pick the same token.
- ``mean``: masked mean over the pool mask (NV-Retriever, Tevatron ``mean``).
- ``latent_attention``: NV-Embed's latent-attention head (§7.3): every token attends to a trainable
  latent array (512 latents, 8 heads), a GEGLU feed-forward follows (both pre-norm, residual), then a
  masked mean over the *pool mask*, which excludes the instruction tokens (they stay visible to the
  LLM's own attention; the processor builds the mask, mmtrain/models/mllm/processor.py).

Every head returns unnormalised vectors; the encoder L2-normalises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmtrain.models.config import PoolingConfig


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) position of the last real token of each row, whatever side the padding is on.

    Tevatron and VLM2Vec branch on "is every row's last mask entry 1" (left padding: position -1;
    else ``mask.sum(1) - 1``); the position of the last 1 is the same in both cases and also right
    for a row with padding inside (none of ours have it, but nothing silently breaks if one does).
    """
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.flip(1).int().argmax(dim=1)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    # clamp: a row whose mask is empty (all instruction, truncated) gives 0, not NaN.
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class LastTokenPooling(nn.Module):
    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                pool_mask: torch.Tensor | None = None) -> torch.Tensor:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last_token_index(attention_mask)]


class MeanPooling(nn.Module):
    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                pool_mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_mean(hidden, attention_mask if pool_mask is None else pool_mask)


# The latent-attention head is written out (rather than nn.MultiheadAttention) because NV-Embed's
# inner width is heads x head_dim = 8 x 4096, independent of the model width, which
# MultiheadAttention cannot express; the submodule names mirror NV-Embed's ``LatentAttentionModel``
# (cross_attend_blocks.{0,1}.{norm,norm_context,fn.*}, latents) so its released head loads as is.
class _PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module, context_dim: int | None = None):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim) if context_dim is not None else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(x)
        if self.norm_context is None:
            return self.fn(x)
        return self.fn(x, context=self.norm_context(context))


class _CrossAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.to_q(x)
        k, v = self.to_kv(context).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # queries = tokens, keys = latents: no mask
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class _GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gates = x.chunk(2, dim=-1)
        return x * F.gelu(gates)


class _FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim * mult * 2), _GEGLU(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LatentAttentionPooling(nn.Module):
    """NV-Embed: ``h += CrossAttn(h, latents)``; ``h += FF(h)``; masked mean over the pool mask."""

    def __init__(self, hidden_size: int, num_latents: int = 512, num_heads: int = 8,
                 head_dim: int | None = None, ff_mult: int = 4):
        super().__init__()
        head_dim = head_dim or hidden_size
        self.cross_attend_blocks = nn.ModuleList([
            _PreNorm(hidden_size, _CrossAttention(hidden_size, hidden_size, num_heads, head_dim),
                     context_dim=hidden_size),
            _PreNorm(hidden_size, _FeedForward(hidden_size, ff_mult)),
        ])
        self.latents = nn.Parameter(torch.randn(num_latents, hidden_size))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                pool_mask: torch.Tensor | None = None) -> torch.Tensor:
        attend, feed_forward = self.cross_attend_blocks
        latents = self.latents.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
        hidden = attend(hidden, context=latents) + hidden
        hidden = feed_forward(hidden) + hidden
        return masked_mean(hidden, attention_mask if pool_mask is None else pool_mask)


def build_pooling(settings: PoolingConfig, hidden_size: int) -> nn.Module:
    builders = {
        "last": lambda: LastTokenPooling(),
        "mean": lambda: MeanPooling(),
        "latent_attention": lambda: LatentAttentionPooling(
            hidden_size, settings.num_latents, settings.num_heads, settings.head_dim, settings.ff_mult),
    }
    if settings.kind not in builders:
        raise ValueError(f"pooling.kind must be one of {sorted(builders)}, got {settings.kind!r}")
    return builders[settings.kind]()
