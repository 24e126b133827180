"""The end of a synthesis run: the manifest, the rejected list, and the canonical shards.

``synth_manifest.json`` (rewritten at the end of every run, atomically):

    counts        samples asked for, finished, accepted, rejected, pending; attempts, retries (attempts
                  beyond each sample's first), retried_samples, failures by reason (every failed
                  attempt), rejected by reason, ignored_fields
    distribution  accepted samples per task/modality and per language
    rejected      the first 50 rejections (index, reason, message, attempts, last answer excerpt);
                  all of them are in ``rejected.jsonl``
    generator, embedder, identity, shards (the converter's manifest summary)

Counts cover every finished sample of every run in the directory (they are computed from the part
files); attempts of samples lost in flight when a run was killed are not in them.

Shards: the accepted samples become ``mmtrain.data.convert`` records (family ``mme5_synthetic``,
``dataset`` = the released set's table: Classification / Retrieval / VQA, ``subset`` = the modality tag,
``language``, ``task_id`` from the modalities, the instruction in ``instructions``) written by the
converters' writer (``write_converted``) into ``<out_dir>/shards``: the same layout and manifest as any
converted source, so ``data.shard_dir`` or ``data.mix`` read it unchanged. The part files are its source
files (checksummed): shards are rewritten only when the parts changed.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mmtrain.io import atomic_write_text
from mmtrain.data.convert.core import Cand, Converted, ImageRef, Query, content_did, modality_of, stable_hash
from mmtrain.data.convert.writer import write_converted
from mmtrain.data.schema import task_id_for
from mmtrain.data.shards import MANIFEST, read_manifest, stale_source_files
from mmtrain.synth.configure import TASK_TABLES, split_tag
from mmtrain.synth.corpus import ImageCorpus
from mmtrain.synth.store import PARTS, PartStore

log = logging.getLogger(__name__)
FAMILY = "mme5_synthetic"
SYNTH_MANIFEST = "synth_manifest.json"
REJECTED = "rejected.jsonl"
SHARDS = "shards"
MANIFEST_REJECTED = 50


def to_query(record: dict[str, Any], corpus: ImageCorpus, seed: int, location: str) -> Query:
    """An accepted record as the converters' query record (schema.py's shard sample once written)."""
    c, s = record["config"], record["sample"]
    query_mod, doc_mod = split_tag(c["modality"])

    def cand(text: str, image: str | None) -> Cand:
        did = content_did(FAMILY, text or None, image)
        ref = ImageRef(path=str(corpus.path(image))) if image else None
        modality = modality_of(text or None, ref)
        if modality != doc_mod:
            raise ValueError(f"{location}: document modality {modality}, configured {doc_mod}")
        return Cand(did, stable_hash(did), text or None, ref, modality, location)

    positive, negative = cand(s["positive"], c["positive_image"]), cand(s["negative"], c["negative_image"])
    query_ref = ImageRef(path=str(corpus.path(c["query_image"]))) if c["query_image"] else None
    if modality_of(s["query"] or None, query_ref) != query_mod:
        raise ValueError(f"{location}: query modality {modality_of(s['query'] or None, query_ref)}, configured {query_mod}")
    qid = f"synth-s{seed}:{record['index']}"
    return Query(qid, stable_hash(f"{FAMILY}/{qid}"), TASK_TABLES[c["task"]], task_id_for(query_mod, doc_mod),
                 s["query"], query_ref, query_mod, [positive], location, negatives=[negative],
                 instructions=[s["instruction"]], language=c["language"], subset=c["modality"],
                 neg_dids=[negative.did])


def current_shards(store: PartStore, options: DictConfig) -> dict[str, Any] | None:
    """The shards' manifest when they were written from exactly the present parts with these options."""
    out = store.out / SHARDS
    if not (out / MANIFEST).is_file():
        return None
    manifest = read_manifest(out)
    same_parts = set(manifest.get("source_files", {})) == {f"{PARTS}/{p.name}" for p in store.part_files()}
    same_layout = all(manifest.get(k) == options[k] for k in ("samples_per_shard", "min_shards_per_source",
                                                               "max_short_side"))
    return manifest if same_parts and same_layout and not stale_source_files(manifest, store.out) else None


def write_shards(queries: list[Query], store: PartStore, seed: int, options: DictConfig) -> dict[str, Any]:
    """The accepted samples as canonical shards in ``<out_dir>/shards``, by the converters' writer."""
    out = store.out / SHARDS
    if (out / MANIFEST).is_file():
        os.remove(out / MANIFEST)  # more samples or other options since: rewrite the shards
    data = Converted(FAMILY, store.out, {"train": queries}, {}, store.part_files())
    data.input_records = len(queries)
    return write_converted(data, out, samples_per_shard=options.samples_per_shard,
                           min_shards_per_source=options.min_shards_per_source, max_bad=0.0,
                           workers=options.workers, max_short_side=options.max_short_side,
                           check_images=options.check_images, settings={"source": "mmtrain.synth", "seed": seed})


