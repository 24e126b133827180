"""nDCG@10 of the text set against pytrec_eval (trec_eval's ndcg_cut, what BEIR and MTEB call); an nDCG
evaluation set scores through the one evaluator (EvalSet)."""

from __future__ import annotations

import numpy as np
import pytest
import pytrec_eval

from mmtrain.data.schema import EvalQuery, Item
from mmtrain.eval.metrics import ndcg_at_k
from mmtrain.eval.retrieval import EvalSet


def _pytrec_ndcg10(ranked: np.ndarray, relevant: list[list[int]]) -> np.ndarray:
    qrels = {f"q{i}": {f"d{d}": 1 for d in rel} for i, rel in enumerate(relevant)}
    # Descending scores in the ranked order, so trec_eval ranks exactly as given.
    run = {f"q{i}": {f"d{d}": float(len(row) - r) for r, d in enumerate(row)} for i, row in enumerate(ranked)}
    scores = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    return np.array([scores[f"q{i}"]["ndcg_cut_10"] for i in range(len(relevant))])


def test_ndcg_matches_pytrec_eval():
    rng = np.random.default_rng(0)
    ranked = np.stack([rng.permutation(60)[:20] for _ in range(200)])
    # 1 to 12 relevant documents per query (more than k=10 too), some outside the ranking's top 20.
    relevant = [rng.choice(60, size=rng.integers(1, 13), replace=False).tolist() for _ in range(200)]
    np.testing.assert_allclose(ndcg_at_k(ranked, relevant, 10), _pytrec_ndcg10(ranked, relevant), atol=1e-9)


def test_ndcg_hand_cases():
    ranked = np.array([[5, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]])
    assert ndcg_at_k(ranked, [[5]])[0] == 1.0
    assert ndcg_at_k(ranked, [[1]])[0] == pytest.approx(1 / np.log2(3))
    assert ndcg_at_k(ranked, [[11]])[0] == 0.0                    # rank 11: outside the cut
    with pytest.raises(ValueError, match="no relevant"):
        ndcg_at_k(ranked, [[]])


def test_evaluator_searches_the_corpus():
    docs = [Item(f"doc {i}", None, "text", None, 100 + i) for i in range(12)]
    queries = [EvalQuery(Item(f"q {i}", None, "text", None, i), [100 + i], 1, "toybeir", 9) for i in range(12)]
    ev = EvalSet("toybeir", docs, queries, metric="ndcg")
    eye = np.eye(12, dtype=np.float32)
    result = ev.score(eye, eye)
    assert result.summary["ndcg@10"] == pytest.approx(1.0) and result.pairs == []
    assert result.summary | {"ndcg@10": 0} == {"name": "toybeir", "num_queries": 12, "corpus_size": 12,
                                               "ndcg@10": 0, "hit_rate@12": 1.0}
    second = 0.5 * eye + np.roll(eye, 1, axis=1)  # query i finds document i+1 first, its own second
    assert ev.score(second, eye).summary["ndcg@10"] == pytest.approx(1 / np.log2(3))
    assert ev.score(second, eye).scalars() == pytest.approx({"ndcg@10": 1 / np.log2(3), "hit_rate@12": 1.0})
    with pytest.raises(ValueError, match="not in the searched pool"):
        EvalSet("toybeir", docs, [EvalQuery(queries[0].item, [999], 1, "toybeir", 9)], metric="ndcg")
