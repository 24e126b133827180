"""The training stream: endless batches of ``TrainExample`` read from the shards' train sources.

Which source(s) global batch ``b`` draws from is a function of ``(seed, b)`` only, so every rank
picks the same source for the same step: a homogeneous batch stays homogeneous after the in-batch
negatives are gathered across ranks. What each rank reads is disjoint: every source's shards are
split over the reader slots (rank x DataLoader worker), or, when a source has fewer shards than
slots, its samples are (slot ``s`` of ``n`` keeps sample ``i`` with ``i % n == s``).

Use it as ``DataLoader(stream, batch_size=None, num_workers=k)``: worker ``w`` produces global batch
indices ``start_batch + w + j*k`` and the DataLoader yields workers round-robin, so the trainer sees
``b`` in order. Each batch comes out of ``collate_fn`` inside the worker.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset

from mmtrain.data.corrupt import CorruptSkipper
from mmtrain.data.schema import Item, TrainExample, task_label
from mmtrain.data.pool_store import PoolStore
from mmtrain.data.shards import iter_samples, read_manifest
from mmtrain.mining.table import NegativesTable, sample_negatives

COMPOSITIONS = ("homogeneous", "mixed", "share")
INSTRUCTION_MODES = ("random", "first", "none")
# Stream tags keep the RNGs of different purposes independent for the same (seed, ...) parts.
_PLAN, _SHARDS, _VISIT = 0, 1, 2


def _seed(*parts: int) -> int:
    """A 64-bit seed from non-negative ints (numpy SeedSequence: order-sensitive, well mixed)."""
    return int(np.random.SeedSequence([p % 2**63 for p in parts]).generate_state(2, np.uint64)[0])


def rank_and_world_size() -> tuple[int, int]:
    """torch.distributed when initialised, else env RANK / WORLD_SIZE, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def worker_and_num_workers() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


@dataclass(frozen=True)
class StreamSource:
    """One train source of the manifest."""

    name: str
    dataset: str
    dataset_id: int
    task_id: int
    count: int
    shards: tuple[Path, ...]
    shard_counts: tuple[int, ...]


