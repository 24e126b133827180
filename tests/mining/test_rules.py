"""Negative rules on hand-built rankings; every expected list is written out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from mmtrain.mining.rules import FixedRankRule, ModalityAwareRule, PositiveAwareRule, Ranking

T, I, IT = "text", "image", "image,text"


def ranking(mods: list[str], positives: set[int], desired: str, scores=None, pos_scores=()) -> Ranking:
    ids = np.arange(100, 100 + len(mods), dtype=np.int64)        # candidate at rank r has id 99 + r
    scores = np.linspace(1.0, 0.0, len(mods)) if scores is None else np.asarray(scores, dtype=float)
    return Ranking(ids, scores, mods, frozenset(positives), desired, tuple(pos_scores))


def as_tuples(negs):
    return [(n.id, n.rank, n.group) for n in negs]


def test_c1_above_positive_c2_below_k_prime():
    # ranks 1-3 text (wrong for t->i), rank 4 the positive image, 5-45 images, 46-50 mixed.
    mods = [T, T, IT, I] + [I] * 41 + [I, T, I, IT, I]
    got = as_tuples(ModalityAwareRule(top_k=50, k_prime=45)(ranking(mods, {103}, I)))
    assert got == [(100, 1, "C1"), (101, 2, "C1"), (102, 3, "C1"),           # above the positive, wrong modality
                   (145, 46, "C2"), (147, 48, "C2"), (149, 50, "C2")]         # ranks 46-50 with the image modality


def test_positive_not_in_top_50_makes_every_wrong_modality_candidate_c1():
    mods = [T, I, T, I] + [I] * 46 + [T] * 10                 # 60 ranked, positive far below
    got = as_tuples(ModalityAwareRule()(ranking(mods, {999}, I)))
    assert [g for g in got if g[2] == "C1"] == [(100, 1, "C1"), (102, 3, "C1")]
    assert [g[1] for g in got if g[2] == "C2"] == [46, 47, 48, 49, 50]        # depth 50: rank 51+ ignored


def test_several_positives_best_ranked_counts_and_none_become_negatives():
    mods = [T, I, T, I, T] + [I] * 45
    got = as_tuples(ModalityAwareRule()(ranking(mods, {101, 103, 146}, I)))
    # best positive at rank 2: only rank 1 is C1; positives (ranks 2, 4, 47) are never negatives.
    assert got == [(100, 1, "C1"), (145, 46, "C2"), (147, 48, "C2"), (148, 49, "C2"), (149, 50, "C2")]


def test_c1_empty_when_the_model_is_modality_aware():
    mods = [I] * 50
    got = as_tuples(ModalityAwareRule()(ranking(mods, {100}, I)))
    assert [g[2] for g in got] == ["C2"] * 5


def test_image_text_is_not_image():
    # desired image,text: an "image" candidate is the wrong modality, exactly as a text is.
    mods = [I, T, IT] + [IT] * 47
    got = as_tuples(ModalityAwareRule()(ranking(mods, {102}, IT)))
    assert got[:2] == [(100, 1, "C1"), (101, 2, "C1")]


def test_ties_follow_the_given_order():
    mods = [T, T, I] + [I] * 47
    got = as_tuples(ModalityAwareRule()(ranking(mods, {102}, I, scores=[0.5] * 50)))
    assert got[:2] == [(100, 1, "C1"), (101, 2, "C1")]


def test_positive_aware_keeps_top_k_below_95_percent_of_the_positive():
    scores = [0.99, 0.96, 0.95, 0.94, 0.90, 0.80, 0.70, 0.60]
    r = ranking([T] * 8, {100}, T, scores=scores, pos_scores=(0.99, 1.0))
    # ceiling 0.95 * min(0.99, 1.0) = 0.9405: 0.96 and 0.95 are too close (likely false negatives).
    got = as_tuples(PositiveAwareRule(max_ratio=0.95, num_negatives=3, top_k=8)(r))
    assert got == [(103, 4, "topk"), (104, 5, "topk"), (105, 6, "topk")]
    with pytest.raises(ValueError, match="positive scores"):
        PositiveAwareRule()(ranking([T] * 8, {100}, T))


def test_fixed_rank_steps_past_a_positive():
    r = ranking([I] * 80, {169}, I)                    # rank 70 is a positive
    assert as_tuples(FixedRankRule(rank=70)(r)) == [(170, 71, "rank")]
    assert as_tuples(FixedRankRule(rank=70)(ranking([I] * 80, set(), I))) == [(169, 70, "rank")]
    assert FixedRankRule(rank=70)(ranking([I] * 60, set(), I)) == []
