"""M-BEIR retrieval metrics: hit-rate Recall@k, modality accuracy M.A.@1, chance level, averages.

Text sets are scored with nDCG@k (``ndcg_at_k``, evaluation.md §3).

Protocol (evaluation.md §1.2): Recall@k is UniIR's ``compute_recall_at_k``, a hit rate (1 if any
relevant candidate is in the top k, else 0, averaged over queries). The headline score of a
(dataset, task) pair is R@5, except Fashion200K and FashionIQ which use R@10. "Avg. All" is the
unweighted mean of the pair headlines; "Single-modal Qry" averages the pairs of UniIR tasks 0-4,
"Multi-modal Qry" those of tasks 6-8. All values here are fractions in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from mmtrain.data.schema import TASKS, EvalQuery, task_label

# Written into every result file (evaluation.md §0: record the metric code version).
METRICS_VERSION = "mbeir-hit-rate/1"
HEADLINE_R10_DATASETS = frozenset({"fashion200k", "fashioniq"})
SINGLE_MODAL_QUERY_TASKS = frozenset({0, 1, 2, 3, 4})
MULTI_MODAL_QUERY_TASKS = frozenset({6, 7, 8})


@dataclass
class PairResult:
    """Scores of one (dataset, task) evaluation pair; every rate is a fraction in [0, 1]."""

    pair: str              # M-BEIR file name of the pair, e.g. "mscoco_task0"
    dataset: str
    task_id: int           # UniIR task id
    task: str              # short label, e.g. "t->i"
    num_queries: int
    pool_size: int
    recall: dict[int, float] = field(default_factory=dict)   # k -> mean hit rate at k
    modality_acc: float = 0.0   # M.A.@1
    chance_r5: float = 0.0      # expected R@5 of a random ranking
    headline_k: int = 5
    headline: float = 0.0       # recall at headline_k

    def to_dict(self) -> dict:
        """A JSON-ready dict (recall keys become strings, as JSON requires)."""
        d = asdict(self)
        d["recall"] = {str(k): v for k, v in self.recall.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> PairResult:
        """Inverse of ``to_dict``."""
        return cls(**{**d, "recall": {int(k): float(v) for k, v in d["recall"].items()}})


def hit_rate_at_k(ranked_ids: np.ndarray, relevant: Sequence[Collection[int]], k: int) -> np.ndarray:
    """Per-query hit at k: 1.0 if any id of ``relevant[q]`` is among ``ranked_ids[q, :k]``, else 0.0.

    ``ranked_ids`` is (Q, K) with K >= k, best first; padding ids (e.g. -1) never match.
    """
    ranked_ids = np.asarray(ranked_ids)
    if ranked_ids.ndim != 2:
        raise ValueError(f"ranked_ids must be 2-D (Q, K), got shape {ranked_ids.shape}")
    if len(relevant) != ranked_ids.shape[0]:
        raise ValueError(f"{ranked_ids.shape[0]} rankings but {len(relevant)} relevant sets")
    if not 1 <= k <= ranked_ids.shape[1]:
        raise ValueError(f"k={k} outside 1..{ranked_ids.shape[1]} (ranking depth)")
    hits = np.zeros(ranked_ids.shape[0], dtype=np.float64)
    for q, (row, rel) in enumerate(zip(ranked_ids[:, :k].tolist(), relevant)):
        rel_set = rel if isinstance(rel, (set, frozenset)) else set(rel)
        hits[q] = float(any(did in rel_set for did in row))
    return hits


def ndcg_at_k(ranked_ids: np.ndarray, relevant: Sequence[Collection[int]], k: int = 10) -> np.ndarray:
    """Per-query nDCG@k of ``ranked_ids`` (Q, K >= k), best first, for binary relevance.

    Relevance is binary (the BEIR converter keeps a qrels row when its score is > 0), so the gain of a
    relevant document is 1: DCG@k = sum over relevant documents at ranks r <= k of 1 / log2(r + 1),
    divided by the DCG of the ideal ranking (min(#relevant, k) relevant documents first). This is
    trec_eval's ``ndcg_cut`` (pytrec_eval, which BEIR and MTEB call) for 0/1 qrels; the tests compare.
    """
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


def _canonical_modality(m: str) -> str:
    # UniIR writes the mixed modality both ways (schema.task_id_for normalises the same way).
    return "image,text" if m == "text,image" else m


def modality_accuracy_at_1(top1_modalities: Sequence[str], desired: Sequence[str]) -> np.ndarray:
    """Per-query 1.0 if the top-1 candidate's modality equals the desired one, else 0.0."""
    if len(top1_modalities) != len(desired):
        raise ValueError(f"{len(top1_modalities)} top-1 modalities but {len(desired)} desired ones")
    return np.array([float(_canonical_modality(a) == _canonical_modality(b))
                     for a, b in zip(top1_modalities, desired)], dtype=np.float64)


def chance_hit_rate(num_relevant: int, pool_size: int, k: int) -> float:
    """Expected hit rate at k of a uniformly random ranking: 1 - C(N-n, k) / C(N, k).

    Computed as -expm1(sum_i log1p(-n / (N - i))), i < k, which stays accurate when the rate is
    tiny (n = 1 in a 5.6M pool gives k/N ~ 1e-6; a plain 1 - product would lose digits).
    k is clipped to N (a ranking holds at most N candidates).
    """
    n, big_n = int(num_relevant), int(pool_size)
    if big_n < 1 or k < 1 or not 0 <= n <= big_n:
        raise ValueError(f"need 0 <= num_relevant <= pool_size, pool_size >= 1, k >= 1; "
                         f"got n={n}, N={big_n}, k={k}")
    k = min(int(k), big_n)
    if n == 0:
        return 0.0
    if big_n - n < k:  # fewer irrelevant candidates than slots: a relevant one is always in
        return 1.0
    log_miss = math.fsum(math.log1p(-n / (big_n - i)) for i in range(k))
    return -math.expm1(log_miss)


def headline_k(dataset: str) -> int:
    """The cutoff of a pair's headline score: 10 for Fashion200K and FashionIQ, 5 otherwise."""
    return 10 if dataset.strip().lower() in HEADLINE_R10_DATASETS else 5


def evaluate_rankings(ranked_ids: np.ndarray, queries: Sequence[EvalQuery],
                      modality_by_id: Mapping[int, str], pool_size: int,
                      ks: Sequence[int] = (1, 5, 10)) -> list[PairResult]:
    """Score rankings per (dataset, task) pair.

    Args:
        ranked_ids: (Q, K) candidate ids (hashed dids, as in ``EvalQuery.relevant``), best first,
            row q ranking ``queries[q]``. K must reach max(ks) and every headline cutoff, unless the
            rows rank the whole pool (K >= pool_size), where deeper cutoffs equal the full depth.
        queries: the evaluation queries, in row order.
        modality_by_id: modality of every candidate in the searched pool. Every relevant id must be
            in it: a target missing from the pool is an error (evaluation.md §0), not a miss.
        pool_size: number of candidates searched (for the chance level).
        ks: Recall@k cutoffs to report.

    Returns:
        One PairResult per pair, ordered by (task id, dataset name).
    """
    ranked_ids = np.asarray(ranked_ids)
    if ranked_ids.ndim != 2 or ranked_ids.shape[0] != len(queries):
        raise ValueError(f"ranked_ids shape {ranked_ids.shape} does not match {len(queries)} queries")
    depth = ranked_ids.shape[1]
    if depth < 1:
        raise ValueError("ranked_ids has no columns")

    def cutoff(k: int) -> int:
        if k <= depth:
            return k
        if depth >= pool_size:
            return depth
        raise ValueError(f"R@{k} needs rankings of depth >= {k}, got {depth} (pool of {pool_size})")

    groups: dict[tuple[int, str], list[int]] = {}
    for row, query in enumerate(queries):
        if query.task_id not in TASKS:
            raise ValueError(f"query {query.qid!r}: unknown task id {query.task_id}")
        if not query.relevant:
            raise ValueError(f"query {query.qid!r} ({query.pair}) has no relevant candidate")
        missing = [did for did in query.relevant if did not in modality_by_id]
        if missing:
            raise ValueError(f"query {query.qid!r} ({query.pair}): relevant ids {missing[:5]} are "
                             f"not in the searched pool")
        groups.setdefault((query.task_id, query.dataset), []).append(row)

    results = []
    for (task_id, dataset), rows in sorted(groups.items()):
        ranks = ranked_ids[rows]
        relevant = [set(queries[r].relevant) for r in rows]
        target = TASKS[task_id][1]
        top1 = []
        for did in ranks[:, 0].tolist():
            if did not in modality_by_id:
                raise ValueError(f"retrieved id {did} has no modality in modality_by_id")
            top1.append(modality_by_id[did])
        hk = headline_k(dataset)
        results.append(PairResult(
            pair=queries[rows[0]].pair,
            dataset=dataset,
            task_id=task_id,
            task=task_label(task_id),
            num_queries=len(rows),
            pool_size=pool_size,
            recall={k: float(hit_rate_at_k(ranks, relevant, cutoff(k)).mean()) for k in ks},
            modality_acc=float(modality_accuracy_at_1(top1, [target] * len(rows)).mean()),
            chance_r5=float(np.mean([chance_hit_rate(len(rel), pool_size, 5) for rel in relevant])),
            headline_k=hk,
            headline=float(hit_rate_at_k(ranks, relevant, cutoff(hk)).mean()),
        ))
    return results


def _mean_or_none(values: Sequence[float]) -> float | None:
    # None rather than NaN: the summary goes into JSON, which has no NaN.
    return float(np.mean(values)) if len(values) else None


def summarize(results: Sequence[PairResult]) -> dict:
    """Unweighted means over pairs (every pair counts once, whatever its query count).

    Keys: num_pairs, num_queries, recall {k: mean} (over the cutoffs every pair has), modality_acc,
    chance_r5, headline ("M-BEIR Avg. All"), single_modal_query (headline mean over tasks 0-4) and
    multi_modal_query (tasks 6-8); a mean over no pair is None.
    """
    ks = sorted(set.intersection(*(set(r.recall) for r in results))) if results else []
    return {
        "num_pairs": len(results),
        "num_queries": int(sum(r.num_queries for r in results)),
        "recall": {k: _mean_or_none([r.recall[k] for r in results]) for k in ks},
        "modality_acc": _mean_or_none([r.modality_acc for r in results]),
        "chance_r5": _mean_or_none([r.chance_r5 for r in results]),
        "headline": _mean_or_none([r.headline for r in results]),
        "single_modal_query": _mean_or_none(
            [r.headline for r in results if r.task_id in SINGLE_MODAL_QUERY_TASKS]),
        "multi_modal_query": _mean_or_none(
            [r.headline for r in results if r.task_id in MULTI_MODAL_QUERY_TASKS]),
    }
