"""The canonical sample schema: the one shape every reader converts into and every stream reads.

Data flows one way: raw format -> reader/converter -> shards -> stream -> collate -> encoder -> loss.
This file defines the two middle shapes: what a shard stores, and what the stream hands the collator.

Shards (WebDataset tar files) hold two kinds of samples.

Query sample (query shards; one tar member per field, all sharing the sample's ``__key__``):

    <key>.json          the record below
    <key>.query.jpg     query image bytes (only when the query has an image)
    <key>.pos.<i>.jpg   image of positive i (training shards only; only when it has an image)
    <key>.neg.<i>.jpg   image of inline negative i (only when it has an image)

    {
      "qid": "9:1234",            # original string id, kept verbatim
      "qid_hash": 4501234,        # int64 (UniIR hash_qid: dataset_id * 500_000 + i)
      "source": "mbeir",          # source family
      "dataset": "mscoco",        # dataset name
      "dataset_id": 9,
      "task_id": 0,               # UniIR task id (0-8, 5 unused)
      "language": "en",
      "query": {"text": "A cat.", "image": "query.jpg" | null, "modality": "text"},
      "instructions": ["...", "..."],   # for this (dataset, query modality, positive modality);
                                        # training draws one per visit, evaluation uses [0]
      "positives": [{"did": "9:77", "did_hash": 90000077, "modality": "image",
                     "text": null, "image": "pos.0.jpg"}],
      "negatives": [ ...same shape as positives... ]
    }

    Optional fields (written by the converters of mmtrain/data/convert; readers use ``.get``):

      "subset": "MSCOCO_i2t",          # the source's own subset / config / modality tag (mmE5 "T2I")
      "neg_dids": ["9:78", ...],       # every negative id the source lists (negatives by id); the
                                       # inline ``negatives`` carry the content of those it could resolve
      "candidate_dids": [...],         # MMEB-eval: the row's own candidate list, positive first (every
                                       # did is in the split's pool), for MMEB's per-row protocol

    ``source`` is the source family (``mbeir``, ``mmeb``, ``mme5_hardneg``, ``mme5_synthetic``, ``beir``,
    ``tevatron``); ``language`` is an ISO code or null (unknown); ``dataset_id`` is -1 outside M-BEIR.
    Ids that are not M-BEIR's ``d:i`` are hashed with ``convert.core.stable_hash`` (63-bit blake2b);
    MMEB / mmE5 candidates have content-derived dids (``convert.core.content_did``). Texts of those
    families keep their instruction inside (MMEB has no instruction field) and store image placeholders
    neutral (mmtrain/data/placeholders.py).

    Training shards carry positives and negatives inline (``text`` and ``image`` filled), because a
    streamed batch needs their content. Evaluation shards carry every relevant did from the qrels
    in ``positives`` by id only (``text`` and ``image`` null): the pool holds their content.

Candidate sample (pool shards):

    <key>.json   {"did": "9:77", "did_hash": 90000077, "source": "mbeir", "dataset_id": 9,
                  "modality": "image", "text": null, "image": "jpg" | null}
    <key>.jpg    image bytes (only when the candidate has an image)

Images stay encoded (JPEG bytes) until the collator decodes the few it needs.
Text is normalised once at ingest (``format_string``, UniIR semantics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MODALITIES = ("text", "image", "image,text")

# UniIR task ids (file names use these); MM-Embed numbers the same tasks 1-8.
TASKS: dict[int, tuple[str, str]] = {
    0: ("text", "image"),
    1: ("text", "text"),
    2: ("text", "image,text"),
    3: ("image", "text"),
    4: ("image", "image"),
    6: ("image,text", "text"),
    7: ("image,text", "image"),
    8: ("image,text", "image,text"),
}
TASK_NAMES = {t: f"{q} -> {c}" for t, (q, c) in TASKS.items()}
SHORT_MODALITY = {"text": "t", "image": "i", "image,text": "(i,t)"}


def canonical_modality(modality: str) -> str:
    """``image,text`` for M-BEIR's other spelling ``text,image`` (its task-5 key); others unchanged."""
    return "image,text" if modality == "text,image" else modality


def task_id_for(query_modality: str, cand_modality: str) -> int:
    """UniIR ``get_mbeir_task_id``; raises on a pair M-BEIR does not define (e.g. image -> image,text)."""
    cand_modality = canonical_modality(cand_modality)
    for tid, pair in TASKS.items():
        if pair == (query_modality, cand_modality):
            return tid
    raise ValueError(f"no M-BEIR task for query modality {query_modality!r} -> candidate {cand_modality!r}")


def task_label(task_id: int) -> str:
    q, c = TASKS[task_id]
    return f"{SHORT_MODALITY[q]}->{SHORT_MODALITY[c]}"


def modality_of(text: str | None, image: object | None) -> str:
    if text and image is not None:
        return "image,text"
    if image is not None:
        return "image"
    if text:
        return "text"
    raise ValueError("an item needs text or an image")


@dataclass
class Item:
    """One side of a retrieval pair, as an encoder sees it.

    ``image`` is the encoded image (JPEG bytes) or None; ``instruction`` is set on queries only
    (candidates are encoded without instruction, UniIR / MM-Embed); ``id`` is the int64 hashed id
    (-1 when unknown).
    """

    text: str | None
    image: bytes | None
    modality: str
    instruction: str | None = None
    id: int = -1


@dataclass
class TrainExample:
    """What the training stream hands the collator: one query with one drawn positive.

    ``positive_ids`` lists every labelled positive of the query (hashed), so the loss can mask an
    in-batch column that is another of this query's positives (no false negatives from duplicates).
    """

    query: Item
    positive: Item
    negatives: list[Item] = field(default_factory=list)
    positive_ids: list[int] = field(default_factory=list)
    task_id: int = -1
    dataset_id: int = -1
    key: str = ""


@dataclass
class EvalQuery:
    """One evaluation query: the query item (instruction = the first of its list, deterministic),
    the hashed ids of every relevant candidate (from the qrels), and where it belongs."""

    item: Item
    relevant: list[int]
    task_id: int
    dataset: str
    dataset_id: int
    qid: str = ""

    @property
    def pair(self) -> str:
        """The (dataset, task) evaluation pair, named as M-BEIR files name it: ``mscoco_task0``."""
        return f"{self.dataset}_task{self.task_id}"


def format_string(s: str | None) -> str:
    """UniIR ``format_string``: drop \\r, strip spaces and surrounding double quotes, capitalise the
    first letter, end with '.', '?' or '!'. Empty or None stays ''."""
    if not s:
        return ""
    s = s.replace("\r", "").strip().strip('"').strip()
    if not s:
        return ""
    s = s[0].upper() + s[1:]
    if s[-1] not in ".?!":
        s += "."
    return s


def shown_path(root: Path, path: Path) -> str:
    """``path`` as messages and manifests show it: relative to the source root when inside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def hash_qid(qid: str) -> int:
    """UniIR ``hash_qid``: "d:i" -> d * 500_000 + i."""
    d, i = qid.split(":")
    return int(d) * 500_000 + int(i)


def hash_did(did: str) -> int:
    """UniIR ``hash_did``: "d:i" -> d * 10_000_000 + i."""
    d, i = did.split(":")
    return int(d) * 10_000_000 + int(i)
