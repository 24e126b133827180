"""A whole M-BEIR tree read, resolved and validated (``mbeir.py`` reads the single files).

Every problem is collected with its location (``file:line``, relative to the M-BEIR root), so one run
reports all of them in a single :class:`MBeirFormatError` instead of failing on the first. With
``skip_invalid=True`` the bad records are dropped and listed instead (``MBeirData.skipped``);
file-level problems (missing file, duplicate did, inconsistent dataset ids) stay fatal because no
record-level skip can repair them.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mmtrain.data.mbeir import (FATAL_KINDS, INSTRUCTIONS_FILE, MBEIR_DATASET_IDS, SPLITS, UNION_TRAIN_FILE, CandRecord,
                                MBeirFormatError, Problem, Problems, QueryRecord, check_image, discover_query_files,
                                instruction_key, pool_path, qrels_path, read_instructions, read_pool, read_qrels,
                                read_queries)
from mmtrain.data.schema import shown_path, task_id_for

log = logging.getLogger(__name__)


@dataclass
class MBeirSource:
    """The valid queries of one (dataset, task) pair of a split."""
    dataset: str
    dataset_id: int
    task_id: int
    split: str
    queries: list[QueryRecord] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.dataset}_task{self.task_id}"


@dataclass
class MBeirSplit:
    split: str
    sources: list[MBeirSource]
    pool: dict[str, CandRecord]  # the split's global pool, invalid candidates removed
    dataset_ids: dict[str, int]  # dataset name -> id, as found in this split's files


@dataclass
class MBeirData:
    root: Path
    splits: dict[str, MBeirSplit]
    files: list[Path]  # every text file read (queries, pools, qrels, instructions)
    skipped: list[Problem]  # empty unless skip_invalid=True


def _dataset_ids(files: list[tuple[str, str, list[QueryRecord]]], problems: Problems) -> dict[str, int]:
    """Map dataset name -> id from (name, shown path, records) per file: qid prefixes must agree inside
    a file, across files of one name, and with the canonical table for canonical names."""
    ids: dict[str, int] = {}
    for name, shown, records in files:
        prefixes = Counter(r.dataset_id for r in records)
        if not prefixes:
            continue
        if len(prefixes) > 1:
            problems.add("dataset_id_mismatch", shown, f"qid prefixes disagree: {dict(prefixes)}")
        dataset_id = prefixes.most_common(1)[0][0]
        if MBEIR_DATASET_IDS.get(name, dataset_id) != dataset_id:
            problems.add("dataset_id_mismatch", shown,
                         f"{name} has id {MBEIR_DATASET_IDS[name]} in M-BEIR, qids say {dataset_id}")
        if ids.setdefault(name, dataset_id) != dataset_id:
            problems.add("dataset_id_mismatch", shown, f"{name} has id {ids[name]} in another file, {dataset_id} here")
    for dataset_id in sorted(set(ids.values())):
        names = sorted(n for n, i in ids.items() if i == dataset_id)
        if len(names) > 1:
            problems.add("dataset_id_mismatch", "query/*", f"id {dataset_id} used by {names}")
    return ids


def load_split(root: str | Path, split: str, instructions: dict[str, list[str]], problems: Problems, *,
               check_images: bool = True, image_cache: dict[str, str | None] | None = None,
               files_read: list[Path] | None = None, union_train: bool = False) -> MBeirSplit:
    """Read and resolve one split. Invalid candidates and queries are left out and reported in
    ``problems``; the caller decides whether that is fatal (see :func:`load_mbeir`)."""
    root = Path(root)
    cache = image_cache if image_cache is not None else {}
    files_read = files_read if files_read is not None else []

    def image_problem(img_path: str, loc: str, what: str) -> bool:
        if not check_images:
            return False
        if img_path not in cache:
            cache[img_path] = check_image(root / img_path)
        if cache[img_path] is not None:
            kind = "missing_image" if cache[img_path] == "missing" else "undecodable_image"
            problems.add(kind, loc, f"{what} image {img_path}: {cache[img_path]}")
        return cache[img_path] is not None

    pool_file = pool_path(root, split)
    pool_shown = shown_path(root, pool_file)
    pool, dropped = {}, set()
    if pool_file.exists():
        files_read.append(pool_file)
        pool = read_pool(pool_file, problems, shown=pool_shown)
        dropped = {d for d, c in pool.items() if c.img_path and image_problem(c.img_path, c.location, "candidate")}
        pool = {d: c for d, c in pool.items() if d not in dropped}
    else:
        problems.add("missing_file", pool_shown, f"global pool of split {split!r} not found")

    union = union_train and split == "train"
    query_files = [("union", None, root / UNION_TRAIN_FILE)] if union else discover_query_files(root, split)
    if not query_files or (union and not query_files[0][2].is_file()):
        problems.add("missing_file", UNION_TRAIN_FILE if union else f"query/{split}", "no query files for this split")
        query_files = []
    parsed = []
    for dataset, file_task, path in query_files:
        files_read.append(path)
        records = read_queries(path, problems, shown=shown_path(root, path), allow_duplicate_qids=union)
        if union:  # one file of every dataset: group by the qid prefix, named as M-BEIR names it
            names = {i: n for n, i in MBEIR_DATASET_IDS.items()}
            for dataset_id in sorted({r.dataset_id for r in records}):
                group = [r for r in records if r.dataset_id == dataset_id]
                parsed.append((names.get(dataset_id, f"dataset{dataset_id}"), None, shown_path(root, path), group))
        else:
            parsed.append((dataset, file_task, shown_path(root, path), records))
    dataset_ids = _dataset_ids([(d, s, r) for d, _, s, r in parsed], problems)

    def resolve(did: str, role: str, loc: str) -> CandRecord | None:
        if did not in pool:
            why = "is invalid (see its own problem) in" if did in dropped else "is absent from"
            problems.add(f"{role}_not_in_pool", loc, f"{role} {did} {why} {pool_shown}")
        return pool.get(did)

    sources: dict[tuple[str, int], MBeirSource] = {}
    for dataset, file_task, shown, records in parsed:
        qrels = {}
        if file_task is not None:
            qpath = qrels_path(root, dataset, file_task, split)
            if qpath.exists():
                files_read.append(qpath)
                qrels = read_qrels(qpath, problems, shown=shown_path(root, qpath))
            else:
                problems.add("missing_file", shown_path(root, qpath), f"qrels for {shown} not found")
        for q in records:
            n_before = len(problems)
            positives = [resolve(d, "positive", q.location) for d in q.pos_dids]
            if split == "train":
                for d in q.neg_dids:
                    resolve(d, "negative", q.location)
            else:
                q.relevant = qrels.get(q.qid, [])
                if not q.relevant:
                    problems.add("no_relevant", q.location, f"query {q.qid} has no qrels row with relevance > 0")
                for d in q.relevant:
                    resolve(d, "qrel", q.location)
            if q.img_path:
                image_problem(q.img_path, q.location, "query")
            first = positives[0]
            if first is not None:
                try:
                    derived = task_id_for(q.modality, first.modality)
                except ValueError as e:
                    problems.add("bad_value", q.location, str(e))
                    continue
                for label, task in (("task_id field", q.task_id), ("file name", file_task)):
                    if task is not None and task != derived:
                        problems.add("task_mismatch", q.location, f"{label} says task {task}, modalities say {derived}")
                q.task_id = derived
                key = instruction_key(q.dataset_id, q.modality, first.modality)
                q.instructions = instructions.get(key, [])
                if not q.instructions:
                    problems.add("missing_instruction", q.location, f"no instructions for key {key!r}")
            if len(problems) == n_before:
                src = sources.setdefault((dataset, q.task_id), MBeirSource(dataset, q.dataset_id, q.task_id, split))
                src.queries.append(q)
    ordered = [sources[k] for k in sorted(sources)]
    return MBeirSplit(split, ordered, pool, dataset_ids)


def load_mbeir(root: str | Path, splits: tuple[str, ...] | list[str] = SPLITS, *, skip_invalid: bool = False,
               check_images: bool = True, union_train: bool = False) -> MBeirData:
    """Read, resolve and validate the given splits of an M-BEIR tree.

    Raises :class:`MBeirFormatError` listing every problem, unless ``skip_invalid`` is set; then the
    bad records are left out, logged, and returned in ``skipped`` (fatal kinds still raise).
    """
    root = Path(root)
    problems = Problems()
    files: list[Path] = []
    instructions: dict[str, list[str]] = {}
    ipath = root / INSTRUCTIONS_FILE
    if ipath.exists():
        files.append(ipath)
        instructions = read_instructions(ipath)
    else:
        problems.add("missing_file", INSTRUCTIONS_FILE, "instructions file not found")
    cache: dict[str, str | None] = {}
    loaded = {s: load_split(root, s, instructions, problems, check_images=check_images, image_cache=cache,
                            files_read=files, union_train=union_train) for s in splits}
    fatal = [p for p in problems if p.kind in FATAL_KINDS]
    if problems and (not skip_invalid or fatal):
        raise MBeirFormatError(problems, root)
    if problems:
        log.warning("M-BEIR %s: skipped %d invalid records (%d problems: %s)", root,
                    len({p.location for p in problems}), len(problems), problems.counts())
    return MBeirData(root, loaded, files, list(problems))
