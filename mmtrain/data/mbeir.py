"""Reader for the M-BEIR layout (UniIR): query files, candidate pools, qrels, instructions.

Everything is validated while it is read, and every problem is collected with its location
(``file:line``, relative to the M-BEIR root), so one run reports all of them in a single
:class:`MBeirFormatError` instead of failing on the first. With ``skip_invalid=True`` the bad records
are dropped and listed instead (``MBeirData.skipped``); file-level problems (missing file, duplicate
did, inconsistent dataset ids) stay fatal because no record-level skip can repair them.

Dataset names and ids are read from the files (names from file names, ids from qid prefixes), so any
world in the M-BEIR layout works; ``MBEIR_DATASET_IDS`` only validates the canonical names.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mmtrain.data.schema import MODALITIES, TASKS, format_string, task_id_for

log = logging.getLogger(__name__)

# UniIR ``DATASET_IDS``: documentation and validation only (a canonical name must carry its id).
MBEIR_DATASET_IDS: dict[str, int] = {
    "visualnews": 0, "fashion200k": 1, "webqa": 2, "edis": 3, "nights": 4,
    "oven": 5, "infoseek": 6, "fashioniq": 7, "cirr": 8, "mscoco": 9,
}
SPLITS = ("train", "val", "test")
INSTRUCTIONS_FILE = "instructions/query_instructions.tsv"
# Problems no record-level skip can repair: they stay errors under skip_invalid=True.
FATAL_KINDS = frozenset({"missing_file", "duplicate_did", "dataset_id_mismatch"})

_TRAIN_FILE = re.compile(r"^mbeir_(?P<dataset>.+)_train\.jsonl$")
_EVAL_FILE = re.compile(r"^mbeir_(?P<dataset>.+)_task(?P<task>\d+)_(?P<split>val|test)\.jsonl$")
_ID = re.compile(r"^\d+:\d+$")


@dataclass(frozen=True)
class Problem:
    """One validation problem: ``kind`` (e.g. ``missing_image``), ``location`` (``file:line``), message."""
    kind: str
    location: str
    message: str


class Problems(list[Problem]):
    """Collector of problems across files."""

    def add(self, kind: str, location: str, message: str) -> None:
        self.append(Problem(kind, location, message))

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(p.kind for p in self).items()))


class MBeirFormatError(ValueError):
    """All problems found, with counts per kind and locations; the full list is in ``.problems``."""

    MAX_SHOWN_PER_KIND = 25

    def __init__(self, problems: list[Problem], root: str | Path = "") -> None:
        self.problems = list(problems)
        counts = Counter(p.kind for p in self.problems)
        lines = [f"{len(self.problems)} problem(s) in M-BEIR data {root}: "
                 + ", ".join(f"{k}={n}" for k, n in sorted(counts.items()))]
        for kind in sorted(counts):
            lines.append(f"{kind} ({counts[kind]}):")
            shown = [p for p in self.problems if p.kind == kind][: self.MAX_SHOWN_PER_KIND]
            lines += [f"  {p.location}: {p.message}" for p in shown]
            if counts[kind] > len(shown):
                lines.append(f"  ... and {counts[kind] - len(shown)} more (see .problems)")
        if not set(counts) & FATAL_KINDS:
            lines.append("pass skip_invalid=True to drop these records instead")
        super().__init__("\n".join(lines))


@dataclass(slots=True)
class CandRecord:
    """A pool candidate; ``text`` is format_string-normalised, None when absent."""
    did: str
    text: str | None
    img_path: str | None
    modality: str
    location: str = ""

    @property
    def dataset_id(self) -> int:
        return int(self.did.split(":")[0])


@dataclass(slots=True)
class QueryRecord:
    """A query line; ``text`` is normalised ('' for a null query_txt). ``task_id`` is None until
    resolved when the line has none; ``relevant`` (qrels dids) and ``instructions`` are filled by
    :func:`load_split`."""
    qid: str
    text: str
    img_path: str | None
    modality: str
    pos_dids: list[str]
    neg_dids: list[str]
    task_id: int | None
    location: str
    relevant: list[str] = field(default_factory=list)
    instructions: list[str] = field(default_factory=list)

    @property
    def dataset_id(self) -> int:
        return int(self.qid.split(":")[0])


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


def _rel(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def read_jsonl(path: Path, shown: str, problems: Problems,
               on_line: Callable[[], None] | None = None) -> Iterator[tuple[str, dict]]:
    """Yield (location, object) per non-empty line; malformed lines become problems. ``on_line`` is
    called for every non-empty line, malformed ones included (the converters count input records)."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if on_line is not None:
                on_line()
            loc = f"{shown}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.add("malformed_json", loc, str(e))
                continue
            if not isinstance(obj, dict):
                problems.add("malformed_json", loc, f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield loc, obj


def _did_list(value: object) -> list[str] | None:
    """Accept bare did strings (UniIR code) and {"did": ...} objects (the HF card); None if neither."""
    if not isinstance(value, list):
        return None
    dids = [v.get("did") if isinstance(v, dict) else v for v in value]
    return dids if all(isinstance(d, str) and _ID.match(d) for d in dids) else None


def _check_modality(obj: dict, key: str, img_key: str, loc: str, problems: Problems, txt_key: str) -> bool:
    """The modality is known, an image modality has an image path, and text / path are strings or null."""
    modality = obj.get(key)
    if any(obj.get(k) is not None and not isinstance(obj[k], str) for k in (img_key, txt_key)):
        problems.add("bad_value", loc, f"{txt_key} and {img_key} must be strings or null")
        return False
    if modality not in MODALITIES:
        problems.add("bad_value", loc, f"{key}={modality!r} is not one of {MODALITIES}")
        return False
    if "image" in modality and not obj.get(img_key):
        problems.add("bad_value", loc, f"{key}={modality!r} but {img_key} is empty")
        return False
    return True


def read_instructions(path: str | Path) -> dict[str, list[str]]:
    """UniIR ``_load_query_instructions``: skip the header; key ``"{parts[3]}, {parts[0]}, {parts[1]}"``
    (dataset id, query modality, candidate modality) -> non-empty ``parts[4:]``; a later row wins."""
    prompts: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        next(f, None)
        for line in f:
            parts = line.strip().split("\t")
            if len(parts) < 5:
                continue
            prompts[f"{parts[3]}, {parts[0]}, {parts[1]}"] = [p for p in parts[4:] if p]
    return prompts


def read_queries(path: str | Path, problems: Problems | None = None, *, shown: str | None = None,
                 allow_duplicate_qids: bool = False) -> list[QueryRecord]:
    """Parse a query jsonl. Lines with a problem are left out and reported (raised when no
    ``problems`` collector is given). ``allow_duplicate_qids``: the upsampled union file repeats qids."""
    own, problems = problems is None, problems if problems is not None else Problems()
    out: list[QueryRecord] = []
    seen: dict[str, str] = {}
    for loc, obj in read_jsonl(Path(path), shown or str(path), problems):
        missing = [k for k in ("qid", "query_modality", "pos_cand_list") if k not in obj]
        if missing:
            problems.add("missing_field", loc, f"missing {', '.join(missing)}")
            continue
        pos, neg = _did_list(obj["pos_cand_list"]), _did_list(obj.get("neg_cand_list") or [])
        task = obj.get("task_id")
        if not (isinstance(obj["qid"], str) and _ID.match(obj["qid"])):
            problems.add("bad_value", loc, f"qid {obj['qid']!r} is not 'dataset_id:index'")
        elif not pos or neg is None:
            problems.add("bad_value", loc, "pos_cand_list must be a non-empty list of dids, neg_cand_list a list")
        elif task is not None and not isinstance(task, int):
            problems.add("bad_value", loc, f"task_id {task!r} is not an int")
        elif task is not None and task not in TASKS:
            problems.add("unknown_task_id", loc, f"task_id {task} is not an M-BEIR task {sorted(TASKS)}")
        elif obj["qid"] in seen and not allow_duplicate_qids:
            problems.add("duplicate_qid", loc, f"qid {obj['qid']} already defined at {seen[obj['qid']]}")
        elif "text" in str(obj["query_modality"]) and not format_string(obj.get("query_txt") or ""):
            problems.add("empty_query", loc, f"query_modality={obj['query_modality']!r} but query_txt is empty")
        elif _check_modality(obj, "query_modality", "query_img_path", loc, problems, "query_txt"):
            seen[obj["qid"]] = loc
            out.append(QueryRecord(obj["qid"], format_string(obj.get("query_txt")), obj.get("query_img_path") or None,
                                   obj["query_modality"], pos, neg, task, loc))
    if own and problems:
        raise MBeirFormatError(problems, path)
    return out


def read_pool(path: str | Path, problems: Problems | None = None, *, shown: str | None = None) -> dict[str, CandRecord]:
    """Parse a candidate pool into did -> record; a duplicate did is an error (UniIR asserts it)."""
    own, problems = problems is None, problems if problems is not None else Problems()
    pool: dict[str, CandRecord] = {}
    for loc, obj in read_jsonl(Path(path), shown or str(path), problems):
        did = obj.get("did")
        if did is None or "modality" not in obj:
            problems.add("missing_field", loc, "missing did" if did is None else "missing modality")
        elif not (isinstance(did, str) and _ID.match(did)):
            problems.add("bad_value", loc, f"did {did!r} is not 'dataset_id:index'")
        elif did in pool:
            problems.add("duplicate_did", loc, f"did {did} already defined at {pool[did].location}")
        elif _check_modality(obj, "modality", "img_path", loc, problems, "txt"):
            pool[did] = CandRecord(did, format_string(obj.get("txt")) or None, obj.get("img_path") or None,
                                   obj["modality"], loc)
    if own and problems:
        raise MBeirFormatError(problems, path)
    return pool


def read_qrels(path: str | Path, problems: Problems | None = None, *, shown: str | None = None) -> dict[str, list[str]]:
    """UniIR ``load_qrel``: ``qid 0 did relevance task_id`` per line; keep relevance > 0."""
    own, problems = problems is None, problems if problems is not None else Problems()
    qrels: dict[str, list[str]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 5 or not parts[3].lstrip("-").isdigit():
                problems.add("malformed_qrel", f"{shown or path}:{lineno}",
                             f"expected 'qid 0 did relevance task_id', got {line.strip()!r}")
            elif int(parts[3]) > 0:
                qrels[parts[0]].append(parts[2])
    if own and problems:
        raise MBeirFormatError(problems, path)
    return dict(qrels)


def check_image(path: str | Path) -> str | None:
    """None when the image file exists and decodes, else the reason."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as im:
            im.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale; still reads every block, so corruption shows
            im.load()
    except Exception as e:  # PIL raises many types for bad files
        return f"undecodable ({type(e).__name__}: {e})"
    return None


def pool_path(root: str | Path, split: str) -> Path:
    """The split's global pool, ``cand_pool/global/`` (current layout) or ``cand_pool/union_pool/`` (old)."""
    name = f"mbeir_union_{split}_cand_pool.jsonl"
    paths = [Path(root) / "cand_pool" / d / name for d in ("global", "union_pool")]
    return next((p for p in paths if p.exists()), paths[0])


def local_pool_path(root: str | Path, dataset: str, task_id: int, split: str = "test") -> Path:
    """A pair's local pool; MSCOCO ships per-split pools (``mbeir_mscoco_task0_test_cand_pool``)."""
    local = Path(root) / "cand_pool" / "local"
    special = local / f"mbeir_{dataset}_task{task_id}_{split}_cand_pool.jsonl"
    return special if special.exists() else local / f"mbeir_{dataset}_task{task_id}_cand_pool.jsonl"


def qrels_path(root: str | Path, dataset: str, task_id: int, split: str) -> Path:
    return Path(root) / "qrels" / split / f"mbeir_{dataset}_task{task_id}_{split}_qrels.txt"


UNION_TRAIN_FILE = "query/union_train/mbeir_union_up_train.jsonl"


def discover_query_files(root: str | Path, split: str) -> list[tuple[str, int | None, Path]]:
    """(dataset name, task id from the file name or None for train files, path) for a split."""
    pattern = _TRAIN_FILE if split == "train" else _EVAL_FILE
    found = []
    for path in sorted((Path(root) / "query" / split).glob("*.jsonl")):
        m = pattern.match(path.name)
        if m and (split == "train" or m["split"] == split):
            found.append((m["dataset"], None if split == "train" else int(m["task"]), path))
    return found


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
    pool_shown = _rel(root, pool_file)
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
        records = read_queries(path, problems, shown=_rel(root, path), allow_duplicate_qids=union)
        if union:  # one file of every dataset: group by the qid prefix, named as M-BEIR names it
            names = {i: n for n, i in MBEIR_DATASET_IDS.items()}
            for dataset_id in sorted({r.dataset_id for r in records}):
                group = [r for r in records if r.dataset_id == dataset_id]
                parsed.append((names.get(dataset_id, f"dataset{dataset_id}"), None, _rel(root, path), group))
        else:
            parsed.append((dataset, file_task, _rel(root, path), records))
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
                qrels = read_qrels(qpath, problems, shown=_rel(root, qpath))
            else:
                problems.add("missing_file", _rel(root, qpath), f"qrels for {shown} not found")
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
                # The query's own prefix (never the positive's: OVEN positives are InfoSeek dids).
                key = f"{q.dataset_id}, {q.modality}, {first.modality}"
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
