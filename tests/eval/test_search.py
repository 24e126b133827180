"""exact_topk against a brute-force numpy reference (full score matrix + stable sort)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmtrain.eval.search import exact_topk

BACKENDS = ["torch", "faiss"]


def reference_topk(q: np.ndarray, c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Full Q x N matrix in float64, rows sorted by (-score, index); the documented order."""
    scores = q.astype(np.float64) @ c.astype(np.float64).T
    idx = np.broadcast_to(np.arange(c.shape[0]), scores.shape)
    order = np.lexsort((idx, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.fixture(scope="module")
def gaussian():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((37, 16)).astype(np.float32)
    c = rng.standard_normal((500, 16)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    return q, c


@pytest.fixture(scope="module")
def integer_ties():
    """Small integer vectors: float32 dot products are exact and many scores tie."""
    rng = np.random.default_rng(1)
    q = rng.integers(-2, 3, (41, 6)).astype(np.float32)
    c = rng.integers(-2, 3, (300, 6)).astype(np.float32)
    return q, c


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block_size", [1, 7, 37, 4096])  # 7: smaller than Q=37, does not divide it
def test_matches_bruteforce_on_random_data(gaussian, backend, block_size):
    q, c = gaussian
    scores, ids = exact_topk(q, c, 10, block_size=block_size, backend=backend)
    ref_scores, ref_ids = reference_topk(q, c, 10)
    assert scores.shape == (37, 10) and scores.dtype == np.float32
    assert ids.shape == (37, 10) and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block_size", [5, 4096])
def test_ties_keep_lowest_index_first(integer_ties, backend, block_size):
    q, c = integer_ties
    ref_scores, ref_ids = reference_topk(q, c, 7)
    # the fixture must really produce ties inside and at the edge of the top 7
    assert (ref_scores[:, :-1] == ref_scores[:, 1:]).any(axis=1).all()
    scores, ids = exact_topk(q, c, 7, block_size=block_size, backend=backend)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_wider_than_fetch_margin(backend):
    # 200 identical candidates after 50 worse ones: the k-th score ties with far more candidates
    # than the search fetches beyond k, so the full-ranking fallback must pick indices 50, 51, ...
    c = np.concatenate([np.full((50, 4), 0.5, np.float32), np.ones((200, 4), np.float32)])
    q = np.ones((3, 4), np.float32)
    scores, ids = exact_topk(q, c, 5, block_size=2, backend=backend)
    np.testing.assert_array_equal(ids, np.tile(np.arange(50, 55), (3, 1)))
    np.testing.assert_array_equal(scores, np.full((3, 5), 4.0, np.float32))


@pytest.mark.parametrize("backend", ["torch", "faiss", "auto"])
def test_k_larger_than_pool_is_clipped(gaussian, backend):
    q, c = gaussian
    scores, ids = exact_topk(q, c[:6], 50, block_size=4, backend=backend)
    ref_scores, ref_ids = reference_topk(q, c[:6], 6)
    assert ids.shape == (37, 6)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_torch_and_half_precision_inputs(gaussian):
    q, c = gaussian
    q16, c16 = q.astype(np.float16), c.astype(np.float16)
    ref_scores, ref_ids = reference_topk(q16.astype(np.float32), c16.astype(np.float32), 5)
    for qi, ci in [(q16, c16), (torch.from_numpy(q16), torch.from_numpy(c16)),
                   (torch.from_numpy(q).to(torch.float16), torch.from_numpy(c).to(torch.float16))]:
        scores, ids = exact_topk(qi, ci, 5, block_size=8)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_backends_agree_with_each_other(gaussian):
    q, c = gaussian
    a = exact_topk(q, c, 20, backend="torch", block_size=16)
    b = exact_topk(q, c, 20, backend="faiss", block_size=16)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)


def test_empty_query_set(gaussian):
    _, c = gaussian
    scores, ids = exact_topk(np.zeros((0, 16), np.float32), c, 3)
    assert scores.shape == (0, 3) and ids.shape == (0, 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=0), "k must be"),
    (dict(k=3, backend="annoy"), "backend"),
    (dict(k=3, block_size=0), "block_size"),
])
def test_bad_arguments(gaussian, kwargs, match):
    q, c = gaussian
    with pytest.raises(ValueError, match=match):
        exact_topk(q, c, **kwargs)


def test_bad_inputs(gaussian):
    q, c = gaussian
    with pytest.raises(ValueError, match="dimension"):
        exact_topk(q, c[:, :8], 3)
    with pytest.raises(ValueError, match="empty"):
        exact_topk(q, c[:0], 3)
    bad = q.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        exact_topk(bad, c, 3)


def test_merge_of_chunk_results_equals_one_search_with_ties():
    from mmtrain.eval.search import merge_topk

    rng = np.random.default_rng(3)
    # Few distinct values: many ties, which must go to the lower pool index across chunk borders.
    cands = rng.integers(0, 3, size=(50, 4)).astype(np.float32)
    queries = rng.integers(0, 3, size=(7, 4)).astype(np.float32)
    bounds = [0, 13, 14, 40, 50]
    parts = [exact_topk(queries, cands[a:b], 6) for a, b in zip(bounds, bounds[1:])]
    scores, ids = merge_topk([s for s, _ in parts], [i + a for (_, i), a in zip(parts, bounds)], 6)
    full = queries @ cands.T
    for q in range(len(queries)):
        expected = sorted(range(50), key=lambda c: (-full[q, c], c))[:6]
        assert ids[q].tolist() == expected
        np.testing.assert_allclose(scores[q], full[q, expected])
