"""What every benchmark adapter runs on: distributed, cached encoding and exact, sharded search.

All ranks do the same calls in the same order (no rank-0-only work while others wait, open_clip
#1121). Work is split by contiguous shards: a list of n rows is padded to a multiple of the world size
by repeating the last row, each rank handles its shard, the results are all-gathered and the padding
dropped (VLM2Vec ``eval.py``; evaluation.md §0). Every rank ends with the full result.

Search is exact inner product (``exact_topk``): each rank searches every query against its shard of
the candidates, the per-shard top-k lists are gathered and merged by (score desc, candidate index asc),
which is exactly ``exact_topk``'s order over the whole pool. The backend is chosen from the whole pool
size, so a shard is searched the way the whole pool would be.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmtrain.data.schema import Item
from mmtrain.eval.embed_cache import CACHE_VERSION, EmbeddingCache, entry_key, fingerprint_items
from mmtrain.eval.search import AUTO_FAISS_MIN_CANDIDATES, exact_topk, merge_topk
from mmtrain.models.encoder import encode_items

log = logging.getLogger(__name__)


class LazyItems(Sequence[Item]):
    """Items whose images stay on disk until an encoder batch needs them (a 5.6M pool does not fit
    in memory with its images). Rows: ``(text, image path or None, modality, instruction, id)``;
    relative paths are under ``image_root``."""

    def __init__(self, rows: list[tuple[str | None, str | None, str, str | None, int]],
                 image_root: str | os.PathLike | None = None):
        self.rows = rows
        self.image_root = Path(image_root) if image_root is not None else None

    def __len__(self) -> int:
        return len(self.rows)

    def path(self, i: int) -> Path | None:
        p = self.rows[i][1]
        if p is None:
            return None
        return self.image_root / p if self.image_root is not None and not os.path.isabs(p) else Path(p)

    def __getitem__(self, i: int) -> Item:  # type: ignore[override]
        text, _, modality, instruction, item_id = self.rows[i]
        path = self.path(i)
        return Item(text, path.read_bytes() if path is not None else None, modality, instruction, item_id)

    def fingerprint(self) -> str:
        """Texts, instructions, modalities and image identity (absolute path, size, mtime): a hit
        reads no image, and a regenerated image at the same path still changes the key."""
        h = hashlib.sha256(f"lazy/{CACHE_VERSION}/{len(self.rows)}".encode())
        for i, (text, _, modality, instruction, _) in enumerate(self.rows):
            path = self.path(i)
            ident = None
            if path is not None:
                st = path.stat()
                ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
            h.update(repr((text, instruction, modality, ident)).encode())
        return h.hexdigest()


class _Subset(Sequence[Item]):
    """``items[indices[j]]`` at position j, read when asked (a lazy pool stays lazy)."""

    def __init__(self, items: Sequence[Item], indices: np.ndarray):
        self.items, self.indices = items, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> Item:  # type: ignore[override]
        return self.items[int(self.indices[j])]


def shard_indices(n: int, world_size: int, rank: int) -> np.ndarray:
    """Rank ``rank``'s contiguous shard of ``range(n)``, padded with ``n - 1`` to ceil(n / world)."""
    if n < 1:
        raise ValueError("nothing to shard")
    per = -(-n // world_size)
    return np.minimum(np.arange(rank * per, (rank + 1) * per), n - 1)


def resolve_backend(backend: str, pool_size: int) -> str:
    if backend != "auto":
        return backend
    return "torch" if pool_size < AUTO_FAISS_MIN_CANDIDATES else "faiss"


class EvalContext:
    """Encoder + processor + fabric + cache, shared by the benchmark adapters of one run.

    ``fabric`` may be None (one process, no collectives; tests and notebooks).
    """

    def __init__(self, encoder: torch.nn.Module, processor: Callable[[list[Item]], dict], *,
                 model_fp: str, fabric: Any = None, cache: EmbeddingCache | None = None,
                 batch_size: int = 256, num_workers: int = 0, search_backend: str = "auto",
                 search_block_size: int = 4096, run_dir: str | os.PathLike = ".",
                 reranker: Any = None):
        self.encoder, self.processor = encoder, processor
        self.model_fp = model_fp
        self.fabric = fabric
        self.cache = cache
        self.batch_size, self.num_workers = batch_size, num_workers
        self.search_backend, self.search_block_size = search_backend, search_block_size
        self.run_dir = Path(run_dir)
        self.reranker = reranker
        self.stats = {"encoded_items": 0, "cache_hits": 0, "cache_misses": 0, "encode_seconds": 0.0,
                      "search_seconds": 0.0}

    # ------------------------------------------------------------ distribution
    @property
    def world_size(self) -> int:
        return 1 if self.fabric is None else self.fabric.world_size

    @property
    def rank(self) -> int:
        return 0 if self.fabric is None else self.fabric.global_rank

    @property
    def is_global_zero(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return torch.device("cpu") if self.fabric is None else self.fabric.device

    def barrier(self) -> None:
        if self.world_size > 1:
            self.fabric.barrier()

    def agree(self, value: Any) -> Any:
        """Rank 0's value on every rank (e.g. "is this entry cached?", which a shared filesystem may
        answer differently per rank for a moment: all ranks must take the same branch)."""
        return value if self.world_size == 1 else self.fabric.broadcast(value, src=0)

    def _all_gather(self, arr: np.ndarray) -> np.ndarray:
        """(world, *arr.shape) from every rank's equally shaped ``arr``."""
        if self.world_size == 1:
            return arr[None]
        out = self.fabric.all_gather(torch.from_numpy(np.ascontiguousarray(arr)).to(self.device))
        return out.cpu().numpy()

    def map_sharded(self, n: int, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``fn(indices) -> rows`` on each rank's padded shard of ``range(n)``; the gathered rows for
        indices 0..n-1 in order, padding dropped (first occurrence of each index kept)."""
        local_idx = shard_indices(n, self.world_size, self.rank)
        local = np.asarray(fn(local_idx))
        if len(local) != len(local_idx):
            raise ValueError(f"sharded function returned {len(local)} rows for {len(local_idx)} indices")
        rows = self._all_gather(local).reshape(-1, *local.shape[1:])
        idx = np.concatenate([shard_indices(n, self.world_size, r) for r in range(self.world_size)])
        _, first = np.unique(idx, return_index=True)
        return rows[first]

    # ------------------------------------------------------------ encoding
    def encode(self, items: Sequence[Item], side: str, name: str = "") -> np.ndarray:
        """(n, d) float32 embeddings of ``items`` (``side``: "query" or "candidate"), from the cache
        when it holds them, else encoded by all ranks and stored by rank 0."""
        if side not in ("query", "candidate"):
            raise ValueError(f"side must be 'query' or 'candidate', got {side!r}")
        if len(items) == 0:
            raise ValueError(f"no items to encode ({name or side})")
        key = entry_key(self.model_fp, side, fingerprint_items(items))
        if self.agree(self.cache is not None and self.cache.contains(key)):
            self.stats["cache_hits"] += 1
            log.info("%s (%s, %d items): cached embeddings %s", name, side, len(items), key[:12])
            return self.cache.load(key)
        self.stats["cache_misses"] += 1
        start = time.perf_counter()
        emb = self.map_sharded(len(items), lambda idx: self._encode_rows(items, idx, side))
        self.stats["encode_seconds"] += time.perf_counter() - start
        if self.cache is not None:
            emb = self.cache.round_trip(emb)
            if self.is_global_zero:
                self.cache.save(key, emb, {"name": name, "side": side, "count": len(items),
                                           "model_fp": self.model_fp, "world_size": self.world_size})
            self.barrier()  # the entry is complete before anyone may look for it again
        return emb

    def _encode_rows(self, items: Sequence[Item], indices: np.ndarray, side: str) -> np.ndarray:
        emb = encode_items(self.encoder, self.processor, _Subset(items, indices), query=side == "query",
                           batch_size=self.batch_size, device=self.device, num_workers=self.num_workers,
                           autocast=self.fabric.autocast if self.fabric is not None else contextlib.nullcontext)
        self.stats["encoded_items"] += len(indices)
        return emb.numpy()

    # ------------------------------------------------------------ search
    def search(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the whole pool, candidates sharded over ranks: (scores, indices) (Q, k')."""
        start = time.perf_counter()
        n = len(candidates)
        backend = resolve_backend(self.search_backend, n)
        kk = min(k, n)
        if self.world_size == 1:
            out = exact_topk(queries, candidates, kk, backend=backend, block_size=self.search_block_size)
            self.stats["search_seconds"] += time.perf_counter() - start
            return out
        per = -(-n // self.world_size)
        lo, hi = self.rank * per, min(n, (self.rank + 1) * per)
        scores = np.full((len(queries), kk), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), kk), -1, dtype=np.int64)
        if lo < hi:
            s, i = exact_topk(queries, candidates[lo:hi], kk, backend=backend, block_size=self.search_block_size)
            scores[:, :s.shape[1]], ids[:, :s.shape[1]] = s, i + lo
        out = merge_topk(list(self._all_gather(scores)), list(self._all_gather(ids)), kk)
        self.stats["search_seconds"] += time.perf_counter() - start
        return out

    def row_ranks(self, queries: np.ndarray, candidates: np.ndarray, rows: list[np.ndarray]) -> np.ndarray:
        """Per row r: the rank of candidate ``rows[r][0]`` among ``rows[r]`` when query r scores them
        (0 = first). Ties go to the earlier candidate, as ``np.argmax`` does (MMEB: the first
        candidate is the positive, correct iff argmax == 0)."""
        def ranks(idx: np.ndarray) -> np.ndarray:
            out = np.empty(len(idx), dtype=np.int64)
            for j, r in enumerate(idx):
                s = candidates[rows[r]] @ queries[r]
                out[j] = int(np.count_nonzero(s > s[0]))
            return out
        if len(rows) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(rows)} candidate lists")
        return self.map_sharded(len(rows), ranks)

