"""The training stream: endless batches of ``TrainExample`` read from the shards' train sources.

Which source(s) global batch ``b`` draws from is a function of ``(seed, b)`` only, so every rank
picks the same source for the same step: a homogeneous batch stays homogeneous after the in-batch
negatives are gathered across ranks. What each rank reads is disjoint: every source's shards are
split over the reader slots (rank x DataLoader worker), or, when a source has fewer shards than
slots, its samples are (slot ``s`` of ``n`` keeps sample ``i`` with ``i % n == s``).

Use it as ``DataLoader(stream, batch_size=None, num_workers=k)``: worker ``w`` produces global batch
indices ``start_batch + w + j*k`` and the DataLoader yields workers round-robin, so the trainer sees
``b`` in order. Each batch comes out of ``collate_fn`` inside the worker.

Resume (``start_batch``) is exact and cheap: batch ``b`` has the same content whatever batch the stream
starts at. The plans of the skipped batches say how many examples each reader took from each source
(no reading); a reader then jumps to that pass (every pass's shard order and shuffle buffer are seeded
per pass) and skips inside it by reading raw samples only, at most one pass of its share. A visit's
randomness (positive, instruction, negatives) is seeded per (seed, source, pass, sample position), so
nothing skipped has to be built. Finite mode (``max_passes``) and ``skip_corrupt`` replay instead (see
``_resume_point``).
"""

from __future__ import annotations

import functools
import itertools
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

from mmtrain import dist
from mmtrain.data.corrupt import CorruptSkipper
from mmtrain.data.negatives import NegativesTable, sample_negatives
from mmtrain.data.pool_store import PoolStore
from mmtrain.data.schema import Item, TrainExample, task_label
from mmtrain.data.shards import iter_samples, read_manifest

COMPOSITIONS = ("homogeneous", "mixed", "share")
INSTRUCTION_MODES = ("random", "first", "none")
NEGATIVE_ORDERS = ("random", "rotate")
# Stream tags keep the RNGs of different purposes independent for the same (seed, ...) parts.
_PLAN, _SHARDS, _VISIT, _ROTATE = 0, 1, 2, 3
INDEX_KEY = "__index__"  # a raw sample's position in its source (shard offset + position in the shard)


