"""Exact (flat) inner-product top-k search over an in-memory candidate pool.

M-BEIR is scored with exact search on L2-normalised embeddings (evaluation.md §0): approximate
indexes lower recall. This module does no normalisation itself; normalise before calling.

Result order (both backends, guaranteed): each row is sorted by descending score, equal scores by
ascending candidate index, and when several candidates tie at the k-th score the lowest indices are
kept. "Equal" means equal as computed in float32 by the backend; two candidates with identical
vectors can in rare cases get scores that differ in the last bit (BLAS kernels accumulate in
different orders), and results near such ulp-level ties may then differ between backends or block
sizes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

# environment.md §6 and §11: torch matmul + topk matches faiss below ~1e5 candidates, faiss is
# about 2x faster above.
AUTO_FAISS_MIN_CANDIDATES = 100_000
BACKENDS = ("auto", "torch", "faiss")

# Extra results fetched beyond k so that a tie at the k-th score can be resolved by candidate
# index without a second search in the common case (ties wider than this fall back to a full sort).
_TIE_MARGIN = 16
# Row-times-candidates budget (elements) for the full-ranking fallback, to bound its memory.
_FULL_RANK_ELEMENTS = 1 << 24

# search(block (b, d) float32, kk) -> (scores (b, kk) float32, indices (b, kk) int64), exact top-kk.
Searcher = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def exact_topk(queries: np.ndarray | torch.Tensor, candidates: np.ndarray | torch.Tensor, k: int, *,
               block_size: int = 4096, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of every query against every candidate.

    Args:
        queries: (Q, d) float array or tensor (any float dtype; searched in float32).
        candidates: (N, d) float array or tensor.
        k: results per query; clipped to N.
        block_size: queries scored per step. The torch backend holds a (block_size, N) float32 score
            block, so the full Q x N matrix is never materialised.
        backend: "torch" (matmul + topk per block), "faiss" (IndexFlatIP), or "auto" (torch below
            AUTO_FAISS_MIN_CANDIDATES candidates, faiss from there on).

    Returns:
        (scores (Q, k') float32, indices (Q, k') int64) with k' = min(k, N), best first; tie order as
        in the module docstring.
    """
    q = _as_float32_matrix(queries, "queries")
    c = _as_float32_matrix(candidates, "candidates")
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"dimension mismatch: queries have d={q.shape[1]}, candidates d={c.shape[1]}")
    if c.shape[0] == 0:
        raise ValueError("candidates is empty")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for name, arr in (("queries", q), ("candidates", c)):
        # A NaN makes every comparison false: faiss would return -1 ids, torch arbitrary ones.
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinite values")

    n = c.shape[0]
    k = min(k, n)
    if backend == "auto":
        backend = "torch" if n < AUTO_FAISS_MIN_CANDIDATES else "faiss"
    search = _torch_searcher(c) if backend == "torch" else _faiss_searcher(c)
    k_fetch = min(n, k + _TIE_MARGIN)

    out_scores = np.empty((q.shape[0], k), dtype=np.float32)
    out_ids = np.empty((q.shape[0], k), dtype=np.int64)
    for start in range(0, q.shape[0], block_size):
        block = q[start:start + block_size]
        scores, ids = _sort_rows(*search(block, k_fetch))
        # The fetched list is complete for a row unless its k-th score equals the smallest fetched
        # score: then unfetched candidates may tie with it and have lower indices.
        unresolved = (scores[:, k - 1] == scores[:, -1]) if k_fetch < n else np.zeros(len(block), bool)
        scores, ids = scores[:, :k].copy(), ids[:, :k].copy()
        rows = np.flatnonzero(unresolved)
        if len(rows):
            scores[rows], ids[rows] = _full_rank(search, block[rows], k, n)
        out_scores[start:start + len(block)] = scores
        out_ids[start:start + len(block)] = ids
    return out_scores, out_ids


def merge_topk(scores: Sequence[np.ndarray], ids: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top k of several per-chunk top-k lists of the same queries (``ids`` already indices into the
    whole pool), in ``exact_topk``'s order: a chunked or sharded search then equals one search over all
    candidates. Padding entries (score -inf) sort last."""
    merged = _sort_rows(np.concatenate(scores, axis=1), np.concatenate(ids, axis=1))
    return merged[0][:, :k], merged[1][:, :k]


def _as_float32_matrix(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """A C-contiguous (rows, d) float32 numpy view or copy of ``x``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to(device="cpu", dtype=torch.float32).numpy()
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, d), got shape {arr.shape}")
    return arr


def _sort_rows(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by descending score, then ascending index (np.lexsort: last key is primary)."""
    order = np.lexsort((ids, -scores), axis=-1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _full_rank(search: Searcher, rows: np.ndarray, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of ``rows`` from a ranking of all n candidates (for ties wider than the margin)."""
    chunk = max(1, _FULL_RANK_ELEMENTS // n)
    parts = [_sort_rows(*search(rows[i:i + chunk], n)) for i in range(0, len(rows), chunk)]
    return (np.concatenate([s[:, :k] for s, _ in parts]),
            np.concatenate([i[:, :k] for _, i in parts]))


def _torch_searcher(candidates: np.ndarray) -> Searcher:
    with warnings.catch_warnings():
        # A read-only input (e.g. a memmap) triggers a warning; the tensor is never written to.
        warnings.simplefilter("ignore", UserWarning)
        cand_t = torch.from_numpy(candidates)

    def search(block: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            scores = torch.from_numpy(block) @ cand_t.T
            values, ids = torch.topk(scores, kk, dim=1, largest=True, sorted=True)
        return values.numpy(), ids.numpy().astype(np.int64, copy=False)

    return search


def _faiss_searcher(candidates: np.ndarray) -> Searcher:
    import faiss  # imported lazily: only large pools need it

    index = faiss.IndexFlatIP(candidates.shape[1])
    index.add(candidates)

    def search(block: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = index.search(np.ascontiguousarray(block), kk)
        return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)

    return search
