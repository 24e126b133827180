"""Convert an M-BEIR tree to WebDataset shards (schema.py's sample schema) and read them back.

Layout under ``out_dir``::

    manifest.json
    train/<dataset>_task<N>/shard-000000.tar   training queries, positives and negatives inline
    val/<dataset>_task<N>/shard-*.tar          eval queries, relevant dids (qrels) by id only
    test/<dataset>_task<N>/shard-*.tar
    pool/{train,val,test}/shard-*.tar          the split's global pool

The whole tree is built in ``<out_dir>.tmp-<pid>`` and moved into place with one ``os.replace``, so
``manifest.json`` exists only for a complete conversion.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import webdataset as wds
from tqdm import tqdm
from webdataset.tariterators import group_by_keys, tar_file_expander

from mmtrain.data.mbeir import SPLITS, CandRecord, MBeirData, MBeirSource, QueryRecord, load_mbeir
from mmtrain.data.schema import EvalQuery, Item, hash_did, hash_qid

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SOURCE_FAMILY = "mbeir"
LANGUAGE = "en"  # M-BEIR is English-only


def shard_sizes(count: int, samples_per_shard: int, min_shards: int) -> list[int]:
    """Samples per shard: at most ``samples_per_shard`` each, at least ``min_shards`` shards when
    there are that many samples (so ranks x workers can split by shard), sizes within one of each other."""
    if count == 0:
        return []
    n = max(math.ceil(count / samples_per_shard), min(min_shards, count))
    return [(k + 1) * count // n - k * count // n for k in range(n)]


def _candidate_json(c: CandRecord, image: str | None, *, with_content: bool = True) -> dict[str, Any]:
    return {"did": c.did, "did_hash": hash_did(c.did), "modality": c.modality,
            "text": c.text if with_content else None, "image": image if with_content else None}


def _query_sample(root: Path, key: str, q: QueryRecord, source: MBeirSource, pool: dict[str, CandRecord]) -> dict:
    """One query sample (schema.py): training inlines positives and negatives, eval lists qrels ids."""
    sample: dict[str, Any] = {"__key__": key}
    if q.img_path:
        sample["query.jpg"] = (root / q.img_path).read_bytes()

    def inline(dids: list[str], prefix: str) -> list[dict]:
        out = []
        for i, did in enumerate(dids):
            c = pool[did]
            if c.img_path:
                sample[f"{prefix}.{i}.jpg"] = (root / c.img_path).read_bytes()
            out.append(_candidate_json(c, f"{prefix}.{i}.jpg" if c.img_path else None))
        return out

    if source.split == "train":
        positives, negatives = inline(q.pos_dids, "pos"), inline(q.neg_dids, "neg")
    else:
        positives = [_candidate_json(pool[d], None, with_content=False) for d in q.relevant]
        negatives = []  # UniIR never evaluates with the dataset-provided negatives
    record = {
        "qid": q.qid, "qid_hash": hash_qid(q.qid), "source": SOURCE_FAMILY, "dataset": source.dataset,
        "dataset_id": q.dataset_id, "task_id": source.task_id, "language": LANGUAGE,
        "query": {"text": q.text, "image": "query.jpg" if q.img_path else None, "modality": q.modality},
        "instructions": q.instructions, "positives": positives, "negatives": negatives,
    }
    sample["json"] = json.dumps(record, ensure_ascii=False).encode("utf-8")
    return sample


def _pool_sample(root: Path, key: str, c: CandRecord) -> dict:
    record = {"did": c.did, "did_hash": hash_did(c.did), "source": SOURCE_FAMILY, "dataset_id": c.dataset_id,
              "modality": c.modality, "text": c.text, "image": "jpg" if c.img_path else None}
    sample: dict[str, Any] = {"__key__": key, "json": json.dumps(record, ensure_ascii=False).encode("utf-8")}
    if c.img_path:
        sample["jpg"] = (root / c.img_path).read_bytes()
    return sample


def _write_tars(out: Path, rel_dir: str, samples: Iterator[dict], sizes: list[int], bar: tqdm) -> list[str]:
    """Write ``sizes[k]`` samples to ``rel_dir/shard-<k>.tar``; return the relative shard paths."""
    (out / rel_dir).mkdir(parents=True, exist_ok=True)
    paths = []
    for k, size in enumerate(sizes):
        rel = f"{rel_dir}/shard-{k:06d}.tar"
        # encoder=False: members are bytes already; mtime fixed so the same input gives the same bytes
        with wds.TarWriter(str(out / rel), encoder=False, mtime=0.0) as writer:
            for _ in range(size):
                writer.write(next(samples))
                bar.update(1)
        paths.append(rel)
    return paths


def _file_info(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest.hexdigest()}


def stale_source_files(manifest: dict[str, Any], mbeir_root: str | Path) -> list[str]:
    """Source files that changed since the shards were written (or vanished). Cheap: a file whose
    size and mtime match is taken as unchanged; only the others are hashed, so a copy that lost its
    mtimes is not mistaken for new data."""
    root, stale = Path(mbeir_root), []
    for rel, info in manifest.get("source_files", {}).items():
        path = root / rel
        if not path.is_file():
            stale.append(rel)
            continue
        st = path.stat()
        if st.st_size == info["size"] and st.st_mtime_ns == info.get("mtime_ns"):
            continue
        if st.st_size != info["size"] or _file_info(path)["sha256"] != info["sha256"]:
            stale.append(rel)
    return stale


def _write_tree(data: MBeirData, out: Path, samples_per_shard: int, min_shards: int) -> dict[str, Any]:
    root = data.root
    total = sum(len(s.pool) + sum(len(src.queries) for src in s.sources) for s in data.splits.values())
    sources: dict[str, Any] = {}
    pools: dict[str, Any] = {}
    with tqdm(total=total, desc="M-BEIR -> shards", unit="sample", mininterval=1.0) as bar:
        for split, loaded in data.splits.items():
            cands = list(loaded.pool.values())
            sizes = shard_sizes(len(cands), samples_per_shard, min_shards)
            gen = (_pool_sample(root, f"{i:09d}", c) for i, c in enumerate(cands))
            per_modality = dict(sorted(Counter(c.modality for c in cands).items()))
            pools[split] = {"count": len(cands), "count_per_modality": per_modality,
                            "shards": _write_tars(out, f"pool/{split}", gen, sizes, bar), "shard_counts": sizes}
            for src in loaded.sources:
                sizes = shard_sizes(len(src.queries), samples_per_shard, min_shards)
                gen = (_query_sample(root, f"{i:09d}", q, src, loaded.pool) for i, q in enumerate(src.queries))
                sources[f"{split}/{src.name}"] = {
                    "name": src.name, "dataset": src.dataset, "dataset_id": src.dataset_id, "task_id": src.task_id,
                    "split": split, "count": len(src.queries),
                    "shards": _write_tars(out, f"{split}/{src.name}", gen, sizes, bar), "shard_counts": sizes}
    return {
        "schema_version": SCHEMA_VERSION, "source_family": SOURCE_FAMILY, "mbeir_root": str(root.resolve()),
        "splits": list(data.splits), "samples_per_shard": samples_per_shard, "min_shards_per_source": min_shards,
        "sources": sources, "pools": pools,
        "dataset_ids": {n: i for s in data.splits.values() for n, i in s.dataset_ids.items()},
        "skipped": [{"kind": p.kind, "location": p.location, "message": p.message} for p in data.skipped],
        "skipped_counts": dict(sorted(Counter(p.kind for p in data.skipped).items())),
        "source_files": {p.relative_to(root).as_posix(): _file_info(p) for p in data.files},
    }


def write_mbeir_shards(mbeir_root: str | Path, out_dir: str | Path, *, splits: Iterable[str] = SPLITS,
                       samples_per_shard: int = 1000, min_shards_per_source: int = 8,
                       skip_invalid: bool = False, check_images: bool = True) -> dict[str, Any]:
    """Validate ``mbeir_root`` (raises MBeirFormatError with every problem unless ``skip_invalid``),
    write the shards and manifest to ``out_dir`` atomically, and return the manifest."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; remove it or use ensure_mbeir_shards")
    data = load_mbeir(mbeir_root, tuple(splits), skip_invalid=skip_invalid, check_images=check_images)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of an earlier crash of a process with our pid
    tmp.mkdir(parents=True)
    try:
        manifest = _write_tree(data, tmp, samples_per_shard, min_shards_per_source)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
        os.replace(tmp, out)  # atomic; fails if another process filled out_dir meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def ensure_mbeir_shards(mbeir_root: str | Path, out_dir: str | Path, *, rebuild_stale: bool = False,
                        **kw: Any) -> dict[str, Any]:
    """The manifest of ``out_dir`` if it holds a finished conversion, else convert first (kw as
    :func:`write_mbeir_shards`). Concurrent callers: the first to finish wins, the others read its result.

    Shards whose source files changed since they were written are stale: rebuilt when
    ``rebuild_stale`` (generated data, e.g. the toy world), otherwise a clear error (nothing of the
    user's is deleted)."""
    path = Path(out_dir) / MANIFEST
    if path.exists():
        manifest = read_manifest(out_dir)
        stale = stale_source_files(manifest, mbeir_root)
        if stale and not rebuild_stale:
            raise RuntimeError(f"{out_dir} is stale: {len(stale)} source files under {mbeir_root} changed "
                               f"since its shards were written (e.g. {stale[:3]}); delete it to rebuild")
        if stale:
            log.warning("%s is stale (%d source files changed); rebuilding", out_dir, len(stale))
            old = Path(out_dir).parent / f"{Path(out_dir).name}.stale-{os.getpid()}"
            os.replace(out_dir, old)
            shutil.rmtree(old, ignore_errors=True)
            return ensure_mbeir_shards(mbeir_root, out_dir, **kw)
        asked = {"splits": list(kw.get("splits", SPLITS)), "samples_per_shard": kw.get("samples_per_shard", 1000),
                 "min_shards_per_source": kw.get("min_shards_per_source", 8)}
        differs = {k: (manifest.get(k), v) for k, v in asked.items() if manifest.get(k) != v}
        if differs:  # cached means cached: say so rather than silently rebuild or ignore
            log.warning("%s was built with other settings (built, asked): %s; delete it to rebuild", out_dir, differs)
        return manifest
    try:
        return write_mbeir_shards(mbeir_root, out_dir, **kw)
    except (FileExistsError, OSError):
        if path.exists():
            return read_manifest(out_dir)
        raise


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    manifest = json.loads((Path(out_dir) / MANIFEST).read_text())
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{out_dir}: shard schema version {manifest.get('schema_version')}, expected {SCHEMA_VERSION}")
    return manifest


