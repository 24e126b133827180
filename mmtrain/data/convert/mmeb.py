"""MMEB-train and MMEB-eval (data-formats.md §2, §3) -> canonical records.

MMEB-train: one directory per subset (``<Subset>/<split>-00000-of-00001.parquet``, or jsonl, or a
``<Subset>.jsonl`` file at the root), columns ``qry``, ``qry_image_path``, ``pos_text``, ``pos_image_path``,
optional ``neg_text`` / ``neg_image_path`` (single strings, often empty). Image paths are relative to the
unzipped image root. The instruction stays inside the text (MMEB has no separate field), the Phi-3.5-V
placeholder is stored neutral (placeholders.py). Rows whose query or positive has neither text nor image
are skipped, as VLM2Vec's dataset code drops them; here they are also reported.

MMEB-eval: ``<Task>/<split>-*.parquet`` (split ``test`` in the release) with ``qry_text``, ``qry_img_path``,
``tgt_text`` and ``tgt_img_path`` (lists, index 0 is the positive). Every row's candidate list is kept
(``candidate_dids``, for MMEB's per-row protocol); the split's pool is the union of all rows' candidates,
so the global-pool evaluator works too.

MMEB has no candidate ids: dids are derived from content (``content_did``), so identical candidates (class
labels) share one id and the loss can mask them. Query ids are ``<Subset>:<row>``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmtrain.data.convert.core import (Cand, Converted, Query, content_did, image_ref, modality_of, read_rows,
                                       stable_hash, task_of)
from mmtrain.data.placeholders import neutralize
from mmtrain.data.schema import shown_path

FAMILY = "mmeb"
TRAIN_COLUMNS = ("qry", "qry_image_path", "pos_text", "pos_image_path")
EVAL_COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")
_SPLIT_OF_FILE = re.compile(r"^(?P<split>[A-Za-z_]+?)(-\d+-of-\d+)?\.(parquet|jsonl)$")
EVAL_SPLITS = {"test": "test", "val": "val", "validation": "val", "dev": "val"}


def discover(root: Path, splits: set[str] | None) -> list[tuple[str, str | None, Path]]:
    """(subset, file split or None, path) for every table under ``root``: ``<Subset>/<split>*.parquet|jsonl``
    or ``<Subset>.jsonl|parquet`` at the root (no split). Only ``splits`` are kept when given."""
    found = []
    for path in sorted([*root.rglob("*.parquet"), *root.rglob("*.jsonl")]):
        if path.parent == root:
            found.append((path.stem, None, path))
            continue
        m = _SPLIT_OF_FILE.match(path.name)
        split = m["split"] if m else None
        if splits is None or split in splits:
            found.append((path.relative_to(root).parent.as_posix(), split, path))
    return found


def side(data: Converted, text: Any, image: Any, image_root: Path, loc: str, what: str) -> tuple[str, Any, str] | None:
    """(neutral text, image ref, modality) of one query/candidate side, or None (reported) when it is
    empty or malformed."""
    if text is not None and not isinstance(text, str):
        data.problems.add("bad_value", loc, f"{what} text must be a string, got {type(text).__name__}")
        return None
    try:
        ref = image_ref(image, image_root)
    except ValueError as e:
        data.problems.add("bad_value", loc, f"{what}: {e}")
        return None
    neutral, repair = neutralize(text, ref is not None)
    if repair:
        data.repairs[f"{what}:{repair}"] += 1
    modality = modality_of(neutral, ref)
    if modality is None:
        kind = "empty_query" if what == "query" else "empty_positive" if what == "positive" else "empty_candidate"
        data.problems.add(kind, loc, f"{what} has neither text nor image")
        return None
    return neutral, ref, modality


def _cand(family: str, text: str, ref: Any, modality: str, raw_image: Any, loc: str) -> Cand:
    # One id space per family, not per subset: the same candidate in two subsets (or two eval tasks)
    # is one pool entry and one id.
    image_key = raw_image if isinstance(raw_image, str) else (ref.key() if ref is not None else None)
    did = content_did(family, text, image_key)
    return Cand(did, stable_hash(did), text or None, ref, modality, loc)


NegParser = Callable[[Any, Any], list[tuple[Any, Any]]]


def single_negative(text: Any, image: Any) -> list[tuple[Any, Any]]:
    """MMEB-train: ``neg_text`` / ``neg_image_path`` are single strings, often empty (= no negative)."""
    return [(text, image)] if (text or image) else []


def pair_row(data: Converted, row: dict[str, Any], loc: str, index: int, subset: str, image_root: Path, *,
             parse_negatives: NegParser = single_negative, language: str | None = "en",
             modality_tag: str | None = None) -> Query | None:
    """One MMEB-style training row (MMEB-train, mmE5 hard-negative and synthetic sets) -> a Query."""
    missing = [c for c in TRAIN_COLUMNS if c not in row]
    if missing:
        data.problems.add("missing_field", loc, f"missing {', '.join(missing)}")
        return None
    query = side(data, row["qry"], row["qry_image_path"], image_root, loc, "query")
    positive = side(data, row["pos_text"], row["pos_image_path"], image_root, loc, "positive")
    if query is None or positive is None:
        return None
    try:
        raw_negs = parse_negatives(row.get("neg_text"), row.get("neg_image_path"))
    except ValueError as e:
        data.problems.add("unparseable_negatives", loc, str(e))
        return None
    negatives = []
    for text, image in raw_negs:
        neg = side(data, text, image, image_root, loc, "negative") if (text or image) else None
        if neg is not None:
            negatives.append(_cand(data.family, *neg, image, loc))
    if modality_tag is not None and not _tag_agrees(modality_tag, query[1], positive[1]):
        data.problems.add("modality_mismatch", loc, f"modality {modality_tag!r} disagrees with the images present "
                          f"(query image: {query[1] is not None}, positive image: {positive[1] is not None})")
        return None
    task = task_of(query[2], positive[2])
    if task is None:
        data.problems.add("unknown_task_id", loc, f"no M-BEIR task for {query[2]} -> {positive[2]}")
        return None
    qid = f"{subset}:{index}"
    return Query(qid, stable_hash(f"{data.family}/{qid}"), subset, task, query[0], query[1], query[2],
                 [_cand(data.family, *positive, row["pos_image_path"], loc)], loc, negatives=negatives,
                 language=language, subset=modality_tag or subset, neg_dids=[n.did for n in negatives])


def _tag_agrees(tag: str, query_image: Any, pos_image: Any) -> bool:
    """mmE5 synthetic ``modality`` (``T2I``, ``IT2IT``, ...): the I on each side means an image is there."""
    if "2" not in tag:
        return True
    q, c = tag.upper().split("2", 1)
    return ("I" in q) == (query_image is not None) and ("I" in c) == (pos_image is not None)


def read_train_tables(data: Converted, root: Path, image_root: Path, split: str, **row_kw: Any) -> None:
    """Every ``split`` table under ``root`` (one subset each) into ``data.queries['train']``."""
    tables = discover(root, {split})
    if not tables:
        data.problems.add("missing_file", str(root), f"no {split!r} parquet/jsonl tables found")
    out = data.queries.setdefault("train", [])
    for subset, _, path in tables:
        data.files.append(path)
        for index, (loc, row) in enumerate(read_rows(path, shown_path(data.root, path), data)):
            q = pair_row(data, row, loc, index, subset, image_root, **row_kw)
            if q is not None:
                out.append(q)


def read_eval_tables(data: Converted, root: Path, image_root: Path) -> None:
    """MMEB-eval tables into ``data.queries[<split>]`` and the union pool ``data.pools[<split>]``."""
    tables = [(t, EVAL_SPLITS[s], p) for t, s, p in discover(root, set(EVAL_SPLITS))]
    if not tables:
        data.problems.add("missing_file", str(root), "no MMEB-eval tables (<Task>/test-*.parquet) found")
    for task_name, split, path in tables:
        data.files.append(path)
        pool = data.pools.setdefault(split, {})
        out = data.queries.setdefault(split, [])
        for index, (loc, row) in enumerate(read_rows(path, shown_path(data.root, path), data)):
            q = _eval_row(data, row, loc, index, task_name, image_root, pool)
            if q is not None:
                out.append(q)


def _eval_row(data: Converted, row: dict[str, Any], loc: str, index: int, task_name: str, image_root: Path,
              pool: dict[str, Cand]) -> Query | None:
    missing = [c for c in EVAL_COLUMNS if c not in row]
    if missing:
        data.problems.add("missing_field", loc, f"missing {', '.join(missing)}")
        return None
    texts, images = row["tgt_text"], row["tgt_img_path"]
    if not isinstance(texts, list) or not isinstance(images, list) or len(texts) != len(images) or not texts:
        data.problems.add("bad_value", loc, "tgt_text and tgt_img_path must be non-empty lists of equal length")
        return None
    query = side(data, row["qry_text"], row["qry_img_path"], image_root, loc, "query")
    cands = [side(data, t, i, image_root, loc, "positive" if k == 0 else "candidate")
             for k, (t, i) in enumerate(zip(texts, images))]
    if query is None or any(c is None for c in cands):
        return None
    row_cands = [_cand(data.family, *c, raw, loc) for c, raw in zip(cands, images)]
    task = task_of(query[2], row_cands[0].modality)
    if task is None:
        data.problems.add("unknown_task_id", loc, f"no M-BEIR task for {query[2]} -> {row_cands[0].modality}")
        return None
    for c in row_cands:
        pool.setdefault(c.did, c)
    qid = f"{task_name}:{index}"
    return Query(qid, stable_hash(f"{data.family}/{qid}"), task_name, task, query[0], query[1], query[2],
                 [row_cands[0]], loc, subset=task_name, candidate_dids=[c.did for c in row_cands])


def read_mmeb(train_root: str | Path | None = None, eval_root: str | Path | None = None, *,
              image_root: str | Path | None = None, eval_image_root: str | Path | None = None,
              split: str = "original") -> Converted:
    """MMEB-train tables (``split``: ``original``, ``diverse_instruction`` or ``train``) and/or MMEB-eval
    tables. Image paths are relative to ``image_root`` (default: the table root)."""
    if train_root is None and eval_root is None:
        raise ValueError("give train_root and/or eval_root")
    base = Path(train_root or eval_root)
    data = Converted(FAMILY, base.parent if train_root and eval_root else base, {}, {}, [])
    if train_root is not None:
        read_train_tables(data, Path(train_root), Path(image_root or train_root), split)
    if eval_root is not None:
        read_eval_tables(data, Path(eval_root), Path(eval_image_root or image_root or eval_root))
    return data


