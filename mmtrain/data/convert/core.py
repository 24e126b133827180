"""What every converter shares: canonical records, bad-input accounting, image checks and re-encoding,
and the parallel, restartable shard writer that produces the manifest.

A converter parses its source into a :class:`Converted` (queries per split, candidate pools per split,
problems with locations) and hands it to :func:`write_converted`, which

1. checks every referenced image (exists and decodes) in parallel and drops what references a bad one;
2. checks every evaluation positive against the pool it will be searched in;
3. fails with :class:`ConversionError` (and ``bad_input.json``) when the skipped share of input records
   exceeds ``max_bad`` (default 0: any bad record fails);
4. plans shards (``<split>/<dataset>_task<N>/shard-*.tar``, ``pool/<split>/shard-*.tar``) and writes them
   in parallel; each tar is written under a temporary name and renamed, and a ``.done/`` marker with the
   job's fingerprint lets a killed run resume without redoing finished shards;
5. writes ``manifest.json`` last (atomically): the same shape as the M-BEIR manifest (shards.py), so the
   training stream and the evaluator read any family unchanged.
"""

from __future__ import annotations

import hashlib
import io
import math
import multiprocessing
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from mmtrain.data.mbeir import Problems, check_image, read_jsonl
from mmtrain.data.schema import TASKS

MAX_EXAMPLES_PER_KIND = 20
JPEG_QUALITY = 90


class ConversionError(ValueError):
    """Too much bad input: the message lists each kind with its count and example locations."""


@dataclass(frozen=True)
class ImageRef:
    """An image by file path (absolute) or by bytes (HF image structs in parquet)."""

    path: str | None = None
    data: bytes | None = None

    def key(self) -> str:
        return self.path if self.path is not None else "sha1:" + hashlib.sha1(self.data or b"").hexdigest()

    def read(self) -> bytes:
        return self.data if self.data is not None else Path(self.path).read_bytes()  # type: ignore[arg-type]


@dataclass
class Cand:
    """A candidate (positive, negative or pool entry)."""

    did: str
    did_hash: int
    text: str | None
    image: ImageRef | None
    modality: str
    location: str = ""
    dataset_id: int = -1


@dataclass
class Query:
    """A query sample before it is written (see schema.py for the shard record)."""

    qid: str
    qid_hash: int
    dataset: str
    task_id: int
    text: str
    image: ImageRef | None
    modality: str
    positives: list[Cand]
    location: str
    negatives: list[Cand] = field(default_factory=list)
    instructions: list[str] = field(default_factory=list)
    language: str | None = "en"
    dataset_id: int = -1
    subset: str | None = None
    neg_dids: list[str] | None = None        # every negative id the source lists (inline ones may be fewer)
    candidate_dids: list[str] | None = None  # MMEB-eval: the row's own candidate list, positive first


@dataclass
class Converted:
    """A parsed source: what :func:`write_converted` writes."""

    family: str
    root: Path                                   # source files are recorded relative to it
    queries: dict[str, list[Query]]              # split -> queries
    pools: dict[str, dict[str, Cand]]            # split -> did -> candidate (eval splits)
    files: list[Path]                            # source text files, checksummed in the manifest
    problems: Problems = field(default_factory=Problems)
    repairs: Counter = field(default_factory=Counter)
    input_records: int = 0


def stable_hash(text: str) -> int:
    """A 63-bit id for a string id that is not M-BEIR's ``d:i`` (stable across runs and machines,
    unlike ``hash()``); collisions in a pool are checked at write time."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big") & (2**63 - 1)


def content_did(prefix: str, text: str | None, image: str | None) -> str:
    """A did derived from content, for formats without candidate ids (MMEB, mmE5): equal candidates
    (a class label shared by many rows) get equal ids, so the loss can mask them as false negatives."""
    digest = hashlib.sha1(f"{text or ''}\0{image or ''}".encode("utf-8")).hexdigest()[:16]
    return f"{prefix}:{digest}"


def modality_of(text: str | None, image: object | None) -> str | None:
    if text and image is not None:
        return "image,text"
    return "image" if image is not None else ("text" if text else None)


def task_of(query_modality: str, cand_modality: str) -> int | None:
    for tid, pair in TASKS.items():
        if pair == (query_modality, cand_modality):
            return tid
    return None


# -- reading tables -------------------------------------------------------------------------------
def read_rows(path: Path, shown: str, data: "Converted") -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, row) for every row of a jsonl or parquet file, each counted in ``data.input_records``;
    a malformed json line is a problem. Parquet is read batch by batch (pyarrow), so a 145 MB file never
    sits in memory as Python objects."""
    problems = data.problems
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # optional at import time: only parquet sources need it

        row = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for obj in batch.to_pylist():
                data.input_records += 1
                yield f"{shown}:row{row}", obj
                row += 1
        return
    def count() -> None:
        data.input_records += 1

    yield from read_jsonl(path, shown, problems, on_line=count)