def _open_tars(tar_paths: Iterable[str | Path]) -> Iterator[dict]:
    for path in tar_paths:
        with open(path, "rb") as f:  # closed as soon as the expander asks for the next shard
            yield {"url": str(path), "stream": f}


def iter_samples(tar_paths: Iterable[str | Path],
                 handler: Callable[[Exception], bool] | None = None) -> Iterator[dict[str, Any]]:
    """Raw samples of the given shards in order: ``{"__key__", "__url__", "json": parsed dict,
    "<member>": bytes...}`` (images stay encoded).

    ``handler``: None raises on a truncated tar or a sample without valid json; otherwise it is called
    with the exception (webdataset's handler contract: return True to go on) and the bad sample or the
    rest of a broken tar is skipped."""
    kw = {"handler": handler} if handler is not None else {}
    for sample in group_by_keys(tar_file_expander(_open_tars(tar_paths), **kw), **kw):
        try:
            sample["json"] = json.loads(sample["json"])
        except (KeyError, ValueError) as e:  # no json member, or not json
            if handler is None:
                raise
            if not handler(ValueError(f"{sample.get('__url__')}:{sample.get('__key__')}: bad json ({e!r})")):
                return
            continue
        yield sample


def load_pool(out_dir: str | Path, split: str) -> tuple[list[Item], list[str]]:
    """A split's pool as items (``id`` = did hash, images as JPEG bytes) plus the string dids, in shard
    order. Holds every image in memory: fine for val and local pools; stream ``iter_samples`` otherwise."""
    manifest = read_manifest(out_dir)
    if split not in manifest["pools"]:
        raise KeyError(f"{out_dir}: no pool for split {split!r}; have {sorted(manifest['pools'])}")
    items, dids = [], []
    for s in iter_samples(Path(out_dir) / p for p in manifest["pools"][split]["shards"]):
        j = s["json"]
        items.append(Item(j["text"], s.get("jpg") if j["image"] else None, j["modality"], None, j["did_hash"]))
        dids.append(j["did"])
    return items, dids


def load_eval_queries(out_dir: str | Path, split: str) -> list[EvalQuery]:
    """Every query of a split's (dataset, task) sources, instruction = the first of its list."""
    manifest = read_manifest(out_dir)
    queries = []
    for entry in manifest["sources"].values():
        if entry["split"] != split:
            continue
        for s in iter_samples(Path(out_dir) / p for p in entry["shards"]):
            j, q = s["json"], s["json"]["query"]
            instruction = j["instructions"][0] if j["instructions"] else None
            image = s.get("query.jpg") if q["image"] else None
            item = Item(q["text"], image, q["modality"], instruction, j["qid_hash"])
            queries.append(EvalQuery(item, [p["did_hash"] for p in j["positives"]], j["task_id"], j["dataset"],
                                     j["dataset_id"], j["qid"]))
    return queries
