"""Negatives table: round trip, atomic replacement, C1-keeping merge, and the MM-Embed sampler."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from mmtrain.data.negatives import Negative, NegativesTable, sample_negatives
from mmtrain.mining.table import merge_groups, write_table

MINED = {
    7: [Negative(70, 1, 0.9, "C1"), Negative(71, 2, 0.8, "C1"), Negative(72, 47, 0.2, "C2")],
    3: [Negative(30, 49, 0.1, "C2")],
    5: [],
}


def test_round_trip_and_meta(tmp_path):
    path = write_table(tmp_path / "t", MINED, {"stage": "rand", "rule": "modality_aware"})
    t = NegativesTable(path)
    assert len(t) == 3 and t.meta["stage"] == "rand" and t.meta["num_negatives"] == 4
    assert t.meta["queries_without_negatives"] == 1 and t.meta["negatives_per_group"]["C1"] == 2
    assert t.lookup(7) == {"C1": [(70, 1, pytest.approx(0.9)), (71, 2, pytest.approx(0.8))],
                           "C2": [(72, 47, pytest.approx(0.2))]}
    assert t.lookup(5) == {} and t.lookup(4) == {}            # mined without negatives / never mined
    assert t.as_dict()[3] == [Negative(30, 49, pytest.approx(0.1), "C2")]


def test_rewrite_replaces_whole_and_leaves_no_temporary(tmp_path):
    write_table(tmp_path / "t", MINED, {})
    write_table(tmp_path / "t", {1: [Negative(10, 1, 0.5, "C2")]}, {"v": 2})
    t = NegativesTable(tmp_path / "t")
    assert len(t) == 1 and t.meta["v"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_missing_table_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="mining"):
        NegativesTable(tmp_path / "nope")


def test_merge_keeps_c1_from_the_old_table_and_takes_c2_fresh(tmp_path):
    old = NegativesTable(write_table(tmp_path / "old", MINED, {}))
    fresh = {7: [Negative(99, 1, 0.9, "C1"), Negative(98, 48, 0.3, "C2")], 3: [], 8: [Negative(80, 46, 0.1, "C2")]}
    merged = {q: [(n.id, n.rank, n.group) for n in negs] for q, negs in merge_groups(old, ["C1"], fresh).items()}
    assert merged[7] == [(70, 1, "C1"), (71, 2, "C1"), (98, 48, "C2")]
    assert merged[3] == [] and merged[8] == [(80, 46, "C2")] and merged[5] == []


def test_modality_aware_sampler_draws_c1_and_c2_half_each():
    groups = {"C1": [(1, 1, 0.9), (2, 2, 0.8), (3, 3, 0.7), (4, 4, 0.6)], "C2": [(9, 47, 0.1)]}
    rng = random.Random(0)
    draws = Counter(sample_negatives(groups, 1, rng)[0] for _ in range(8000))
    c2_share = draws[9] / 8000
    assert abs(c2_share - 0.5) < 0.03                        # the group is the coin, not the pool size
    assert all(abs(draws[i] / 8000 - 0.125) < 0.02 for i in (1, 2, 3, 4))
    assert sample_negatives({"C2": [(9, 47, 0.1)]}, 1, rng) == [9]           # one group empty
    assert sample_negatives({}, 1, rng) == []                                 # none: in-batch only
    two = sample_negatives(groups, 2, rng)
    assert len(set(two)) == 2                                                 # without replacement
    assert sample_negatives({"rank": [(5, 70, 0.3)], "topk": [(6, 2, 0.5)]}, 1, rng, "first") == [6]


def test_modality_aware_sampler_falls_back_to_uniform_for_other_rules():
    # The continual stage's text queries were mined by the positive-aware rule (group "topk" only).
    topk = {"topk": [(11, 1, 0.8), (12, 2, 0.7), (13, 4, 0.6)]}
    rng = random.Random(0)
    draws = Counter(sample_negatives(topk, 1, rng)[0] for _ in range(6000))
    assert set(draws) == {11, 12, 13} and all(abs(c / 6000 - 1 / 3) < 0.03 for c in draws.values())
    # A query with C1/C2 never draws from another group.
    assert {sample_negatives({"C1": [(1, 1, 0.9)], "topk": [(2, 1, 0.9)]}, 1, rng)[0] for _ in range(50)} == {1}
