"""Retrieval metrics against hand-written expected values and independent references."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from mmtrain.data.schema import EvalQuery, Item
from mmtrain.eval.metrics import (
    PairResult,
    chance_hit_rate,
    evaluate_rankings,
    headline_k,
    hit_rate_at_k,
    modality_accuracy_at_1,
    summarize,
)


def test_hit_rate_hand_built():
    ranked = np.array([
        [10, 11, 12, 13],   # relevant 12 at rank 3
        [20, 21, 22, 23],   # relevant 20 at rank 1 (and 99 never retrieved)
        [30, 31, 32, 33],   # nothing relevant retrieved
        [40, 41, 42, 43],   # two relevant, first at rank 2: still a single hit
        [-1, -1, -1, -1],   # padding never matches
    ], dtype=np.int64)
    relevant = [[12], {20, 99}, [7], (43, 41), [5]]
    np.testing.assert_array_equal(hit_rate_at_k(ranked, relevant, 1), [0, 1, 0, 0, 0])
    np.testing.assert_array_equal(hit_rate_at_k(ranked, relevant, 2), [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(hit_rate_at_k(ranked, relevant, 3), [1, 1, 0, 1, 0])
    np.testing.assert_array_equal(hit_rate_at_k(ranked, relevant, 4), [1, 1, 0, 1, 0])


def test_hit_rate_rejects_bad_shapes():
    ranked = np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError):
        hit_rate_at_k(ranked, [[1], [2]], 4)      # deeper than the ranking
    with pytest.raises(ValueError):
        hit_rate_at_k(ranked, [[1]], 1)           # one relevant set for two rows


def test_modality_accuracy():
    got = modality_accuracy_at_1(["image", "text", "text,image", "image,text"],
                                 ["image", "image", "image,text", "text"])
    np.testing.assert_array_equal(got, [1, 0, 1, 0])


def test_chance_hand_computed_small_cases():
    assert chance_hit_rate(1, 4, 2) == pytest.approx(0.5)          # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert chance_hit_rate(2, 5, 2) == pytest.approx(0.7)          # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert chance_hit_rate(3, 20, 5) == pytest.approx(1 - 6188 / 15504)  # C(17,5), C(20,5)
    assert chance_hit_rate(2, 3, 2) == 1.0                         # one irrelevant, two slots
    assert chance_hit_rate(0, 10, 5) == 0.0
    assert chance_hit_rate(1, 3, 10) == 1.0                        # k clipped to the pool


@pytest.mark.parametrize("n, big_n", [(1, 7), (3, 50), (10, 1000), (1, 5_600_000)])
def test_chance_k1_is_n_over_n(n, big_n):
    assert chance_hit_rate(n, big_n, 1) == pytest.approx(n / big_n, rel=1e-12, abs=0)


@pytest.mark.parametrize("n, big_n, k", [(1, 5_600_000, 5), (2, 10**12, 5), (3, 7 * 10**13, 10)])
def test_chance_tiny_rate_is_accurate(n, big_n, k):
    # Exact rational reference; a naive float 1 - product is off by ~1e-5 relative at these sizes.
    # (abs=0: pytest.approx's default abs=1e-12 would swallow the error of a 1e-11 rate.)
    exact = 1 - Fraction(math.comb(big_n - n, k), math.comb(big_n, k))
    assert chance_hit_rate(n, big_n, k) == pytest.approx(float(exact), rel=1e-12, abs=0)
    if n == 1:
        assert chance_hit_rate(n, big_n, k) == pytest.approx(k / big_n, rel=1e-12, abs=0)


def test_chance_matches_monte_carlo():
    rng = np.random.default_rng(0)
    n, big_n, k, trials = 3, 20, 5, 40_000
    # ids < n are the relevant ones; a random ranking's top k is a random k-subset
    top_k = np.argsort(rng.random((trials, big_n)), axis=1)[:, :k]
    estimate = (top_k < n).any(axis=1).mean()
    sigma = math.sqrt(estimate * (1 - estimate) / trials)
    assert abs(chance_hit_rate(n, big_n, k) - estimate) < 4 * sigma


def test_chance_rejects_impossible_inputs():
    for args in [(5, 4, 1), (-1, 4, 1), (1, 0, 1), (1, 4, 0)]:
        with pytest.raises(ValueError):
            chance_hit_rate(*args)


def test_headline_k():
    assert headline_k("fashion200k") == 10
    assert headline_k("FashionIQ") == 10
    assert headline_k("mscoco") == 5
    assert headline_k("cirr") == 5


def _query(qid: str, dataset: str, task_id: int, relevant: list[int]) -> EvalQuery:
    return EvalQuery(item=Item(text="q", image=None, modality="text"), relevant=relevant,
                     task_id=task_id, dataset=dataset, dataset_id=0, qid=qid)


def test_evaluate_rankings_two_pairs_by_hand():
    # Pool of 20: ids 100-109 are images, 200-209 texts.
    modality = {**{i: "image" for i in range(100, 110)}, **{i: "text" for i in range(200, 210)}}
    queries = [
        # fashion200k task 3 (i->t), listed first: the output must still put task 0 first
        _query("f1", "fashion200k", 3, [200]),
        _query("m1", "mscoco", 0, [100]),
        _query("m2", "mscoco", 0, [101, 102]),
        _query("f2", "fashion200k", 3, [209]),
        _query("m3", "mscoco", 0, [109]),
    ]
    ranked = np.array([
        # f1: relevant at rank 2, top-1 is a text (right modality)
        [201, 200, 202, 203, 204, 205, 206, 207, 208, 100],
        # m1: relevant at rank 1, top-1 image
        [100, 101, 102, 103, 104, 200, 201, 202, 203, 204],
        # m2: relevant 102 at rank 4, top-1 is a text (wrong modality)
        [200, 103, 104, 102, 105, 106, 107, 108, 101, 201],
        # f2: relevant at rank 10 (hit at the fashion headline R@10 only), top-1 an image (wrong)
        [100, 201, 202, 203, 204, 205, 206, 207, 208, 209],
        # m3: relevant at rank 6 (miss at 5, hit at 10), top-1 image
        [101, 102, 103, 104, 105, 109, 200, 201, 202, 203],
    ], dtype=np.int64)

    results = evaluate_rankings(ranked, queries, modality, pool_size=20)
    assert [r.pair for r in results] == ["mscoco_task0", "fashion200k_task3"]
    coco, fashion = results

    assert (coco.dataset, coco.task_id, coco.task, coco.num_queries, coco.pool_size) == \
        ("mscoco", 0, "t->i", 3, 20)
    assert coco.recall == pytest.approx({1: 1 / 3, 5: 2 / 3, 10: 3 / 3})
    assert coco.modality_acc == pytest.approx(2 / 3)
    assert coco.headline_k == 5 and coco.headline == pytest.approx(2 / 3)
    # chance R@5 per query: n=1 -> 5/20 = 0.25; n=2 -> 1 - C(18,5)/C(20,5) = 1 - 8568/15504
    assert coco.chance_r5 == pytest.approx((0.25 + (1 - 8568 / 15504) + 0.25) / 3)

    assert (fashion.dataset, fashion.task_id, fashion.task, fashion.num_queries) == \
        ("fashion200k", 3, "i->t", 2)
    assert fashion.recall == pytest.approx({1: 0.0, 5: 0.5, 10: 1.0})
    assert fashion.modality_acc == pytest.approx(0.5)
    assert fashion.headline_k == 10 and fashion.headline == pytest.approx(1.0)
    assert fashion.chance_r5 == pytest.approx(0.25)

    summary = summarize(results)
    assert summary["num_pairs"] == 2 and summary["num_queries"] == 5
    assert summary["recall"] == pytest.approx({1: (1 / 3 + 0) / 2, 5: (2 / 3 + 0.5) / 2, 10: 1.0})
    assert summary["modality_acc"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert summary["headline"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert summary["single_modal_query"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert summary["multi_modal_query"] is None


def test_evaluate_rankings_fails_loudly():
    modality = {1: "image", 2: "image", 3: "text"}
    q = [_query("a", "mscoco", 0, [1])]
    with pytest.raises(ValueError, match="not in the searched pool"):
        evaluate_rankings(np.array([[1, 2, 3]]), [_query("a", "mscoco", 0, [7])], modality, 3)
    with pytest.raises(ValueError, match="no relevant"):
        evaluate_rankings(np.array([[1, 2, 3]]), [_query("a", "mscoco", 0, [])], modality, 3)
    with pytest.raises(ValueError, match="depth"):   # R@5 asked of a depth-3 ranking of a pool of 10
        evaluate_rankings(np.array([[1, 2, 3]]), q, modality, pool_size=10)
    # a ranking of the whole pool answers every cutoff
    (r,) = evaluate_rankings(np.array([[2, 3, 1]]), q, modality, pool_size=3)
    assert r.recall == {1: 0.0, 5: 1.0, 10: 1.0} and r.chance_r5 == 1.0


def test_summarize_reproduces_mm_embed_table1():
    # MM-Embed Table 1 (evaluation.md §1.3), last column: Avg. All 52.7, single 56.1, multi 47.0.
    column = [(0, "visualnews", 41.0), (0, "mscoco", 71.3), (0, "fashion200k", 17.1),
              (1, "webqa", 95.9), (2, "edis", 68.8), (2, "webqa", 85.0), (3, "visualnews", 41.3),
              (3, "mscoco", 90.1), (3, "fashion200k", 18.4), (4, "nights", 32.4),
              (6, "oven", 42.1), (6, "infoseek", 42.3), (7, "fashioniq", 25.7), (7, "cirr", 50.0),
              (8, "oven", 64.1), (8, "infoseek", 57.7)]
    results = [PairResult(pair=f"{d}_task{t}", dataset=d, task_id=t, task="", num_queries=1,
                          pool_size=1, headline_k=headline_k(d), headline=v / 100)
               for t, d, v in column]
    s = summarize(results)
    assert round(100 * s["headline"], 1) == 52.7
    assert round(100 * s["single_modal_query"], 1) == 56.1
    assert round(100 * s["multi_modal_query"], 1) == 47.0


def test_pair_result_dict_round_trip():
    r = PairResult(pair="cirr_task7", dataset="cirr", task_id=7, task="(i,t)->i", num_queries=4,
                   pool_size=9, recall={1: 0.25, 5: 0.5}, modality_acc=1.0, chance_r5=0.6,
                   headline_k=5, headline=0.5)
    assert PairResult.from_dict(r.to_dict()) == r
