"""Reader for the M-BEIR layout (UniIR): query files, candidate pools, qrels, instructions, one
file at a time (``mbeir_tree.load_mbeir`` resolves and validates a whole tree).

Every record is validated while it is read; a problem is collected with its location (``file:line``)
and the line left out, or, without a collector, raised as :class:`MBeirFormatError`.

Dataset names and ids are read from the files (names from file names, ids from qid prefixes), so any
world in the M-BEIR layout works; ``MBEIR_DATASET_IDS`` only validates the canonical names.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mmtrain.data.schema import MODALITIES, TASKS, canonical_modality, format_string

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


def instruction_key(dataset_id: int | str, query_modality: str, cand_modality: str) -> str:
    """UniIR's instruction lookup key (data-formats.md §1.7), the one rule for training and evaluation:
    the **query's** dataset id (never a positive's: OVEN positives are InfoSeek dids), the query's
    modality and the candidate modality (the selected positive's; in evaluation the task's). Modalities
    as M-BEIR records spell them; the ``text,image`` spelling (M-BEIR's task-5 key) reads as ``image,text``."""
    return f"{dataset_id}, {canonical_modality(query_modality)}, {canonical_modality(cand_modality)}"


def read_instructions(path: str | Path) -> dict[str, list[str]]:
    """UniIR ``_load_query_instructions``: skip the header; :func:`instruction_key` of ``parts[3]``,
    ``parts[0]``, ``parts[1]`` (dataset id, query modality, candidate modality) -> non-empty
    ``parts[4:]``; a later row wins."""
    prompts: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        next(f, None)
        for line in f:
            parts = line.strip().split("\t")
            if len(parts) < 5:
                continue
            prompts[instruction_key(parts[3], parts[0], parts[1])] = [p for p in parts[4:] if p]
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


def check_image(path: str | Path | None, raw: bytes | None = None) -> str | None:
    """None when the image (the file at ``path``, or ``raw`` bytes) decodes, else the reason."""
    if raw is None and not Path(path).is_file():
        return "missing"
    try:
        with Image.open(io.BytesIO(raw) if raw is not None else path) as im:
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
