"""The mining side of the negatives table: write it (format and reader: ``mmtrain/data/negatives.py``)
and merge a re-mined table with a kept one."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmtrain.data.negatives import FORMAT_VERSION, GROUPS, Negative, NegativesTable
from mmtrain.io import atomic_dir


def write_table(path: str | Path, negatives: Mapping[int, list[Negative]], meta: dict[str, Any]) -> Path:
    """Write ``{qid_hash: [Negative, ...]}`` (queries with no negative included, as empty) atomically;
    a finished table of the same name is replaced whole, never merged."""
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
    with atomic_dir(path, overwrite=True) as tmp:
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    return path


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