def image_ref(value: Any, image_root: Path) -> ImageRef | None:
    """A row's image field: a path relative to ``image_root``, an HF image struct ``{"bytes", "path"}``
    (parquet), or empty / None."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return ImageRef(data=bytes(value["bytes"]))
        value = value.get("path")
    if not value:
        return None
    if not isinstance(value, str):
        raise ValueError(f"image must be a path or an image struct, got {type(value).__name__}")
    return ImageRef(path=str(image_root / value))


# -- images ---------------------------------------------------------------------------------------
def check_image_ref(ref: ImageRef) -> tuple[str, str | None]:
    """(key, None) when the image exists and decodes, else (key, reason) (``mbeir.check_image``)."""
    try:
        raw = ref.read()
    except FileNotFoundError:
        return ref.key(), "missing"
    except OSError as e:
        return ref.key(), f"unreadable ({e})"
    return ref.key(), check_image(None, raw)


def encode_image(ref: ImageRef, max_short_side: int | None) -> tuple[bytes, bool]:
    """JPEG bytes with the short side at most ``max_short_side``; (bytes, re-encoded?). An RGB JPEG
    already small enough keeps its exact bytes (M-BEIR's 256 px images pass through untouched)."""
    raw = ref.read()
    with Image.open(io.BytesIO(raw)) as im:
        small = not max_short_side or min(im.size) <= max_short_side
        if im.format == "JPEG" and im.mode == "RGB" and small:
            return raw, False
        if not small and im.format == "JPEG":  # decode at a reduced scale >= the target (fast)
            s = max_short_side / min(im.size)
            im.draft("RGB", (math.ceil(im.size[0] * s), math.ceil(im.size[1] * s)))
        rgb = im.convert("RGB")
    if max_short_side and min(rgb.size) > max_short_side:
        s = max_short_side / min(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.size[0] * s)), max(1, round(rgb.size[1] * s))), Image.BICUBIC)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue(), True


def _pool_map(fn, items: list, workers: int, desc: str, unit: str, total_of=lambda r: 1):
    """Map ``fn`` over ``items`` on ``workers`` processes (in-process for 1), with a progress bar."""
    with tqdm(total=sum(total_of(i) for i in items), desc=desc, unit=unit, mininterval=1.0,
              disable=None) as bar:
        if workers <= 1 or len(items) <= 1:
            for item in items:
                yield fn(item)
                bar.update(total_of(item))
            return
        # fork: the jobs carry only paths and small records; spawn would re-import torch per worker.
        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        with ctx.Pool(workers) as pool:
            for item, result in zip(items, pool.imap(fn, items, chunksize=1 if len(items) < 64 else 16)):
                bar.update(total_of(item))
                yield result


def _check_images(data: Converted, workers: int) -> None:
    """Drop everything that references a missing or undecodable image, each reported with its location."""
    refs: dict[str, ImageRef] = {}
    for qs in data.queries.values():
        for q in qs:
            for ref in [q.image, *(c.image for c in q.positives + q.negatives)]:
                if ref is not None:
                    refs.setdefault(ref.key(), ref)
    for pool in data.pools.values():
        for c in pool.values():
            if c.image is not None:
                refs.setdefault(c.image.key(), c.image)
    bad = {k: why for k, why in _pool_map(check_image_ref, list(refs.values()), workers, "check images", "img")
           if why is not None}
    if not bad:
        return

    def problem(ref: ImageRef | None, loc: str, what: str) -> bool:
        if ref is None or ref.key() not in bad:
            return False
        why = bad[ref.key()]
        data.problems.add("missing_image" if why == "missing" else "undecodable_image", loc,
                          f"{what} image {ref.path or '<bytes>'}: {why}")
        return True

    filtered: dict[int, dict[str, Cand]] = {}  # a pool shared by several splits is checked (and kept shared) once
    for split, pool in data.pools.items():
        if id(pool) not in filtered:
            filtered[id(pool)] = {d: c for d, c in pool.items() if not problem(c.image, c.location, "candidate")}
        data.pools[split] = filtered[id(pool)]
    for split, qs in data.queries.items():
        kept = []
        for q in qs:
            bad_query = problem(q.image, q.location, "query")
            bad_pos = [problem(c.image, q.location, f"positive {c.did}") for c in q.positives]
            q.negatives = [c for c in q.negatives if not problem(c.image, q.location, f"negative {c.did}")]
            if not bad_query and not any(bad_pos):
                kept.append(q)
        data.queries[split] = kept


def _check_pools(data: Converted) -> None:
    """Every evaluation positive exists in the pool it is searched in; pool hashes are unique."""
    for split, qs in data.queries.items():
        if split == "train":
            continue
        pool = data.pools.get(split, {})
        kept = []
        for q in qs:
            missing = [c.did for c in q.positives if c.did not in pool]
            missing += [d for d in q.candidate_dids or [] if d not in pool and d not in missing]
            if missing:
                data.problems.add("positive_not_in_pool", q.location,
                                  f"{len(missing)} relevant/candidate dids absent from pool/{split}, e.g. {missing[:3]}")
            else:
                kept.append(q)
        data.queries[split] = kept
        hashes = Counter(c.did_hash for c in pool.values())
        if any(n > 1 for n in hashes.values()):
            raise ConversionError(f"pool/{split}: did hash collision {[h for h, n in hashes.items() if n > 1][:3]}")
