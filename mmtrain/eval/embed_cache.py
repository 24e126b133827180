"""On-disk cache of embeddings, keyed by model and data, so a second evaluation (or a reranking pass
over the same retrieval) does not encode again.

An entry is ``<dir>/<key[:2]>/<key>.npy`` plus ``<key>.json`` (what was encoded, when, shape). The key
is a SHA-256 over the model fingerprint, the side (query / candidate) and the data fingerprint, so any
change to either gives a new entry instead of a stale hit. Writes go to a temporary file that is
renamed into place (``mmtrain.io``): a reader sees a whole entry or none, and two processes writing
the same entry both leave a valid file.

Fingerprints:
- data: SHA-256 over every item's text, instruction, modality and image identity. An item list may
  provide its own ``fingerprint()`` (lazy lists hash image *paths*, so a cache hit reads no image);
  otherwise image bytes are hashed.
- model: the backbone's config plus the checkpoint's path and its files' sizes and modification times
  (hashing a multi-GB checkpoint on every run would cost more than it saves; a rewritten checkpoint
  changes its mtime). A checkpoint directory (an export) counts every file in it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmtrain.data.schema import Item
from mmtrain.io import atomic_save, atomic_write_json

CACHE_VERSION = 1  # bump when the entry format or the fingerprint recipe changes


def _update(h: Any, value: str | bytes | None) -> None:
    # Length-prefixed fields: ("ab", "c") and ("a", "bc") must not hash alike.
    if value is None:
        h.update(b"\x00N")
        return
    data = value.encode("utf-8") if isinstance(value, str) else value
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def fingerprint_items(items: Sequence[Item]) -> str:
    """SHA-256 of what an encoder sees of ``items`` (order matters: row i is item i)."""
    own = getattr(items, "fingerprint", None)
    if callable(own):
        return own()
    h = hashlib.sha256(f"items/{CACHE_VERSION}/{len(items)}".encode())
    for it in items:
        for value in (it.text, it.instruction, it.modality):
            _update(h, value)
        _update(h, hashlib.sha256(it.image).digest() if it.image is not None else None)
    return h.hexdigest()


def fingerprint_model(model_config: dict, ckpt: str | os.PathLike | None) -> str:
    """SHA-256 of a backbone config (a plain dict) and the checkpoint file's identity."""
    parts: dict[str, Any] = {"config": model_config, "version": CACHE_VERSION}
    if ckpt is not None:
        path = Path(ckpt)
        # A directory (an export, a DeepSpeed checkpoint): every file in it.
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        parts["ckpt"] = {"path": str(path.resolve()),
                         "files": [(str(f.relative_to(path)) if path.is_dir() else f.name, f.stat().st_size,
                                    f.stat().st_mtime_ns) for f in files]}
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def entry_key(model_fp: str, side: str, data_fp: str) -> str:
    return hashlib.sha256(f"{model_fp}|{side}|{data_fp}".encode()).hexdigest()


class EmbeddingCache:
    """Embeddings by key in ``root``; ``dtype`` is the storage type (float16 halves disk and memory for
    large pools; results are always computed from what is stored, so a hit and a miss agree)."""

    def __init__(self, root: str | os.PathLike, dtype: str = "float32"):
        if dtype not in ("float32", "float16"):
            raise ValueError(f"cache dtype must be float32 or float16, got {dtype!r}")
        self.root = Path(root)
        self.dtype = np.dtype(dtype)

    def _paths(self, key: str) -> tuple[Path, Path]:
        base = self.root / key[:2] / key
        return base.with_suffix(".npy"), base.with_suffix(".json")

    def contains(self, key: str) -> bool:
        npy, meta = self._paths(key)
        return npy.is_file() and meta.is_file()  # meta is written last: both present = complete

    def load(self, key: str) -> np.ndarray:
        """The stored array as float32 (memory-mapped read, then copied: the file may be replaced)."""
        npy, _ = self._paths(key)
        return np.load(npy, mmap_mode="r").astype(np.float32)

    def save(self, key: str, emb: np.ndarray, meta: dict[str, Any]) -> None:
        npy, meta_path = self._paths(key)
        arr = np.ascontiguousarray(emb, dtype=self.dtype)
        npy.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(npy, lambda tmp: np.save(tmp, arr, allow_pickle=False), fsync=True)
        info = {**meta, "shape": list(arr.shape), "dtype": str(arr.dtype), "created": time.time(),
                "cache_version": CACHE_VERSION}
        atomic_write_json(meta_path, info, default=str)

    def round_trip(self, emb: np.ndarray) -> np.ndarray:
        """``emb`` as it reads back from the cache, so a fresh encode and a cache hit search alike."""
        return np.asarray(emb, dtype=self.dtype).astype(np.float32)