class TrainStream(IterableDataset):
    """Endless training batches (see the module docstring).

    composition: ``homogeneous`` (every query of a batch from one source, drawn with probability
    proportional to its size or ``weights``), ``mixed`` (each query's source drawn independently),
    ``share`` (homogeneous with probability ``homogeneous_share``, else mixed).
    instruction: ``random`` (one per visit, UniIR training), ``first`` (always ``[0]``), ``none``.
    start_batch: resume at global batch ``start_batch`` by replaying the deterministic stream and
    discarding the earlier batches: exact but O(start_batch) reading.
    max_passes: None (endless, training) or a number of passes over each source, after which the
    source is dropped from the draw and the stream ends when all are (coverage checks). Once a
    source runs dry, the ranks' source choices no longer agree, so this is not for training.
    """

    def __init__(self, manifest_dir: str | Path, *, batch_size: int, composition: str = "homogeneous",
                 homogeneous_share: float = 1.0, seed: int = 0, num_negatives: int = 0,
                 collate_fn: Callable[[list[TrainExample]], Any] | None = None, shuffle_buffer: int = 1000,
                 instruction: str = "random", start_batch: int = 0, sources: list[str] | None = None,
                 weights: dict[str, float] | None = None, max_passes: int | None = None,
                 skip_corrupt: bool = False,
                 negatives_table: str | Path | None = None, negative_sampling: str = "modality_aware") -> None:
        super().__init__()
        if batch_size < 1 or num_negatives < 0 or start_batch < 0 or not 0.0 <= homogeneous_share <= 1.0:
            raise ValueError("need batch_size >= 1, num_negatives >= 0, start_batch >= 0, 0 <= homogeneous_share <= 1")
        if composition not in COMPOSITIONS or instruction not in INSTRUCTION_MODES:
            raise ValueError(f"composition must be one of {COMPOSITIONS}, instruction one of {INSTRUCTION_MODES}")
        self.root = Path(manifest_dir)
        manifest = read_manifest(self.root)
        train = {e["name"]: e for e in manifest["sources"].values() if e["split"] == "train" and e["count"] > 0}
        names = list(sources) if sources is not None else sorted(train)
        unknown = sorted(set(names) - set(train)) + sorted(set(weights or {}) - set(names))
        if unknown or not names:
            raise ValueError(f"unknown or unselected sources {unknown}; train sources: {sorted(train)}")
        if weights is not None and set(names) - set(weights):
            raise ValueError(f"weights given but missing for {sorted(set(names) - set(weights))}")
        raw = {n: float(weights[n]) if weights is not None else float(train[n]["count"]) for n in names}
        if any(w < 0 for w in raw.values()) or sum(raw.values()) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {raw}")
        self.zero_weight = [n for n in names if raw[n] == 0]  # never drawn, so left out
        self.sources = [StreamSource(n, train[n]["dataset"], train[n]["dataset_id"], train[n]["task_id"],
                                     train[n]["count"], tuple(self.root / p for p in train[n]["shards"]),
                                     tuple(train[n]["shard_counts"])) for n in names if raw[n] > 0]
        total = sum(raw.values())
        self.probs = np.array([raw[s.name] / total for s in self.sources])
        self.batch_size, self.composition, self.homogeneous_share = batch_size, composition, homogeneous_share
        self.seed, self.num_negatives, self.collate_fn = seed, num_negatives, collate_fn
        self.shuffle_buffer, self.instruction, self.start_batch = shuffle_buffer, instruction, start_batch
        self.max_passes = max_passes
        # Corrupt samples fail the run unless skip_corrupt (then skipped, counted, logged: corrupt.py).
        self._skipper = CorruptSkipper() if skip_corrupt else None
        # Mined negatives (mmtrain/mining): a table of candidate ids per query, their content read
        # from the training pool by id. Opened lazily in each worker (memory maps, file handles).
        self.negatives_table = Path(negatives_table) if negatives_table else None
        self.negative_sampling = negative_sampling
        self._mined: tuple[NegativesTable, PoolStore] | None = None
        if self.negatives_table is not None:
            if num_negatives < 1:
                raise ValueError("a negatives table needs num_negatives >= 1")
            NegativesTable(self.negatives_table)  # fail now, with a clear message, if it is missing

    # -- what a batch draws ------------------------------------------------------------------------
    def batch_plan(self, b: int, exhausted: frozenset[int] = frozenset()) -> list[int]:
        """Source index of each query of global batch ``b``; depends on (seed, b) only (and on the
        sources already exhausted, in finite mode)."""
        rng = np.random.default_rng(_seed(self.seed, _PLAN, b))
        probs = self.probs.copy()
        if exhausted:
            probs[sorted(exhausted)] = 0.0
        probs /= probs.sum()
        homogeneous = self.composition == "homogeneous" or (
            self.composition == "share" and rng.random() < self.homogeneous_share)
        if homogeneous:
            return [int(rng.choice(len(probs), p=probs))] * self.batch_size
        return [int(i) for i in rng.choice(len(probs), size=self.batch_size, p=probs)]

    def batch_sources(self, b: int) -> list[str]:
        """Source name of each query of global batch ``b`` (endless mode)."""
        return [self.sources[i].name for i in self.batch_plan(b)]

    # -- iteration ---------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        rank, world_size = rank_and_world_size()
        worker, num_workers = worker_and_num_workers()
        # The reader slot follows the batch residue, not the worker id, so batch b has the same
        # content whatever start_batch is (worker w of a resumed run serves residue (start+w) % k).
        residue = (self.start_batch + worker) % num_workers
        slot, n_slots = rank * num_workers + residue, world_size * num_workers
        layouts = [self._slot_shards(src, slot, n_slots) for src in self.sources]  # fails early, see there
        readers = [self._examples(i, ids, whole, slot, n_slots, rank, residue)
                   for i, (ids, whole) in enumerate(layouts)]
        exhausted: set[int] = set()
        b = residue
        while True:
            batch = self._next_batch(b, readers, exhausted)
            if batch is None:
                return
            if b >= self.start_batch:
                yield self.collate_fn(batch) if self.collate_fn is not None else batch
            b += num_workers

    def _next_batch(self, b: int, readers: list[Iterator[TrainExample]],
                    exhausted: set[int]) -> list[TrainExample] | None:
        """Batch ``b`` per its plan; in finite mode, a source that runs dry leaves the draw (the
        batch may come out short) and None means every source is done."""
        while len(exhausted) < len(readers):
            batch = []
            for i in self.batch_plan(b, frozenset(exhausted)):
                if i in exhausted:
                    continue
                try:
                    batch.append(next(readers[i]))
                except StopIteration:  # finite mode only: endless readers never stop
                    exhausted.add(i)
            if batch:
                return batch
        return None

    def _slot_shards(self, src: StreamSource, slot: int, n_slots: int) -> tuple[list[int], bool]:
        """The shards reader ``slot`` of ``n_slots`` opens, and whether it owns them whole (else it
        keeps every ``n_slots``-th sample of all shards). Checked before reading: an endless reader
        that owns nothing would hang."""
        by_shard = len(src.shards) >= n_slots
        shard_ids = list(range(slot, len(src.shards), n_slots)) if by_shard else list(range(len(src.shards)))
        owned = sum(src.shard_counts[k] for k in shard_ids) if by_shard else len(range(slot, src.count, n_slots))
        if owned == 0 and self.max_passes is None:
            raise ValueError(f"source {src.name} has {src.count} samples, fewer than the {n_slots} readers "
                             f"(world_size x num_workers): reader {slot} would have none")
        if not by_shard and slot == 0:
            warnings.warn(f"source {src.name}: {len(src.shards)} shards < {n_slots} readers (world_size x "
                          f"num_workers); splitting by sample, so every reader reads every shard", stacklevel=2)
        return shard_ids, by_shard

    def _examples(self, index: int, shard_ids: list[int], by_shard: bool, slot: int, n_slots: int, rank: int,
                  residue: int) -> Iterator[TrainExample]:
        """Reader ``slot``'s endless (or ``max_passes``) stream of examples of source ``index``: shard
        order reshuffled every pass, samples through a shuffle buffer, seeds from (seed, pass, rank, worker)."""
        src = self.sources[index]
        offsets = np.concatenate([[0], np.cumsum(src.shard_counts)]).tolist()
        visit_rng = random.Random(_seed(self.seed, _VISIT, index, rank, residue))
        n_pass = 0
        while self.max_passes is None or n_pass < self.max_passes:
            rng = random.Random(_seed(self.seed, _SHARDS, index, n_pass, rank, residue))
            order = list(shard_ids)
            rng.shuffle(order)
            samples = self._read(src, order, offsets, None if by_shard else (slot, n_slots),
                                 self._skipper.handler if self._skipper else None)
            if self.shuffle_buffer > 1:
                samples = wds.shuffle(bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(samples)
            for sample in samples:
                if self._skipper is None:
                    yield self._example(sample, visit_rng)
                elif (example := self._skipper.example(self._example, sample, visit_rng)) is not None:
                    yield example
            n_pass += 1

    @staticmethod
    def _read(src: StreamSource, order: list[int], offsets: list[int], split: tuple[int, int] | None,
              handler: Callable[[Exception], bool] | None = None) -> Iterator[dict]:
        for k in order:
            for pos, sample in enumerate(iter_samples([src.shards[k]], handler)):
                if split is None or (offsets[k] + pos) % split[1] == split[0]:
                    yield sample

    def _example(self, sample: dict, rng: random.Random) -> TrainExample:
        """One visit: a uniform positive (UniIR shuffle_cand), an instruction, ``num_negatives`` negatives."""
        j = sample["json"]

        def candidate(c: dict) -> Item:
            return Item(c["text"], sample[c["image"]] if c["image"] else None, c["modality"], None, c["did_hash"])

        positives, negatives, instructions = j["positives"], j["negatives"], j["instructions"]
        positive = positives[rng.randrange(len(positives))]
        instruction = None
        if instructions and self.instruction == "random":
            instruction = instructions[rng.randrange(len(instructions))]
        elif instructions and self.instruction == "first":
            instruction = instructions[0]
        q = j["query"]
        query = Item(q["text"], sample[q["image"]] if q["image"] else None, q["modality"], instruction, j["qid_hash"])
        if self.negatives_table is not None:
            chosen_items = self._mined_negatives(j["qid_hash"], rng)
        else:
            chosen: list[dict] = []
            if self.num_negatives and negatives:
                if len(negatives) >= self.num_negatives:
                    chosen = rng.sample(negatives, self.num_negatives)
                else:
                    chosen = [negatives[rng.randrange(len(negatives))] for _ in range(self.num_negatives)]
            chosen_items = [candidate(c) for c in chosen]
        return TrainExample(query=query, positive=candidate(positive), negatives=chosen_items,
                            positive_ids=[p["did_hash"] for p in positives], task_id=j["task_id"],
                            dataset_id=j["dataset_id"], key=j["qid"])

    def _mined_negatives(self, qid_hash: int, rng: random.Random) -> list[Item]:
        """This visit's mined negatives (sampling policy of mmtrain.mining.table.sample_negatives);
        a query the table has none for trains on in-batch negatives only."""
        if self._mined is None:
            self._mined = (NegativesTable(self.negatives_table), PoolStore(self.root, "train"))
        table, store = self._mined
        ids = sample_negatives(table.lookup(qid_hash), self.num_negatives, rng, self.negative_sampling)
        return [store[i] for i in ids]

    # -- description -------------------------------------------------------------------------------
    def source_sizes(self) -> dict[str, int]:
        """Samples per selected source (one pass)."""
        return {s.name: s.count for s in self.sources}

    def describe(self) -> str:
        """A human-readable summary: sources, sizes, shards, draw probabilities and settings."""
        lines = [f"TrainStream {self.root}: {len(self.sources)} sources, {sum(self.source_sizes().values())} "
                 f"queries; batch_size={self.batch_size} composition={self.composition}"
                 + (f"(homogeneous_share={self.homogeneous_share})" if self.composition == "share" else "")
                 + f" seed={self.seed} num_negatives={self.num_negatives} instruction={self.instruction}"
                 f" shuffle_buffer={self.shuffle_buffer} start_batch={self.start_batch}"]
        width = max(len(s.name) for s in self.sources)
        for s, p in zip(self.sources, self.probs):
            lines.append(f"  {s.name:<{width}}  {s.dataset}({s.dataset_id}) task {s.task_id} "
                         f"[{task_label(s.task_id)}]  {s.count} queries, {len(s.shards)} shards, p={p:.4f}")
        if self.zero_weight:
            lines.append(f"  weight 0 (never drawn): {', '.join(self.zero_weight)}")
        return "\n".join(lines)
