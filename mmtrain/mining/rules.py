"""Negative rules: from one query's ranking to its hard negatives.

A rule sees one query's ranked candidates (ids, scores, modalities, best first), the query's labelled
positives and the modality its task asks for, and returns the candidates it keeps as negatives, each
tagged with the group it belongs to. Ranks are 1-based, as in the papers.

- ``ModalityAwareRule`` (MM-Embed §4.1.1): from the top-50, C1 = candidates of the wrong modality ranked
  above the best-ranked labelled positive (all wrong-modality candidates when no positive is in the
  top-50); C2 = candidates of the desired modality ranked below k' = 45 (ranks 46-50). Labelled positives
  are never negatives. Modalities compare as strings ("image" != "image,text").
- ``PositiveAwareRule`` (NV-Retriever TopK-PercPos): candidates scoring below ``max_ratio`` x the
  positive's score (the lowest labelled positive's score when there are several), the top K of them.
- ``FixedRankRule`` (mmE5 App. B.2): the candidate at a fixed rank (70); if that one is a positive, the
  next non-positive below it.

Which negative a training visit uses is the sampler's business (``mmtrain/data/negatives.py``): MM-Embed
draws from C1 or C2 with equal probability.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from mmtrain.data.negatives import Negative

@dataclass(frozen=True)
class Ranking:
    """One query's search result, best first."""

    ids: np.ndarray              # (K,) int64 hashed candidate ids
    scores: np.ndarray           # (K,) float
    modalities: list[str]        # (K,) candidate modalities
    positives: frozenset[int]    # labelled positive ids
    desired_modality: str        # the task's target modality
    positive_scores: tuple[float, ...] = ()   # the query's score with each labelled positive


@dataclass(frozen=True)
class ModalityAwareRule:
    top_k: int = 50
    k_prime: int = 45
    name: str = "modality_aware"

    @property
    def depth(self) -> int:
        return self.top_k

    def __call__(self, r: Ranking) -> list[Negative]:
        n = min(self.top_k, len(r.ids))
        pos_ranks = [i for i in range(n) if int(r.ids[i]) in r.positives]
        above = pos_ranks[0] if pos_ranks else n       # candidates strictly above the best positive
        out = []
        for i in range(n):
            cid = int(r.ids[i])
            if cid in r.positives:
                continue
            wrong = r.modalities[i] != r.desired_modality
            if wrong and i < above:
                out.append(Negative(cid, i + 1, float(r.scores[i]), "C1"))
            elif not wrong and i + 1 > self.k_prime:
                out.append(Negative(cid, i + 1, float(r.scores[i]), "C2"))
        return out

    def params(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PositiveAwareRule:
    max_ratio: float = 0.95
    num_negatives: int = 4
    top_k: int = 10
    name: str = "positive_aware"

    @property
    def depth(self) -> int:
        return self.top_k

    def __call__(self, r: Ranking) -> list[Negative]:
        if not r.positive_scores:
            raise ValueError("PositiveAwareRule needs the query's positive scores")
        ceiling = self.max_ratio * min(r.positive_scores)
        out = []
        for i in range(min(self.top_k, len(r.ids))):
            cid = int(r.ids[i])
            if cid not in r.positives and r.scores[i] < ceiling:
                out.append(Negative(cid, i + 1, float(r.scores[i]), "topk"))
                if len(out) == self.num_negatives:
                    break
        return out

    def params(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FixedRankRule:
    rank: int = 70
    name: str = "fixed_rank"

    @property
    def depth(self) -> int:
        return self.rank + 10   # room to step past positives at the chosen rank

    def __call__(self, r: Ranking) -> list[Negative]:
        for i in range(self.rank - 1, len(r.ids)):
            cid = int(r.ids[i])
            if cid not in r.positives:
                return [Negative(cid, i + 1, float(r.scores[i]), "rank")]
        return []

    def params(self) -> dict:
        return asdict(self)


NegativeRule = ModalityAwareRule | PositiveAwareRule | FixedRankRule
