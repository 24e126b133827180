"""Pooling heads against hand-picked tokens and hand-written reductions."""

from __future__ import annotations

import pytest
import torch

from mmtrain.models.config import PoolingConfig
from mmtrain.models.pooling import (LastTokenPooling, LatentAttentionPooling, MeanPooling,
                                    build_pooling, last_token_index)

# Rows of length 6: 4, 6 and 1 real tokens.
RIGHT = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]])
LEFT = RIGHT.flip(1)


def test_last_token_index_right_and_left_padding():
    assert last_token_index(RIGHT).tolist() == [3, 5, 0]
    assert last_token_index(LEFT).tolist() == [5, 5, 5]


@pytest.mark.parametrize("mask", [RIGHT, LEFT], ids=["right", "left"])
def test_last_token_pooling_picks_the_last_real_token(mask):
    hidden = torch.randn(3, 6, 4)
    # Hand-picked: the last position whose mask is 1, found by a plain loop.
    expected = torch.stack([hidden[b, max(i for i in range(6) if mask[b, i])] for b in range(3)])
    torch.testing.assert_close(LastTokenPooling()(hidden, mask), expected)


def test_mean_pooling_uses_the_pool_mask():
    hidden = torch.randn(3, 6, 4)
    pool = RIGHT.clone()
    pool[1, :2] = 0  # row 1: first two tokens are instruction
    out = MeanPooling()(hidden, RIGHT, pool)
    torch.testing.assert_close(out[1], hidden[1, 2:].mean(0))
    torch.testing.assert_close(out[0], hidden[0, :4].mean(0))


def test_latent_attention_excludes_instruction_tokens():
    """Changing the hidden states of masked-out (instruction) positions leaves the output as is;
    changing a pooled position does not. The head's cross-attention runs from each token to the
    latents, so tokens do not see each other inside the head."""
    torch.manual_seed(0)
    head = LatentAttentionPooling(16, num_latents=8, num_heads=2, head_dim=4).eval()
    hidden = torch.randn(2, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.long)
    pool = mask.clone()
    pool[:, :3] = 0  # instruction: the first three tokens
    base = head(hidden, mask, pool)
    changed = hidden.clone()
    changed[:, :3] = torch.randn(2, 3, 16) * 10
    torch.testing.assert_close(head(changed, mask, pool), base)
    changed[:, 4] += 1.0
    assert not torch.allclose(head(changed, mask, pool), base)
    # And without the pool mask the instruction tokens do count.
    assert not torch.allclose(head(hidden, mask), base)


def test_latent_attention_matches_a_hand_written_forward():
    torch.manual_seed(1)
    d, heads, dh, n_lat = 8, 2, 3, 5
    head = LatentAttentionPooling(d, num_latents=n_lat, num_heads=heads, head_dim=dh, ff_mult=2)
    hidden = torch.randn(2, 4, d)
    pool = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])
    attn_block, ff_block = head.cross_attend_blocks
    a = attn_block.fn
    x = attn_block.norm(hidden)
    ctx = attn_block.norm_context(head.latents)
    q = (x @ a.to_q.weight.T).view(2, 4, heads, dh)
    k, v = (ctx @ a.to_kv.weight.T).chunk(2, dim=-1)
    k, v = k.view(n_lat, heads, dh), v.view(n_lat, heads, dh)
    att = torch.einsum("bnhd,mhd->bhnm", q, k).mul(dh ** -0.5).softmax(-1)
    out = torch.einsum("bhnm,mhd->bnhd", att, v).reshape(2, 4, heads * dh) @ a.to_out.weight.T
    h = hidden + out
    lin1, lin2 = ff_block.fn.net[0], ff_block.fn.net[2]
    u, gate = lin1(ff_block.norm(h)).chunk(2, dim=-1)
    h = h + lin2(u * torch.nn.functional.gelu(gate))
    expected = torch.stack([h[0, 1:].mean(0), h[1, :2].mean(0)])
    torch.testing.assert_close(head(hidden, torch.ones_like(pool), pool), expected, rtol=1e-5, atol=1e-6)


def test_nv_embed_defaults_and_names():
    """512 latents, 8 heads, head width = hidden size (NV-Embed-v1), NV-Embed's parameter names."""
    settings = PoolingConfig(kind="latent_attention")
    assert (settings.num_latents, settings.num_heads, settings.head_dim) == (512, 8, None)
    head = build_pooling(settings, 32)
    assert head.latents.shape == (512, 32)
    assert head.cross_attend_blocks[0].fn.to_q.weight.shape == (8 * 32, 32)
    names = set(dict(head.named_parameters()))
    assert {"latents", "cross_attend_blocks.0.fn.to_q.weight", "cross_attend_blocks.0.fn.to_kv.weight",
            "cross_attend_blocks.0.fn.to_out.weight", "cross_attend_blocks.0.norm_context.weight",
            "cross_attend_blocks.1.fn.net.0.weight", "cross_attend_blocks.1.fn.net.2.weight"} <= names
    with pytest.raises(ValueError, match="pooling.kind"):
        build_pooling(PoolingConfig(kind="cls"), 8)
