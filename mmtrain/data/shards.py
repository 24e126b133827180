"""Reading shards: the manifest dialect every writer shares, and the samples, pools and eval queries.

Every shard directory (written by ``mmtrain/data/convert/``, the one shard writer, or by
``mix.write_mix`` / the synthesis output) has the layout::

    manifest.json                       written last: it exists only for a finished conversion
    train/<dataset>_task<N>/shard-*.tar training queries, positives and negatives inline
    val|test/<dataset>_task<N>/shard-*.tar  eval queries, relevant dids (qrels) by id only
    pool/{train,val,test}/shard-*.tar   the split's pool

``manifest["source_files"]`` stamps the files it was made from (:func:`file_info`), so a reader can
tell when its shards are stale (:func:`stale_source_files`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from webdataset.tariterators import group_by_keys, tar_file_expander

from mmtrain.data.schema import EvalQuery, Item
from mmtrain.io import file_sha256

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def file_info(path: Path) -> dict[str, Any]:
    """The stamp of a source file in ``manifest["source_files"]``."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(path)}


def stale_source_files(manifest: dict[str, Any], source_root: str | Path) -> list[str]:
    """Source files that changed since the shards were written (or vanished). Cheap: a file whose
    size and mtime match is taken as unchanged; only the others are hashed, so a copy that lost its
    mtimes is not mistaken for new data."""
    root, stale = Path(source_root), []
    for rel, info in manifest.get("source_files", {}).items():
        path = root / rel
        if not path.is_file():
            stale.append(rel)
            continue
        st = path.stat()
        if st.st_size == info["size"] and st.st_mtime_ns == info.get("mtime_ns"):
            continue
        if st.st_size != info["size"] or file_sha256(path) != info["sha256"]:
            stale.append(rel)
    return stale


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
