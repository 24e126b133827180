"""Retrieval evaluation of one split: a candidate pool, its queries, embeddings -> per-pair metrics.

Used in the training loop (validation), at the end of a run (test), and later by the evaluation
entry. Search is exact (``exact_topk``); metrics follow UniIR (hit-rate Recall@k) and MM-Embed
(modality accuracy of the top-1 candidate).
"""

from __future__ import annotations

import numpy as np
import torch

from mmtrain.data.schema import EvalQuery, Item
from mmtrain.eval.metrics import PairResult, evaluate_rankings, headline_k
from mmtrain.eval.search import exact_topk


class RetrievalEvaluator:
    def __init__(self, pool: list[Item], queries: list[EvalQuery], ks: tuple[int, ...] = (1, 5, 10),
                 backend: str = "auto"):
        if not pool or not queries:
            raise ValueError(f"empty evaluation split: {len(pool)} candidates, {len(queries)} queries")
        self.pool = pool
        self.queries = queries
        self.ks = tuple(ks)
        self.backend = backend
        self.cand_ids = np.array([c.id for c in pool], dtype=np.int64)
        self.modality_by_id = {c.id: c.modality for c in pool}
        missing = [(q.qid, d) for q in queries for d in q.relevant if d not in self.modality_by_id]
        if missing:
            raise ValueError(f"{len(missing)} relevant candidates are not in the searched pool, "
                             f"e.g. {missing[:5]} (query id, hashed did)")

    def evaluate(self, query_emb: torch.Tensor | np.ndarray,
                 cand_emb: torch.Tensor | np.ndarray) -> list[PairResult]:
        if len(query_emb) != len(self.queries) or len(cand_emb) != len(self.pool):
            raise ValueError(f"got {len(query_emb)} query / {len(cand_emb)} candidate embeddings for "
                             f"{len(self.queries)} queries / {len(self.pool)} candidates")
        # Deep enough for every cutoff and for the R@10 headline of the fashion datasets.
        depth = max(*self.ks, *(headline_k(q.dataset) for q in self.queries))
        _, index = exact_topk(query_emb, cand_emb, k=depth, backend=self.backend)
        return evaluate_rankings(self.cand_ids[index], self.queries, self.modality_by_id,
                                 pool_size=len(self.pool), ks=self.ks)
