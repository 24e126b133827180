"""What a synthesis run keeps on disk, so that a killed run resumes without duplicates or redone work.

Layout under ``out_dir``::

    run.json              what the samples depend on (seed, corpus, embedder, sampling, prompt, model);
                          a resume with other values is refused
    parts/part-NNNNNN.jsonl   finished samples, one JSON record per line (accepted and rejected)
    done.jsonl            the index: one line per part, listing its accepted and rejected sample indices
    .lock                 held (flock) while a run works here: two runs never share a directory

A part is written under a temporary name and renamed (a part file is always complete), then its index
line is appended. A kill between the two leaves a part the index does not list: the next run reads it
and indexes it. A torn last index line is ignored for the same reason (its part is read instead). Samples
in flight or not yet flushed when a run dies are simply generated again.

A sample index occurs in at most one accepted record; a rejected record is superseded by a later one
for the same index (``retry_rejected``). Anything else is an error, not a silent choice.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmtrain.io import atomic_write_text

PARTS, INDEX, RUN, LOCK = "parts", "done.jsonl", "run.json", ".lock"
_PART = re.compile(r"^part-(\d{6,})\.jsonl$")


class RunLock:
    """An exclusive ``flock`` on ``out_dir/.lock`` (released by the OS when the process dies)."""

    def __init__(self, out: Path):
        self.path = out / LOCK
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise RuntimeError(f"another synthesis run is working in {self.path.parent} (it holds {self.path})") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)


class PartStore:
    def __init__(self, out: str | Path, flush_every: int = 32, flush_seconds: float = 30.0):
        self.out = Path(out)
        self.parts_dir = self.out / PARTS
        self.flush_every, self.flush_seconds = max(1, flush_every), flush_seconds
        self.buffer: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()
        self.status: dict[int, str] = {}          # sample index -> accepted | rejected (on disk)
        self._next_part: int | None = None

    # -- identity ---------------------------------------------------------------------------------
    def check_identity(self, identity: dict[str, Any]) -> None:
        """Record what the samples depend on, or refuse to continue a run that depended on other values."""
        path = self.out / RUN
        identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
        if not path.is_file():
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(identity, indent=1, sort_keys=True))
            return
        before = json.loads(path.read_text())
        changed = sorted(k for k in set(before) | set(identity) if before.get(k) != identity.get(k))
        if changed:
            lines = [f"  {k}: was {json.dumps(before.get(k))[:200]}, now {json.dumps(identity.get(k))[:200]}"
                     for k in changed]
            raise ValueError(f"{self.out} holds a synthesis run with other settings; its samples would not match "
                             f"this configuration. Use another out_dir, or restore the settings:\n" + "\n".join(lines))

    # -- reading ----------------------------------------------------------------------------------
    def part_files(self) -> list[Path]:
        if not self.parts_dir.is_dir():
            return []
        parts = [(int(m[1]), p) for p in self.parts_dir.iterdir() if (m := _PART.match(p.name))]
        return [p for _, p in sorted(parts)]

    @staticmethod
    def read_part(path: Path) -> list[dict[str, Any]]:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def _apply(self, status: dict[int, str], where: dict[int, str], index: int, state: str, part: str) -> None:
        if status.get(index) == "accepted":
            raise ValueError(f"sample {index} is recorded twice: accepted in {where[index]}, {state} in {part}; "
                             f"remove one of the two records (did two runs write to {self.out}?)")
        status[index], where[index] = state, part

    def load(self) -> dict[int, str]:
        """Sample index -> status of every finished sample, from the index plus unindexed parts (which
        are indexed now); removes temporary files of a killed run."""
        for stray in self.parts_dir.glob("*.tmp-*") if self.parts_dir.is_dir() else []:
            stray.unlink()
        indexed: dict[str, dict[str, list[int]]] = {}
        index_path = self.out / INDEX
        lines: list[str] = []
        if index_path.is_file():
            lines = index_path.read_text(encoding="utf-8").splitlines()
            for n, line in enumerate(lines):
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    if n == len(lines) - 1:
                        continue  # torn by a kill: its part is read below
                    raise ValueError(f"{index_path}:{n + 1} is not JSON; the index is damaged "
                                     f"(delete it: it is rebuilt from {self.parts_dir})") from None
                indexed[entry["part"]] = entry
        status: dict[int, str] = {}
        where: dict[int, str] = {}
        parts = self.part_files()
        names = {p.name for p in parts}
        lost = sorted(set(indexed) - names)
        if lost:
            raise ValueError(f"{index_path} lists parts that do not exist: {lost[:5]}")
        unindexed = []
        for path in parts:
            entry = indexed.get(path.name)
            if entry is None:
                records = self.read_part(path)
                entry = {"part": path.name, "accepted": [r["index"] for r in records if r["status"] == "accepted"],
                         "rejected": [r["index"] for r in records if r["status"] == "rejected"]}
                unindexed.append(entry)
            for state in ("rejected", "accepted"):
                for i in entry[state]:
                    self._apply(status, where, int(i), state, path.name)
        if unindexed or len(indexed) != len(lines):  # new entries, or a torn line to drop
            ordered = sorted([*indexed.values(), *unindexed], key=lambda e: int(_PART.match(e["part"])[1]))
            atomic_write_text(index_path, "".join(json.dumps(e) + "\n" for e in ordered))
        self.status = status
        return dict(status)

    def records(self) -> Iterator[dict[str, Any]]:
        """The final record of every finished sample (a later record for a rejected index wins), in part
        order. Two passes over the parts, so only (index -> where) is held, not 560K full records."""
        final: dict[int, tuple[int, int]] = {}
        accepted: set[int] = set()
        parts = self.part_files()
        for k, path in enumerate(parts):
            for n, r in enumerate(self.read_part(path)):
                if r["index"] in accepted:
                    raise ValueError(f"sample {r['index']} is accepted in two parts (second: {path.name})")
                if r["status"] == "accepted":
                    accepted.add(r["index"])
                final[r["index"]] = (k, n)
        for k, path in enumerate(parts):
            for n, r in enumerate(self.read_part(path)):
                if final[r["index"]] == (k, n):
                    yield r

    # -- writing ----------------------------------------------------------------------------------
    def add(self, record: dict[str, Any]) -> None:
        self.buffer.append(record)
        if len(self.buffer) >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self.buffer:
            return
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        if self._next_part is None:  # listed once: a run writes thousands of parts
            existing = self.part_files()
            self._next_part = int(_PART.match(existing[-1].name)[1]) + 1 if existing else 0
        path = self.parts_dir / f"part-{self._next_part:06d}.jsonl"
        self._next_part += 1
        records, self.buffer = self.buffer, []
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        entry = {"part": path.name, "accepted": [r["index"] for r in records if r["status"] == "accepted"],
                 "rejected": [r["index"] for r in records if r["status"] == "rejected"]}
        with open(self.out / INDEX, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for r in records:
            self.status[r["index"]] = r["status"]
