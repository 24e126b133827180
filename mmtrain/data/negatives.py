"""The negatives table format (read side) and the training sampler; ``mmtrain/mining/table.py`` writes it.

On disk, a directory (built in a temporary sibling and renamed into place, so a reader never sees a
half-written table):

    meta.json        format version, rule and its parameters, model checkpoint, stage, pool, counts
    qid_hash.npy     (Q,) int64, sorted: the training queries that were mined
    offsets.npy      (Q+1,) int64: query i's negatives are rows offsets[i]:offsets[i+1]
    did_hash.npy     (N,) int64 negative candidate ids
    rank.npy         (N,) int32 1-based rank in the miner's ranking
    score.npy        (N,) float32 the miner's score
    group.npy        (N,) int8 index into GROUPS (C1, C2, topk, rank)

Plain ``.npy`` arrays rather than JSON lines: a table for 1.1M queries loads memory-mapped in
milliseconds and a lookup is a binary search, so every DataLoader worker can hold it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
ARRAYS = ("qid_hash", "offsets", "did_hash", "rank", "score", "group")
GROUPS = ("C1", "C2", "topk", "rank")   # group codes are indices into this tuple


@dataclass(frozen=True)
class Negative:
    """One mined negative (a row of the table)."""
    id: int
    rank: int      # 1-based position in the ranking
    score: float
    group: str     # one of GROUPS


class NegativesTable:
    """Read side: memory-mapped arrays; ``lookup(qid_hash)`` -> the query's negatives by group."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no negatives table at {self.path} (expected {meta_path}); "
                                    "run the previous stage's mining first")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{self.path}: table format {self.meta.get('format_version')}, "
                             f"expected {FORMAT_VERSION}")
        for name in ARRAYS:
            setattr(self, name, np.load(self.path / f"{name}.npy", mmap_mode="r"))

    def __len__(self) -> int:
        return len(self.qid_hash)

    def contains(self, qid_hash: int) -> bool:
        """Whether the query was mined (with or without result)."""
        i = int(np.searchsorted(self.qid_hash, qid_hash))
        return i < len(self.qid_hash) and self.qid_hash[i] == qid_hash

    def lookup(self, qid_hash: int) -> dict[str, list[tuple[int, int, float]]]:
        """``{group: [(did_hash, rank, score), ...]}`` for one query; {} when it was not mined."""
        i = int(np.searchsorted(self.qid_hash, qid_hash))
        if i == len(self.qid_hash) or self.qid_hash[i] != qid_hash:
            return {}
        out: dict[str, list[tuple[int, int, float]]] = {}
        for j in range(self.offsets[i], self.offsets[i + 1]):
            out.setdefault(GROUPS[self.group[j]], []).append(
                (int(self.did_hash[j]), int(self.rank[j]), float(self.score[j])))
        return out

    def as_dict(self) -> dict[int, list[Negative]]:
        return {int(q): [Negative(int(self.did_hash[j]), int(self.rank[j]), float(self.score[j]),
                                  GROUPS[self.group[j]])
                         for j in range(self.offsets[i], self.offsets[i + 1])]
                for i, q in enumerate(self.qid_hash)}


def sample_negatives(groups: Mapping[str, list[tuple[int, int, float]]], k: int, rng: random.Random,
                     policy: str = "modality_aware") -> list[int]:
    """Draw ``k`` negative ids for one visit.

    ``modality_aware`` (MM-Embed): each negative comes from C1 or C2 with equal probability (from the
    non-empty one when the other is empty), uniformly within the group; a query mined by another rule
    (no C1/C2 group: e.g. the text set's positive-aware top-K in the continual stage) draws
    ``uniform``-ly from what it has; ``uniform``: uniformly over
    all of the query's negatives; ``first``: the best-ranked ones in order (mmE5's fixed rank).
    Without replacement while the pool lasts. No negative at all -> [] (the query then trains on
    in-batch negatives only).
    """
    if policy == "modality_aware" and not (groups.get("C1") or groups.get("C2")):
        policy = "uniform"
    if policy == "modality_aware":
        pools = {g: [d for d, _, _ in groups.get(g, [])] for g in ("C1", "C2")}
        pools = {g: v for g, v in pools.items() if v}
        out: list[int] = []
        for _ in range(k):
            if not pools:
                break
            g = rng.choice(sorted(pools))
            out.append(pools[g].pop(rng.randrange(len(pools[g]))))
            if not pools[g]:
                del pools[g]
        return out
    everything = sorted((r, d) for rows in groups.values() for d, r, _ in rows)
    if policy == "first":
        return [d for _, d in everything[:k]]
    if policy == "uniform":
        ids = [d for _, d in everything]
        return rng.sample(ids, min(k, len(ids)))
    raise ValueError(f"unknown negative sampling policy {policy!r}")
