"""Text retrieval scoring of a BEIR-layout set (converted by ``python -m mmtrain.data convert beir``):
nDCG@10, as MTEB and BEIR report it (MM-Embed Table 9; evaluation.md §3).

Used at the end of a training run next to the M-BEIR table, so every stage of the MM-Embed recipe
shows what it does to text-to-text retrieval (the point of the continual stage, §4.1.2). The queries
search the set's own corpus, not the multimodal pool (MTEB: "separate corpora for each task").

Relevance is binary (the converter keeps a qrels row when its score is > 0), so the gain of a
relevant document is 1: DCG@k = sum over relevant documents at ranks r <= k of 1 / log2(r + 1),
divided by the DCG of the ideal ranking (min(#relevant, k) relevant documents first). This is
trec_eval's ``ndcg_cut`` (pytrec_eval, which BEIR and MTEB call) for 0/1 qrels; the tests compare.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import torch

from mmtrain.data.schema import EvalQuery, Item
from mmtrain.eval.metrics import hit_rate_at_k
from mmtrain.eval.search import exact_topk


def ndcg_at_k(ranked_ids: np.ndarray, relevant: Sequence[Collection[int]], k: int = 10) -> np.ndarray:
    """Per-query nDCG@k of ``ranked_ids`` (Q, K >= k), best first, for binary relevance."""
    ranked_ids = np.asarray(ranked_ids)
    if ranked_ids.ndim != 2 or ranked_ids.shape[1] < k:
        raise ValueError(f"ranked_ids must be (Q, K >= {k}), got shape {ranked_ids.shape}")
    if len(relevant) != len(ranked_ids):
        raise ValueError(f"{len(ranked_ids)} rankings but {len(relevant)} relevant sets")
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    out = np.zeros(len(ranked_ids), dtype=np.float64)
    for q, (row, rel) in enumerate(zip(ranked_ids[:, :k].tolist(), relevant)):
        rel = set(rel)
        if not rel:
            raise ValueError(f"query {q} has no relevant document")
        dcg = sum(discount[r] for r, d in enumerate(row) if d in rel)
        out[q] = dcg / discount[:min(len(rel), k)].sum()
    return out


class TextRetrievalEvaluator:
    """One split of a text set: corpus + queries -> nDCG@10 (and the hit rate at 100, UniIR's Recall@k)."""

    def __init__(self, corpus: list[Item], queries: list[EvalQuery], name: str = "text", k: int = 10):
        if not corpus or not queries:
            raise ValueError(f"empty text retrieval set {name}: {len(corpus)} documents, {len(queries)} queries")
        self.pool, self.queries, self.name, self.k = corpus, queries, name, k
        self.doc_ids = np.array([d.id for d in corpus], dtype=np.int64)
        known = set(self.doc_ids.tolist())
        missing = [(q.qid, d) for q in queries for d in q.relevant if d not in known]
        if missing:
            raise ValueError(f"{name}: {len(missing)} relevant documents are not in the corpus, e.g. {missing[:5]}")

    def evaluate(self, query_emb: torch.Tensor | np.ndarray, doc_emb: torch.Tensor | np.ndarray) -> dict:
        if len(query_emb) != len(self.queries) or len(doc_emb) != len(self.pool):
            raise ValueError(f"got {len(query_emb)} query / {len(doc_emb)} document embeddings for "
                             f"{len(self.queries)} queries / {len(self.pool)} documents")
        depth = min(100, len(self.pool))
        _, index = exact_topk(query_emb, doc_emb, k=max(depth, self.k))
        ranked = self.doc_ids[index]
        relevant = [q.relevant for q in self.queries]
        return {"name": self.name, "num_queries": len(self.queries), "corpus_size": len(self.pool),
                f"ndcg@{self.k}": float(ndcg_at_k(ranked, relevant, self.k).mean()),
                f"hit_rate@{depth}": float(hit_rate_at_k(ranked, relevant, depth).mean())}
