"""The negatives table: mined negatives per training query, versioned, atomic, with provenance.

On disk, a directory (written to a temporary sibling and renamed into place, so a reader never sees a
half-written table):

    meta.json        format version, rule and its parameters, model checkpoint, stage, pool, counts
    qid_hash.npy     (Q,) int64, sorted: the training queries that were mined
    offsets.npy      (Q+1,) int64: query i's negatives are rows offsets[i]:offsets[i+1]
    did_hash.npy     (N,) int64 negative candidate ids
    rank.npy         (N,) int32 1-based rank in the miner's ranking
    score.npy        (N,) float32 the miner's score
    group.npy        (N,) int8 index into rules.GROUPS (C1, C2, topk, rank)

Plain ``.npy`` arrays rather than JSON lines: a table for 1.1M queries loads memory-mapped in
milliseconds and a lookup is a binary search, so every DataLoader worker can hold it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmtrain.mining.rules import GROUPS, Negative

FORMAT_VERSION = 1
ARRAYS = ("qid_hash", "offsets", "did_hash", "rank", "score", "group")


def write_table(path: str | Path, negatives: Mapping[int, list[Negative]], meta: dict[str, Any]) -> Path:
    """Write ``{qid_hash: [Negative, ...]}`` (queries with no negative included, as empty) atomically."""
    path = Path(path)
    qids = np.array(sorted(negatives), dtype=np.int64)
    rows = [n for q in qids for n in negatives[int(q)]]
    counts = np.array([len(negatives[int(q)]) for q in qids], dtype=np.int64)
    arrays = {
        "qid_hash": qids,
        "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "did_hash": np.array([n.id for n in rows], dtype=np.int64),
        "rank": np.array([n.rank for n in rows], dtype=np.int32),
        "score": np.array([n.score for n in rows], dtype=np.float32),
        "group": np.array([GROUPS.index(n.group) for n in rows], dtype=np.int8),
    }
    per_group = {g: int((arrays["group"] == i).sum()) for i, g in enumerate(GROUPS)}
    meta = {**meta, "format_version": FORMAT_VERSION, "num_queries": int(len(qids)),
            "num_negatives": int(len(rows)), "negatives_per_group": per_group,
            "queries_without_negatives": int((counts == 0).sum())}
    tmp = path.parent / f"{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        if path.exists():  # a finished table of the same name is replaced whole, never merged
            old = path.parent / f"{path.name}.old-{os.getpid()}"
            os.replace(path, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


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


def merge_groups(keep_from: NegativesTable, keep: Iterable[str], fresh: Mapping[int, list[Negative]],
                 ) -> dict[int, list[Negative]]:
    """MM-Embed stage 3: C2 re-mined with M_hard, C1 kept from M_rand (M_hard retrieves no
    wrong-modality candidate above the positive). Groups in ``keep`` come from the old table, every
    other group from ``fresh``."""
    keep = set(keep)
    old = keep_from.as_dict()
    merged: dict[int, list[Negative]] = {}
    for q in set(old) | set(fresh):
        merged[q] = ([n for n in old.get(q, []) if n.group in keep]
                     + [n for n in fresh.get(q, []) if n.group not in keep])
    return merged


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
