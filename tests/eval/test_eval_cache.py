"""Embedding cache: keys, atomic entries, dtype round trip; cached encoding in EvalContext; sharding."""

from __future__ import annotations

import os

import numpy as np
import pytest
from test_eval_support import fake_context, jpeg, write_jpeg

from mmtrain.data.schema import Item
from mmtrain.eval.benchmarks.context import LazyItems, shard_indices
from mmtrain.eval.embed_cache import EmbeddingCache, entry_key, fingerprint_items, fingerprint_model


def test_keys_follow_model_side_and_data(tmp_path):
    items = [Item("a red car", None, "text"), Item(None, jpeg((0, 255, 0)), "image")]
    fp = fingerprint_items(items)
    assert fp == fingerprint_items(list(items))
    assert fp != fingerprint_items([Item("a red car", None, "text", "an instruction"), items[1]])
    assert fp != fingerprint_items([items[0], Item(None, jpeg((0, 0, 255)), "image")])
    assert fp != fingerprint_items(items[::-1])  # row order is part of the data
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"weights")
    m1 = fingerprint_model({"tiny": 1}, ckpt)
    assert m1 != fingerprint_model({"tiny": 2}, ckpt) and m1 != fingerprint_model({"tiny": 1}, None)
    os.utime(ckpt, ns=(1, 1))  # a rewritten checkpoint changes its mtime
    assert m1 != fingerprint_model({"tiny": 1}, ckpt)
    assert len({entry_key(m1, s, fp) for s in ("query", "candidate")}) == 2


def test_entries_are_atomic_and_typed(tmp_path):
    cache = EmbeddingCache(tmp_path, dtype="float16")
    emb = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    assert not cache.contains("ab12")
    cache.save("ab12", emb, {"name": "x"})
    assert cache.contains("ab12") and not list(tmp_path.rglob("*.tmp"))
    back = cache.load("ab12")
    assert back.dtype == np.float32 and np.array_equal(back, cache.round_trip(emb))
    assert np.allclose(back, emb, atol=2e-3) and not np.array_equal(back, emb)  # stored as fp16
    (tmp_path / "ab" / "ab12.json").unlink()  # meta is written last: without it the entry is incomplete
    assert not cache.contains("ab12")
    with pytest.raises(ValueError):
        EmbeddingCache(tmp_path, dtype="int8")


def test_second_encode_is_a_cache_hit(tmp_path):
    items = [Item(f"caption {c}", None, "text") for c in ("red", "green", "blue")]
    ctx, bb = fake_context(cache=EmbeddingCache(tmp_path))
    first = ctx.encode(items, "candidate", "demo")
    n_logged = len(bb.log)
    again = ctx.encode(items, "candidate", "demo")
    assert len(bb.log) == n_logged == 3 and np.array_equal(first, again)
    assert ctx.stats["cache_hits"] == 1 and ctx.stats["cache_misses"] == 1
    ctx.encode(items, "query", "demo")  # the other side is another entry
    assert ctx.stats["cache_misses"] == 2


def test_lazy_items_read_images_late_and_fingerprint_their_files(tmp_path):
    write_jpeg(tmp_path / "a.jpg", (255, 0, 0))
    lazy = LazyItems([("a red car", "a.jpg", "image,text", "instr", 7)], tmp_path)
    fp = lazy.fingerprint()
    item = lazy[0]
    assert item.image == (tmp_path / "a.jpg").read_bytes() and item.instruction == "instr" and item.id == 7
    assert fingerprint_items(lazy) == fp == LazyItems(list(lazy.rows), tmp_path).fingerprint()
    write_jpeg(tmp_path / "a.jpg", (0, 0, 255))
    os.utime(tmp_path / "a.jpg", ns=(10**9, 10**9))
    assert lazy.fingerprint() != fp


def test_shards_are_padded_contiguous_blocks():
    shards = [shard_indices(5, 4, r).tolist() for r in range(4)]
    assert shards == [[0, 1], [2, 3], [4, 4], [4, 4]]  # padded with the last row to ceil(5 / 4)
    assert [shard_indices(4, 2, r).tolist() for r in range(2)] == [[0, 1], [2, 3]]
    with pytest.raises(ValueError):
        shard_indices(0, 2, 0)
