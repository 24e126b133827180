"""Random access to pool candidates by hashed id, straight from the pool's tar shards.

Mined hard negatives break pure streaming: a (query, positive, negative) triplet needs the content of a
candidate anywhere in a pool of millions (performance.md §6). Rather than re-materialising triplet
shards after every mining round, ``PoolStore`` scans the pool shards once, records where each
candidate's JSON and image bytes sit inside the tar files (``tarfile`` gives the data offsets), caches
that index beside the shards, and reads a candidate with one ``pread`` per member. The index for 5.6M
candidates is ~270 MB of int64 arrays, memory-mapped.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np

from mmtrain.data.schema import Item
from mmtrain.data.shards import read_manifest
from mmtrain.io import atomic_save

INDEX = "pool_index.npy"
FIELDS = [("did_hash", np.int64), ("shard", np.int32), ("json_offset", np.int64), ("json_size", np.int64),
          ("image_offset", np.int64), ("image_size", np.int64)]


def build_index(shards: list[Path]) -> np.ndarray:
    rows: dict[str, dict] = {}
    for s, path in enumerate(shards):
        with tarfile.open(path) as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, _, ext = m.name.partition(".")
                row = rows.setdefault(f"{s}/{key}", {"shard": s, "image_offset": -1, "image_size": -1})
                if ext == "json":
                    tar.fileobj.seek(m.offset_data)
                    row["did_hash"] = json.loads(tar.fileobj.read(m.size))["did_hash"]
                    row["json_offset"], row["json_size"] = m.offset_data, m.size
                else:
                    row["image_offset"], row["image_size"] = m.offset_data, m.size
    index = np.array([tuple(r[f] for f, _ in FIELDS) for r in rows.values()], dtype=FIELDS)
    index.sort(order="did_hash")
    dupes = index["did_hash"][1:][index["did_hash"][1:] == index["did_hash"][:-1]]
    if len(dupes):
        raise ValueError(f"duplicate candidate ids in the pool shards, e.g. {dupes[:5].tolist()}")
    return index


class PoolStore:
    """``store[did_hash] -> Item`` for one split's pool (``<shard_dir>/pool/<split>``)."""

    def __init__(self, shard_dir: str | Path, split: str = "train"):
        self.root = Path(shard_dir)
        self.shards = [self.root / p for p in read_manifest(self.root)["pools"][split]["shards"]]
        path = self.root / "pool" / split / INDEX
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)  # converted sets keep pool shards elsewhere
            index = build_index(self.shards)
            atomic_save(path, lambda tmp: np.save(tmp, index))  # concurrent builders write the same bytes
        self.index = np.load(path, mmap_mode="r")
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, did_hash: int) -> bool:
        i = int(np.searchsorted(self.index["did_hash"], did_hash))
        return i < len(self.index) and int(self.index["did_hash"][i]) == did_hash

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        fd = self._fds.get(shard)
        if fd is None:  # opened lazily: the store is pickled into DataLoader workers
            fd = self._fds[shard] = os.open(self.shards[shard], os.O_RDONLY)
        return os.pread(fd, size, offset)

    def __getitem__(self, did_hash: int) -> Item:
        i = int(np.searchsorted(self.index["did_hash"], did_hash))
        if i == len(self.index) or int(self.index["did_hash"][i]) != did_hash:
            raise KeyError(f"candidate {did_hash} is not in the pool {self.root}")
        row = self.index[i]
        rec = json.loads(self._read(int(row["shard"]), int(row["json_offset"]), int(row["json_size"])))
        image = (self._read(int(row["shard"]), int(row["image_offset"]), int(row["image_size"]))
                 if row["image_size"] >= 0 else None)
        return Item(rec["text"], image, rec["modality"], None, int(rec["did_hash"]))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": {}}  # file descriptors do not cross processes

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)
