"""Bad-input policy, shard planning, the parallel restartable shard writer, and the manifest: the one
place that writes shards (every source, M-BEIR and the toy world included, comes through here)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import webdataset as wds

from mmtrain.data.convert.core import (MAX_EXAMPLES_PER_KIND, Cand, ConversionError, Converted, Query, _check_images,
                                       _check_pools, _pool_map, encode_image)
from mmtrain.data.shards import MANIFEST, SCHEMA_VERSION, file_info, read_manifest
from mmtrain.io import atomic_path, atomic_write_json

log = logging.getLogger(__name__)
BAD_INPUT = "bad_input.json"
DONE_DIR = ".done"


def bad_input_report(data: Converted) -> dict[str, Any]:
    """Per kind: count and the first example locations with their messages."""
    kinds: dict[str, dict[str, Any]] = {}
    for p in data.problems:
        entry = kinds.setdefault(p.kind, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < MAX_EXAMPLES_PER_KIND:
            entry["examples"].append({"location": p.location, "message": p.message})
    skipped = len({p.location for p in data.problems})
    return {"input_records": data.input_records, "skipped_records": skipped,
            "skipped_fraction": skipped / max(1, data.input_records), "kinds": dict(sorted(kinds.items())),
            "repairs": dict(sorted(data.repairs.items()))}


def enforce_threshold(data: Converted, out: Path, max_bad: float) -> dict[str, Any]:
    """Raise ConversionError (after writing ``bad_input.json``) when the skipped share of input
    records exceeds ``max_bad``; return the report otherwise."""
    report = bad_input_report(data)
    if report["skipped_fraction"] <= max_bad:
        if data.problems:
            log.warning("%s: skipping %d of %d records (%s)", data.family, report["skipped_records"],
                        data.input_records, {k: v["count"] for k, v in report["kinds"].items()})
        return report
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / BAD_INPUT, report)
    lines = [f"{data.family}: {report['skipped_records']} of {data.input_records} input records are bad "
             f"({100 * report['skipped_fraction']:.3g} %), above the threshold max_bad={max_bad}:"]
    for kind, entry in report["kinds"].items():
        lines.append(f"  {kind}: {entry['count']}")
        lines += [f"    {e['location']}: {e['message']}" for e in entry["examples"][:5]]
    lines.append(f"full report: {out / BAD_INPUT}; raise --max-bad to skip these records instead")
    raise ConversionError("\n".join(lines))


# -- planning -------------------------------------------------------------------------------------
def shard_sizes(count: int, samples_per_shard: int, min_shards: int) -> list[int]:
    """Samples per shard: at most ``samples_per_shard`` each, at least ``min_shards`` shards when
    there are that many samples (so ranks x workers can split by shard), sizes within one of each other."""
    if count == 0:
        return []
    n = max(math.ceil(count / samples_per_shard), min(min_shards, count))
    return [(k + 1) * count // n - k * count // n for k in range(n)]


@dataclass
class Job:
    """One shard: where it goes and what it holds."""

    rel: str
    kind: str                       # "query" | "pool"
    split: str
    family: str
    first_key: int
    records: list                   # Query or Cand
    fingerprint: str = ""


def _source_name(q: Query) -> str:
    return f"{q.dataset}_task{q.task_id}"


def plan(data: Converted, samples_per_shard: int, min_shards: int, salt: str) -> tuple[list[Job], dict]:
    """The shard jobs, and per source / pool the entries of the manifest (without bytes)."""
    jobs: list[Job] = []
    sources: dict[str, dict[str, Any]] = {}
    pools: dict[str, dict[str, Any]] = {}

    def add(rel_dir: str, kind: str, split: str, records: list) -> tuple[list[str], list[int]]:
        sizes, rels, start = shard_sizes(len(records), samples_per_shard, min_shards), [], 0
        for k, n in enumerate(sizes):
            rel = f"{rel_dir}/shard-{k:06d}.tar"
            job = Job(rel, kind, split, data.family, start, records[start:start + n])
            digest = hashlib.sha1(salt.encode())
            for r in job.records:  # records are plain dataclasses: repr is stable and complete
                digest.update(repr(r).encode("utf-8"))
            job.fingerprint = digest.hexdigest()
            jobs.append(job)
            rels.append(rel)
            start += n
        return rels, sizes

    written: dict[int, dict[str, Any]] = {}  # one corpus serving several splits (BEIR) is written once
    for split in sorted(data.pools):
        pool = data.pools[split]
        if id(pool) not in written:
            cands = list(pool.values())
            rels, sizes = add(f"pool/{split}", "pool", split, cands)
            written[id(pool)] = {"count": len(cands), "shards": rels, "shard_counts": sizes,
                                 "count_per_modality": dict(sorted(Counter(c.modality for c in cands).items()))}
        pools[split] = dict(written[id(pool)])
    for split in sorted(data.queries):
        groups: dict[str, list[Query]] = defaultdict(list)
        for q in data.queries[split]:
            groups[_source_name(q)].append(q)
        for name in sorted(groups):
            qs = groups[name]
            rels, sizes = add(f"{split}/{name}", "query", split, qs)
            sources[f"{split}/{name}"] = {
                "name": name, "dataset": qs[0].dataset, "dataset_id": qs[0].dataset_id, "task_id": qs[0].task_id,
                "split": split, "count": len(qs), "shards": rels, "shard_counts": sizes, "family": data.family,
                "languages": dict(sorted(Counter(q.language or "und" for q in qs).items())),
                "subsets": dict(sorted(Counter(q.subset or "" for q in qs).items()))}
    return jobs, {"sources": sources, "pools": pools}


# -- writing --------------------------------------------------------------------------------------
def _cand_json(c: Cand, image: str | None, with_content: bool = True) -> dict[str, Any]:
    return {"did": c.did, "did_hash": c.did_hash, "modality": c.modality,
            "text": c.text if with_content else None, "image": image if with_content else None}


def _query_sample(key: str, q: Query, split: str, family: str, max_side: int | None, stats: Counter) -> dict:
    sample: dict[str, Any] = {"__key__": key}

    def put(member: str, ref) -> str:
        sample[member], reencoded = encode_image(ref, max_side)
        stats["images"] += 1
        stats["reencoded"] += int(reencoded)
        return member

    def inline(cands: list[Cand], prefix: str) -> list[dict]:
        return [_cand_json(c, put(f"{prefix}.{i}.jpg", c.image) if c.image is not None else None)
                for i, c in enumerate(cands)]

    train = split == "train"
    record = {
        "qid": q.qid, "qid_hash": q.qid_hash, "source": family, "dataset": q.dataset, "dataset_id": q.dataset_id,
        "task_id": q.task_id, "language": q.language,
        "query": {"text": q.text, "image": put("query.jpg", q.image) if q.image is not None else None,
                  "modality": q.modality},
        "instructions": q.instructions,
        # Training shards inline content; evaluation shards list relevant dids (the pool has the content).
        "positives": inline(q.positives, "pos") if train else [_cand_json(c, None, False) for c in q.positives],
        "negatives": inline(q.negatives, "neg") if train else [],
    }
    for name in ("subset", "neg_dids", "candidate_dids"):  # optional fields (schema.py)
        if getattr(q, name) is not None:
            record[name] = getattr(q, name)
    sample["json"] = json.dumps(record, ensure_ascii=False).encode("utf-8")
    return sample


def _pool_sample(key: str, c: Cand, family: str, max_side: int | None, stats: Counter) -> dict:
    record = {"did": c.did, "did_hash": c.did_hash, "source": family, "dataset_id": c.dataset_id,
              "modality": c.modality, "text": c.text, "image": "jpg" if c.image is not None else None}
    sample: dict[str, Any] = {"__key__": key, "json": json.dumps(record, ensure_ascii=False).encode("utf-8")}
    if c.image is not None:
        sample["jpg"], reencoded = encode_image(c.image, max_side)
        stats["images"] += 1
        stats["reencoded"] += int(reencoded)
    return sample


def _done_path(out: Path, rel: str) -> Path:
    return out / DONE_DIR / (rel.replace("/", "__") + ".json")


def write_job(job: Job, out: Path, max_side: int | None) -> dict[str, Any]:
    """Write one shard under a temporary name, rename it into place, then record it as done."""
    stats: Counter = Counter()
    final = out / job.rel
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(final) as tmp:
        with wds.TarWriter(str(tmp), encoder=False, mtime=0.0) as writer:  # bytes members, reproducible tars
            for i, r in enumerate(job.records):
                key = f"{job.first_key + i:09d}"
                if job.kind == "pool":
                    writer.write(_pool_sample(key, r, job.family, max_side, stats))
                else:
                    writer.write(_query_sample(key, r, job.split, job.family, max_side, stats))
    done = {"rel": job.rel, "fingerprint": job.fingerprint, "count": len(job.records),
            "bytes": final.stat().st_size, **stats}
    marker = _done_path(out, job.rel)
    marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, done)
    return done


def _finished(out: Path, job: Job) -> dict[str, Any] | None:
    try:
        done = json.loads(_done_path(out, job.rel).read_text())
    except (OSError, ValueError):
        return None
    ok = done.get("fingerprint") == job.fingerprint and (out / job.rel).is_file()
    return done if ok else None


def write_converted(data: Converted, out_dir: str | Path, *, samples_per_shard: int = 1000,
                    min_shards_per_source: int = 8, max_bad: float = 0.0, workers: int = 2,
                    max_short_side: int | None = 256, check_images: bool = True,
                    settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate, write the shards (resuming a killed run) and the manifest; return the manifest."""
    out = Path(out_dir)
    if (out / MANIFEST).exists():
        raise FileExistsError(f"{out} already holds a finished conversion ({MANIFEST}); remove it to redo it")
    source_files = {_rel(data.root, p): file_info(p) for p in data.files}
    if check_images:
        _check_images(data, workers)
    _check_pools(data)
    report = enforce_threshold(data, out, max_bad)
    salt = json.dumps([SCHEMA_VERSION, max_short_side, sorted((k, v["sha256"]) for k, v in source_files.items())])
    jobs, entries = plan(data, samples_per_shard, min_shards_per_source, salt)
    out.mkdir(parents=True, exist_ok=True)
    for stray in out.rglob("*.tmp-*"):  # half-written shards of a killed run: never listed anywhere
        stray.unlink()
    done = {j.rel: d for j in jobs if (d := _finished(out, j)) is not None}
    todo = [j for j in jobs if j.rel not in done]
    if done:
        log.info("%s: %d of %d shards already written, resuming", out, len(done), len(jobs))
    fn = partial(write_job, out=out, max_side=max_short_side)
    for d in _pool_map(fn, todo, workers, f"{data.family} -> shards", "sample", lambda j: len(j.records)):
        done[d["rel"]] = d
    for entry in [*entries["sources"].values(), *entries["pools"].values()]:
        entry["bytes"] = sum(done[r]["bytes"] for r in entry["shards"])
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for entry in entries["sources"].values():
        counts.setdefault(entry["split"], {}).setdefault(entry["dataset"], {})[str(entry["task_id"])] = entry["count"]
    manifest = {
        "schema_version": SCHEMA_VERSION, "source_family": data.family, "source_root": str(data.root.resolve()),
        "splits": sorted(set(data.queries) | set(data.pools)), "samples_per_shard": samples_per_shard,
        "min_shards_per_source": min_shards_per_source, "max_short_side": max_short_side, **entries,
        "counts": counts, "bytes": sum(d["bytes"] for d in done.values()),
        "images": {"written": sum(d.get("images", 0) for d in done.values()),
                   "reencoded": sum(d.get("reencoded", 0) for d in done.values())},
        "dataset_ids": {},
        "skipped": [{"kind": p.kind, "location": p.location, "message": p.message} for p in data.problems],
        "skipped_counts": dict(sorted(Counter(p.kind for p in data.problems).items())),
        "bad_input": report, "max_bad": max_bad, "settings": settings or {},
        "source_files": source_files,
    }
    if (out / MANIFEST).exists():  # another process converted the same input meanwhile: its result stands
        return read_manifest(out)
    atomic_write_json(out / MANIFEST, manifest)  # last: a manifest means a complete conversion
    return manifest


def _rel(root: Path, path: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)
