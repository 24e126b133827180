"""Atomic writes, complete-marker directories and file hashes: the one place that renames into place
(checkpoints, shards, tables, reports and caches all write through it).

A file is written beside its target (same file system) and renamed, so a reader sees the old or the new
file, never half of one. A directory is built in a sibling temporary directory and renamed whole; its
``.complete`` marker, written last inside, says it is finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

COMPLETE = ".complete"


def _sibling(path: Path, kind: str) -> Path:
    # Unique per writer; the suffix stays last (np.save appends .npy to a name without it).
    return path.with_name(f".{path.stem}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:6]}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write(tmp)`` -> ``p`` appears whole, or not at all on error."""
    path = Path(path)
    tmp = _sibling(path, "tmp")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # reports and caches are meant to be shared
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_save(path: str | os.PathLike, save: Callable[[Path], Any], fsync: bool = False) -> Path:
    """``save(tmp_path)`` (np.save, torch.save, ...), then rename onto ``path``."""
    with atomic_path(path, fsync=fsync) as tmp:
        save(tmp)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> Path:
    return atomic_save(path, lambda tmp: tmp.write_bytes(data), fsync=fsync)


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, **{"indent": 1, "ensure_ascii": False, **dumps}) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False, marker: Any | None = None) -> Iterator[Path]:
    """``with atomic_dir(out) as tmp: build(tmp)`` -> ``out`` appears whole. ``marker``: JSON written to
    ``tmp/.complete`` last. A non-empty ``out`` is replaced whole (moved aside, then deleted; never
    merged) with ``overwrite``, else ``FileExistsError`` (e.g. another process finished first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    tmp.mkdir()
    try:
        yield tmp
        if marker is not None:
            (tmp / COMPLETE).write_text(json.dumps(marker, default=str))
        for _ in range(5):
            try:
                os.replace(tmp, path)  # succeeds when `path` is absent or an empty directory
                return
            except OSError:
                if not overwrite:
                    raise FileExistsError(f"{path} exists and is not empty") from None
                remove_dir(path)
        raise OSError(f"could not move {tmp} onto {path}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / COMPLETE).is_file()


def read_marker(path: str | os.PathLike) -> Any | None:
    """The ``.complete`` marker's JSON, or None when absent or unreadable."""
    try:
        return json.loads((Path(path) / COMPLETE).read_text())
    except (OSError, ValueError):
        return None


def remove_dir(path: str | os.PathLike) -> None:
    """Delete a directory by renaming it aside first: readers never see it half deleted."""
    trash = _sibling(Path(path), "old")
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
