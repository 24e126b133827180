"""The evaluator: an evaluation set (a candidate pool and queries) and the embeddings of both sides ->
one ``EvalResult``.

In-training validation and test (``RetrievalModule``: the Lightning loop encodes, the module scores each
named set), the end-of-run split and the benchmarks' search (``EvalContext.search`` is passed as
``search``) all score through ``EvalSet.score``. Search is exact (``exact_topk``). Two metrics:

- ``mbeir``: per (dataset, task) pair, UniIR's hit-rate Recall@k and MM-Embed's modality accuracy of the
  top-1 candidate (``mmtrain.eval.metrics``).
- ``ndcg``: a text set in BEIR layout, nDCG@10 as MTEB and BEIR report it (MM-Embed Table 9; evaluation.md
  §3) and the hit rate at 100. The queries search the set's own corpus, not the multimodal pool.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mmtrain.data.schema import EvalQuery, Item
from mmtrain.eval.metrics import PairResult, evaluate_rankings, headline_k, hit_rate_at_k, ndcg_at_k, summarize
from mmtrain.eval.search import exact_topk

METRICS = ("mbeir", "ndcg")
# search(queries (Q, d), candidates (N, d), k) -> (scores (Q, k'), indices (Q, k')), best first.
Search = Callable[[Any, Any, int], tuple[np.ndarray, np.ndarray]]


@dataclass
class EvalResult:
    """The scores of one evaluation set. ``pairs``: per (dataset, task) pair (``mbeir``; empty for
    ``ndcg``); ``summary``: the set's aggregate, JSON-ready (``summarize(pairs)`` for ``mbeir``; name,
    sizes, nDCG and hit rate for ``ndcg``)."""

    name: str
    metric: str
    pairs: list[PairResult]
    summary: dict[str, Any]

    def scalars(self) -> dict[str, float]:
        """The numbers logged per step: the flat summary and each pair's headline (``mbeir``), or the
        rank metrics (``ndcg``)."""
        if self.metric == "ndcg":
            return {k: float(v) for k, v in self.summary.items() if k.startswith(("ndcg@", "hit_rate@"))}
        summary = dict(self.summary)
        flat = {f"R@{k}": v for k, v in summary.pop("recall").items()} | summary
        out = {k: float(v) for k, v in flat.items() if isinstance(v, (int, float))}
        return out | {f"R@{r.headline_k}/{r.pair}": float(r.headline) for r in self.pairs}


@dataclass
class EvalSet:
    """A named evaluation set: ``pool`` (candidates, scored in this order) and ``queries`` whose relevant
    ids are all in the pool (a target that cannot be retrieved is an error, evaluation.md §0)."""

    name: str
    pool: Sequence[Item]
    queries: list[EvalQuery]
    metric: str = "mbeir"
    ks: tuple[int, ...] = (1, 5, 10)
    ndcg_k: int = 10
    cand_ids: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if not self.pool or not self.queries:
            raise ValueError(f"empty evaluation set {self.name}: {len(self.pool)} candidates, "
                             f"{len(self.queries)} queries")
        self.ks = tuple(self.ks)
        self.cand_ids = np.array([c.id for c in self.pool], dtype=np.int64)
        known = set(self.cand_ids.tolist())
        missing = [(q.qid, d) for q in self.queries for d in q.relevant if d not in known]
        if missing:
            raise ValueError(f"{self.name}: {len(missing)} relevant candidates are not in the searched pool, "
                             f"e.g. {missing[:5]} (query id, hashed did)")

    def query_items(self) -> list[Item]:
        return [q.item for q in self.queries]

    def score(self, query_emb: torch.Tensor | np.ndarray, cand_emb: torch.Tensor | np.ndarray,
              search: Search | None = None) -> EvalResult:
        """Rank the pool for every query (rows in ``queries`` / ``pool`` order) and score the rankings."""
        if len(query_emb) != len(self.queries) or len(cand_emb) != len(self.pool):
            raise ValueError(f"{self.name}: got {len(query_emb)} query / {len(cand_emb)} candidate embeddings "
                             f"for {len(self.queries)} queries / {len(self.pool)} candidates")
        search = search or (lambda q, c, k: exact_topk(q, c, k=k))
        relevant = [q.relevant for q in self.queries]
        if self.metric == "ndcg":
            depth = min(100, len(self.pool))
            _, index = search(query_emb, cand_emb, max(depth, self.ndcg_k))
            ranked = self.cand_ids[index]
            return EvalResult(self.name, self.metric, [], {
                "name": self.name, "num_queries": len(self.queries), "corpus_size": len(self.pool),
                f"ndcg@{self.ndcg_k}": float(ndcg_at_k(ranked, relevant, self.ndcg_k).mean()),
                f"hit_rate@{depth}": float(hit_rate_at_k(ranked, relevant, depth).mean())})
        # Deep enough for every cutoff and for the R@10 headline of the fashion datasets.
        depth = max(*self.ks, *(headline_k(q.dataset) for q in self.queries))
        _, index = search(query_emb, cand_emb, depth)
        modality_by_id = {c.id: c.modality for c in self.pool}
        pairs = evaluate_rankings(self.cand_ids[index], self.queries, modality_by_id,
                                  pool_size=len(self.pool), ks=self.ks)
        return EvalResult(self.name, self.metric, pairs, summarize(pairs))