def _seed(*parts: int) -> int:
    """A 64-bit seed from non-negative ints (numpy SeedSequence: order-sensitive, well mixed)."""
    return int(np.random.SeedSequence([p % 2**63 for p in parts]).generate_state(2, np.uint64)[0])


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
    negative_order: how a sample's own (inline) negatives are drawn when it has at least
    ``num_negatives``: ``random`` (a fresh sample per visit) or ``rotate`` (Tevatron: a fixed per-sample
    shuffle, and pass ``n`` takes the ``num_negatives`` consecutive ones from ``n * num_negatives mod len``,
    so successive passes walk through all of them). Mined tables keep their own policy.
    start_batch: resume at global batch ``start_batch``, exactly (module docstring): the skipped
    batches are counted from their plans and each reader skips raw samples inside one pass.
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
                 negatives_table: str | Path | list[str | Path] | None = None,
                 negative_sampling: str = "modality_aware", negative_order: str = "random") -> None:
        super().__init__()
        if batch_size < 1 or num_negatives < 0 or start_batch < 0 or not 0.0 <= homogeneous_share <= 1.0:
            raise ValueError("need batch_size >= 1, num_negatives >= 0, start_batch >= 0, 0 <= homogeneous_share <= 1")
        if composition not in COMPOSITIONS or instruction not in INSTRUCTION_MODES:
            raise ValueError(f"composition must be one of {COMPOSITIONS}, instruction one of {INSTRUCTION_MODES}")
        if negative_order not in NEGATIVE_ORDERS:
            raise ValueError(f"negative_order must be one of {NEGATIVE_ORDERS}, got {negative_order!r}")
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
        self.max_passes, self.negative_order = max_passes, negative_order
        # Corrupt samples fail the run unless skip_corrupt (then skipped, counted, logged: corrupt.py).
        self._skipper = CorruptSkipper() if skip_corrupt else None
        # Mined negatives (mmtrain/mining): tables of candidate ids per query (several: e.g. the
        # multimodal one and the text set's), each candidate's content read by id from the pool the
        # table was mined in. Opened lazily in each worker (memory maps, file handles).
        if isinstance(negatives_table, (str, Path)):
            negatives_table = [negatives_table]
        self.negatives_tables = [Path(t) for t in negatives_table or []]
        self.negative_sampling = negative_sampling
        self._mined: list[tuple[NegativesTable, PoolStore]] | None = None
        if self.negatives_tables and num_negatives < 1:
            raise ValueError("a negatives table needs num_negatives >= 1")
        for t in self.negatives_tables:
            NegativesTable(t)  # fail now, with a clear message, if one is missing

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
        rank, world_size = dist.rank(), dist.world_size()
        worker, num_workers = worker_and_num_workers()
        # The reader slot follows the batch residue, not the worker id, so batch b has the same
        # content whatever start_batch is (worker w of a resumed run serves residue (start+w) % k).
        residue = (self.start_batch + worker) % num_workers
        slot, n_slots = rank * num_workers + residue, world_size * num_workers
        layouts = [self._slot_shards(src, slot, n_slots) for src in self.sources]  # fails early, see there
        b, skips = self._resume_point(residue, num_workers)
        readers = [self._examples(i, ids, whole, owned, slot, n_slots, rank, residue, skips[i])
                   for i, (ids, whole, owned) in enumerate(layouts)]
        exhausted: set[int] = set()
        while True:
            batch = self._next_batch(b, readers, exhausted)
            if batch is None:
                return
            if b >= self.start_batch:
                yield self.collate_fn(batch) if self.collate_fn is not None else batch
            b += num_workers

    def _resume_point(self, residue: int, num_workers: int) -> tuple[int, list[int]]:
        """The first batch this worker builds, and how many examples each of its readers skips first.

        Endless mode: the batches of this residue before ``start_batch`` are not built; what they took
        from each source follows from their plans alone. Finite mode replays them (built and dropped,
        O(start_batch)): there the plans depend on when sources run dry, which only reading tells, and
        it serves coverage checks, not resumed training. ``skip_corrupt`` replays too: whether a sample
        is skipped as corrupt can depend on the visit's draws (a missing negative image counts only when
        that negative is drawn), so a pass's length in examples is only known by building them."""
        if self.max_passes is not None or self._skipper is not None:
            return residue, [0] * len(self.sources)
        skipped = range(residue, self.start_batch, num_workers)
        return residue + len(skipped) * num_workers, self.examples_taken(skipped)

    def examples_taken(self, batches: range) -> list[int]:
        """Examples each source gives to the given global batches (endless mode): their plans, no reading."""
        counts = np.zeros(len(self.sources), dtype=np.int64)
        for b in batches:
            counts += np.bincount(self.batch_plan(b), minlength=len(self.sources))
        return counts.tolist()

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

    def _slot_shards(self, src: StreamSource, slot: int, n_slots: int) -> tuple[list[int], bool, int]:
        """The shards reader ``slot`` of ``n_slots`` opens, whether it owns them whole (else it keeps
        every ``n_slots``-th sample of all shards), and how many samples it reads per pass. Checked
        before reading: an endless reader that owns nothing would hang."""
        by_shard = len(src.shards) >= n_slots
        shard_ids = list(range(slot, len(src.shards), n_slots)) if by_shard else list(range(len(src.shards)))
        owned = (sum(src.shard_counts[k] for k in shard_ids) if by_shard
                 else len(range(slot, sum(src.shard_counts), n_slots)))
        if owned == 0 and self.max_passes is None:
            raise ValueError(f"source {src.name} has {src.count} samples, fewer than the {n_slots} readers "
                             f"(world_size x num_workers): reader {slot} would have none")
        if not by_shard and slot == 0:
            warnings.warn(f"source {src.name}: {len(src.shards)} shards < {n_slots} readers (world_size x "
                          f"num_workers); splitting by sample, so every reader reads every shard", stacklevel=2)
        return shard_ids, by_shard, owned

    def _examples(self, index: int, shard_ids: list[int], by_shard: bool, owned: int, slot: int, n_slots: int,
                  rank: int, residue: int, skip: int = 0) -> Iterator[TrainExample]:
        """Reader ``slot``'s endless (or ``max_passes``) stream of examples of source ``index``: shard
        order reshuffled every pass, samples through a shuffle buffer, seeds from (seed, pass, rank,
        worker). The first ``skip`` examples (a resume; endless mode, no corrupt skipping, so one
        example per raw sample) are skipped without being built: whole passes by arithmetic, the rest
        by reading raw samples of the pass they fall in."""
        src = self.sources[index]
        offsets = np.concatenate([[0], np.cumsum(src.shard_counts)]).tolist()
        split = None if by_shard else (slot, n_slots)
        handler = self._skipper.handler if self._skipper else None
        n_pass, skip_in_pass = divmod(skip, owned) if skip else (0, 0)
        while self.max_passes is None or n_pass < self.max_passes:
            # One rng per pass drives both the shard order and the shuffle buffer, and the buffer starts
            # empty every pass: the pass's stream is a function of (seed, source, pass, reader) alone.
            # So a resume replays only the pass's prefix (raw samples, no examples) through the same
            # buffer, and the buffer ends in the state the uninterrupted run had; no buffer contents or
            # rng state need saving (they would be ~shuffle_buffer samples per source per reader).
            rng = random.Random(_seed(self.seed, _SHARDS, index, n_pass, rank, residue))
            order = list(shard_ids)
            rng.shuffle(order)
            samples = self._read(src, order, offsets, split, handler)
            if self.shuffle_buffer > 1:
                samples = wds.shuffle(bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(samples)
            if skip_in_pass:
                if sum(1 for _ in itertools.islice(samples, skip_in_pass)) < skip_in_pass:
                    raise ValueError(f"source {src.name}: reader {slot} read fewer than {skip_in_pass} samples in "
                                     f"pass {n_pass}, but the manifest's shard_counts give it {owned} per pass: "
                                     f"shards and manifest disagree (re-convert {self.root})")
                skip_in_pass = 0
            visit_seed = _seed(self.seed, _VISIT, index, n_pass)
            make = functools.partial(self._example, n_pass=n_pass)
            for sample in samples:
                # The visit's draws depend on (seed, source, pass, sample position) only, not on the
                # examples built before it: skipping needs no replay of them.
                visit_rng = random.Random((visit_seed << 64) | sample[INDEX_KEY])
                if self._skipper is None:
                    yield make(sample, visit_rng)
                elif (example := self._skipper.example(make, sample, visit_rng)) is not None:
                    yield example
            n_pass += 1

    @staticmethod
    def _read(src: StreamSource, order: list[int], offsets: list[int], split: tuple[int, int] | None,
              handler: Callable[[Exception], bool] | None = None) -> Iterator[dict]:
        for k in order:
            for pos, sample in enumerate(iter_samples([src.shards[k]], handler)):
                if split is None or (offsets[k] + pos) % split[1] == split[0]:
                    sample[INDEX_KEY] = offsets[k] + pos
                    yield sample

    def _example(self, sample: dict, rng: random.Random, n_pass: int = 0) -> TrainExample:
        """One visit: a uniform positive (UniIR shuffle_cand), an instruction, ``num_negatives`` negatives."""
        j = sample["json"]

        def candidate(c: dict) -> Item:
            return Item(c["text"], sample[c["image"]] if c["image"] else None, c["modality"], None, c["did_hash"])

        positives, instructions = j["positives"], j["instructions"]
        positive = positives[rng.randrange(len(positives))]
        instruction = None
        if instructions and self.instruction == "random":
            instruction = instructions[rng.randrange(len(instructions))]
        elif instructions and self.instruction == "first":
            instruction = instructions[0]
        q = j["query"]
        query = Item(q["text"], sample[q["image"]] if q["image"] else None, q["modality"], instruction, j["qid_hash"])
        # Mined negatives first; a query no table knows (e.g. a text set with its own negatives, mixed into
        # MM-Embed's continual stage) draws from the sample's own.
        chosen_items = self._mined_negatives(j["qid_hash"], rng) if self.negatives_tables else None
        if chosen_items is None:
            rotation_key = (j["qid_hash"], sample.get(INDEX_KEY, 0))
            chosen_items = [candidate(c) for c in self._own_negatives(j["negatives"], rng, n_pass, rotation_key)]
        return TrainExample(query=query, positive=candidate(positive), negatives=chosen_items,
                            positive_ids=[p["did_hash"] for p in positives], task_id=j["task_id"],
                            dataset_id=j["dataset_id"], key=j["qid"])

    def _own_negatives(self, negatives: list[dict], rng: random.Random, n_pass: int,
                       rotation_key: tuple[int, int]) -> list[dict]:
        """``num_negatives`` of the sample's inline negatives for this visit. Fewer than that: drawn with
        replacement (as Tevatron). ``rotate``: Tevatron's TrainDataset rule, driven by this stream's pass
        instead of the trainer's epoch: a per-sample shuffle fixed across passes (seeded by the query id
        and the sample's position in its source, Tevatron's ``hash(item + seed)``), read cyclically from
        ``n_pass * k mod len`` (Tevatron's doubled list)."""
        k = self.num_negatives
        if not k or not negatives:
            return []
        if len(negatives) < k:
            return [negatives[rng.randrange(len(negatives))] for _ in range(k)]
        if self.negative_order == "random":
            return rng.sample(negatives, k)
        order = list(negatives)
        random.Random(_seed(self.seed, _ROTATE, *rotation_key)).shuffle(order)
        start = n_pass * k % len(order)
        return [order[(start + i) % len(order)] for i in range(k)]

    def _mined_negatives(self, qid_hash: int, rng: random.Random) -> list[Item] | None:
        """This visit's mined negatives (sampling policy of mmtrain.data.negatives.sample_negatives): []
        for a query mined without result (it trains on in-batch negatives only), None for a query that no
        table holds."""
        if self._mined is None:
            self._mined = [(table, PoolStore(self._mined_pool(table), "train"))
                           for table in map(NegativesTable, self.negatives_tables)]
        for table, store in self._mined:
            if table.contains(qid_hash):
                ids = sample_negatives(table.lookup(qid_hash), self.num_negatives, rng, self.negative_sampling)
                return [store[i] for i in ids]
        return None

    def _mined_pool(self, table: NegativesTable) -> Path:
        """The shards whose training pool the table was mined in (its provenance), else this stream's."""
        mined_in = table.meta.get("pool", {}).get("shard_dir")
        if mined_in and (Path(mined_in) / "manifest.json").is_file():
            return Path(mined_in)
        return self.root

    # -- description -------------------------------------------------------------------------------
    def resume_identity(self) -> dict[str, Any]:
        """What the stream's batches depend on besides their index and the reader layout (world size x
        workers): resuming with other values would not continue the checkpointed stream."""
        return {"seed": self.seed, "batch_size": self.batch_size, "composition": self.composition,
                "homogeneous_share": self.homogeneous_share, "shuffle_buffer": self.shuffle_buffer,
                "sources": {s.name: {"count": s.count, "shards": len(s.shards)} for s in self.sources},
                "weights": {s.name: round(float(p), 12) for s, p in zip(self.sources, self.probs)}}

    def source_sizes(self) -> dict[str, int]:
        """Samples per selected source (one pass)."""
        return {s.name: s.count for s in self.sources}

    def describe(self) -> str:
        """A human-readable summary: sources, sizes, shards, draw probabilities and settings."""
        lines = [f"TrainStream {self.root}: {len(self.sources)} sources, {sum(self.source_sizes().values())} "
                 f"queries; batch_size={self.batch_size} composition={self.composition}"
                 + (f"(homogeneous_share={self.homogeneous_share})" if self.composition == "share" else "")
                 + f" seed={self.seed} num_negatives={self.num_negatives} negative_order={self.negative_order}"
                 f" instruction={self.instruction}"
                 f" shuffle_buffer={self.shuffle_buffer} start_batch={self.start_batch}"]
        width = max(len(s.name) for s in self.sources)
        for s, p in zip(self.sources, self.probs):
            lines.append(f"  {s.name:<{width}}  {s.dataset}({s.dataset_id}) task {s.task_id} "
                         f"[{task_label(s.task_id)}]  {s.count} queries, {len(s.shards)} shards, p={p:.4f}")
        if self.zero_weight:
            lines.append(f"  weight 0 (never drawn): {', '.join(self.zero_weight)}")
        return "\n".join(lines)