class Tally:
    """The manifest's counts and distribution, accumulated record by record (a 560K-sample run's
    records do not fit in memory at once)."""

    def __init__(self) -> None:
        self.n = Counter()
        self.failures: Counter = Counter()
        self.rejected_by_reason: Counter = Counter()
        self.task_modality: Counter = Counter()
        self.language: Counter = Counter()

    def add(self, r: dict[str, Any]) -> None:
        self.n[r["status"]] += 1
        self.n["attempts"] += r["attempts"]
        self.n["retries"] += max(0, r["attempts"] - 1)
        self.n["retried_samples"] += r["attempts"] > 1
        self.failures.update(f["reason"] for f in r["failures"])
        if r["status"] == "rejected":
            self.rejected_by_reason[r["reason"]] += 1
        else:
            self.n["ignored_fields"] += len(r.get("ignored_fields", []))
            self.task_modality[f"{r['config']['task']}/{r['config']['modality']}"] += 1
            self.language[r["config"]["language"]] += 1

    def counts(self, num_samples: int) -> dict[str, Any]:
        n = self.n
        finished = n["accepted"] + n["rejected"]
        return {"samples": num_samples, "finished": finished, "accepted": n["accepted"], "rejected": n["rejected"],
                "pending": num_samples - finished, "attempts": n["attempts"], "retries": n["retries"],
                "retried_samples": n["retried_samples"], "failures_by_reason": dict(sorted(self.failures.items())),
                "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
                "ignored_fields": n["ignored_fields"]}

    def distribution(self) -> dict[str, dict[str, int]]:
        return {"task_modality": dict(sorted(self.task_modality.items())),
                "language": dict(sorted(self.language.items()))}


def _rejection(r: dict[str, Any]) -> dict[str, Any]:
    return {"index": r["index"], "reason": r["reason"], "message": r["message"], "attempts": r["attempts"],
            "last_response_excerpt": r["last_response_excerpt"], "failures": r["failures"], "config": r["config"]}


def finish(cfg: DictConfig, store: PartStore, corpus: ImageCorpus, generator: Any, embedder: Any) -> dict[str, Any]:
    """One pass over the finished records: counts, rejections, and (when nothing is pending and the
    shards are not up to date) the queries for the shards. A later run with a smaller num_samples reports
    and shards only its first num_samples samples."""
    finished = sum(1 for i in store.status if i < cfg.num_samples)
    shards = None
    if cfg.output.write_shards and finished == cfg.num_samples:
        shards = current_shards(store, cfg.output)
    build = cfg.output.write_shards and finished == cfg.num_samples and shards is None
    tally, rejected, queries = Tally(), [], []
    for r in store.records():
        if r["index"] >= cfg.num_samples:
            continue
        tally.add(r)
        if r["status"] == "rejected":
            rejected.append(_rejection(r))
        elif build:
            queries.append(to_query(r, corpus, cfg.seed, f"sample {r['index']}"))
    atomic_write_text(store.out / REJECTED, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected))
    if queries:
        shards = write_shards(queries, store, cfg.seed, cfg.output)
    manifest: dict[str, Any] = {
        "counts": tally.counts(cfg.num_samples), "distribution": tally.distribution(),
        "rejected": rejected[:MANIFEST_REJECTED], "rejected_file": REJECTED,
        "generator": generator.describe(), "embedder": embedder.describe(),
        "identity": json.loads((store.out / "run.json").read_text()),
        "shards": None if shards is None else {
            "dir": SHARDS, "queries": sum(e["count"] for e in shards["sources"].values()),
            "sources": {k: e["count"] for k, e in shards["sources"].items()}},
    }
    atomic_write_text(store.out / SYNTH_MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False))
    print(summary(manifest, store.out))
    return manifest


def summary(manifest: dict[str, Any], out: Path) -> str:
    c = manifest["counts"]
    lines = [f"synthesis {out}: {c['samples']} samples: {c['accepted']} accepted, {c['rejected']} rejected, "
             f"{c['pending']} pending",
             f"  {c['attempts']} requests, {c['retries']} retries over {c['retried_samples']} samples; failed "
             f"attempts by reason: {c['failures_by_reason'] or 'none'}"]
    if c["rejected"]:
        lines.append(f"  rejected by reason: {c['rejected_by_reason']} (all in {out / REJECTED})")
        for r in manifest["rejected"][:5]:
            excerpt = (r["last_response_excerpt"] or "")[:80].replace("\n", " ")
            lines.append(f"    sample {r['index']}: {r['reason']} after {r['attempts']} attempts: {r['message'][:120]}"
                         + (f" | answer: {excerpt!r}" if excerpt else ""))
    if manifest["shards"]:
        lines.append(f"  shards: {out / manifest['shards']['dir']} ({manifest['shards']['queries']} queries in "
                     f"{len(manifest['shards']['sources'])} sources)")
    elif c["pending"]:
        lines.append("  shards: not written while samples are pending (run the same command again)")
    lines.append(f"  manifest: {out / SYNTH_MANIFEST}")
    return "\n".join(lines)
