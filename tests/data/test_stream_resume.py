"""Training-stream resume: exact (resumed == uninterrupted, batch for batch) at any start, cheap (about
one pass of raw samples per reader, not the history), recorded in the datamodule's checkpoint state
with a clear error when the stream changed; and Tevatron-style rotation of a sample's own negatives."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import fixtures_sources as fx
import pytest
from test_stream import TOTAL, fingerprint, rank, shards, one_shard_each, simulate_loader, take, tree  # noqa: F401

import mmtrain.data.stream as stream_mod
from mmtrain.data.convert import convert
from mmtrain.data.stream import TrainStream
from mmtrain.lightning.datamodule import RetrievalDataModule

RESUME_KW = dict(batch_size=3, seed=13, num_negatives=1, composition="share", homogeneous_share=0.5,
                 shuffle_buffer=4)


def pass_boundary_starts(batches: list, num_workers: int) -> list[tuple[int, int]]:
    """``(start, passes)``: resuming at ``start`` puts some reader exactly at the end of its
    ``passes``-th pass over a source. Found from the uninterrupted run alone: a reader (worker residue
    ``b % k``) has, per source, a share = the distinct keys it ever delivers, and each pass delivers the
    share once, so a pass ends where its running count reaches a multiple of the share."""
    share: dict[tuple, set] = defaultdict(set)
    for b, batch in enumerate(batches):
        for e in batch:
            share[(b % num_workers, e.task_id)].add(e.key)
    counts: Counter = Counter()
    out = []
    for b, batch in enumerate(batches):
        touched = {(b % num_workers, e.task_id) for e in batch}
        counts.update((b % num_workers, e.task_id) for e in batch)
        done = [counts[t] // len(share[t]) for t in touched if counts[t] % len(share[t]) == 0]
        if done:
            out.append((b + 1, max(done)))
    return out


@pytest.mark.parametrize("world_size,num_workers", [(1, 1), (1, 2), (2, 2)])
def test_resumed_stream_equals_uninterrupted(shards: Path, rank, monkeypatch: pytest.MonkeyPatch,
                                             world_size: int, num_workers: int) -> None:
    """Start 0, early, mid-pass, exactly at a pass boundary (after 1 and after 2+ passes), and late (many
    passes): the next batches equal the uninterrupted run's, on every rank."""
    horizon, length = 6, 72
    for r in range(world_size):
        rank(r, world_size)
        raw = simulate_loader(TrainStream(shards, **RESUME_KW), num_workers, length + horizon, monkeypatch)
        full = [fingerprint(b) for b in raw]
        boundaries = pass_boundary_starts(raw, num_workers)
        first = next(s for s, n in boundaries if n == 1 and s >= 2)
        later = next(s for s, n in boundaries if n >= 2)
        starts = sorted({0, 1, 5, first, first + 1, later, length})
        for start in starts:
            stream = TrainStream(shards, start_batch=start, **RESUME_KW)
            resumed = simulate_loader(stream, num_workers, horizon, monkeypatch)
            assert [fingerprint(b) for b in resumed] == full[start:start + horizon], (r, start)


@pytest.mark.filterwarnings("ignore:.*splitting by sample")
def test_resume_with_sample_split_readers(one_shard_each: Path, rank, monkeypatch: pytest.MonkeyPatch) -> None:
    """One shard per source: 2 ranks x 2 workers split by sample (every reader reads every shard)."""
    for r in range(2):
        rank(r, 2)
        full = [fingerprint(b) for b in simulate_loader(TrainStream(one_shard_each, **RESUME_KW), 2, 46, monkeypatch)]
        for start in (3, 17, 40):
            stream = TrainStream(one_shard_each, start_batch=start, **RESUME_KW)
            resumed = [fingerprint(b) for b in simulate_loader(stream, 2, 6, monkeypatch)]
            assert resumed == full[start:start + 6], (r, start)


def test_late_resume_reads_about_one_pass(shards: Path, rank, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resuming at batch 400 (~1200 examples, ~40 passes of the 31 samples) reads at most two passes of
    raw samples (the pass it lands in, skipped, and the next one to fill the first batch), and builds
    only the batch it yields; the uninterrupted run reads the whole history."""
    reads = Counter()
    real_iter_samples = stream_mod.iter_samples

    def counting(paths, handler=None):
        for sample in real_iter_samples(paths, handler):
            reads["raw"] += 1
            yield sample

    built = Counter()
    real_example = TrainStream._example

    def counting_example(self, sample, rng, n_pass=0):
        built["examples"] += 1
        return real_example(self, sample, rng, n_pass)

    monkeypatch.setattr(stream_mod, "iter_samples", counting)
    monkeypatch.setattr(TrainStream, "_example", counting_example)
    kw = dict(batch_size=3, seed=13, composition="mixed", shuffle_buffer=4)
    late = 400
    resumed = take(TrainStream(shards, start_batch=late, **kw), 1)
    assert reads["raw"] <= 2 * TOTAL, reads
    assert built["examples"] == 3, built
    reads.clear()
    full = take(TrainStream(shards, **kw), late + 1)
    assert reads["raw"] >= late * 3
    assert fingerprint(resumed[0]) == fingerprint(full[late])


def test_rotation_of_own_negatives_per_pass(tmp_path: Path, rank, monkeypatch: pytest.MonkeyPatch) -> None:
    """5 inline negatives, k = 2, one reader: pass p takes the 2 consecutive negatives from 2p mod 5 of
    one fixed per-sample order (wrapping around), so 5 passes show each negative twice; pass p + 5
    repeats pass p. Resumed streams rotate the same."""
    rows = [{"query_id": str(i), "query": f"question {i}",
             "positive_passages": [{"docid": f"p{i}", "text": f"answer {i}"}],
             "negative_passages": [{"docid": f"n{i}_{j}", "text": f"wrong {i} {j}"} for j in range(5)]}
            for i in range(6)]
    fx.jsonl(tmp_path / "train.jsonl", rows)
    convert("tevatron", tmp_path / "out", train=tmp_path / "train.jsonl", workers=1, samples_per_shard=2)
    kw = dict(batch_size=3, num_negatives=2, negative_order="rotate", shuffle_buffer=3, seed=4)
    batches = take(TrainStream(tmp_path / "out", **kw), 24)  # 72 visits = 12 passes over 6 queries
    visits: dict[str, list[list[str]]] = defaultdict(list)
    for batch in batches:
        for e in batch:
            visits[e.key].append([n.text for n in e.negatives])
    assert len(visits) == 6 and all(len(v) == 12 for v in visits.values())
    orders = set()
    for key, per_pass in visits.items():
        order = per_pass[0] + per_pass[1] + per_pass[2][:1]  # windows [0,1], [2,3], [4,0]
        assert sorted(order) == [f"wrong {key} {j}" for j in range(5)], (key, per_pass)
        for p, window in enumerate(per_pass):
            assert window == [order[(2 * p) % 5], order[(2 * p + 1) % 5]], (key, p, per_pass)
        orders.add(tuple(int(t.split()[-1]) for t in order))
    assert len(orders) > 1  # the fixed order is shuffled per sample, not the stored one for all
    for start in (5, 13):
        resumed = take(TrainStream(tmp_path / "out", start_batch=start, **kw), 4)
        assert [fingerprint(b) for b in resumed] == [fingerprint(b) for b in batches[start:start + 4]]
    random_order = take(TrainStream(tmp_path / "out", **{**kw, "negative_order": "random"}), 24)
    assert [fingerprint(b) for b in random_order] != [fingerprint(b) for b in batches]
    with pytest.raises(ValueError, match="negative_order"):
        TrainStream(tmp_path / "out", **{**kw, "negative_order": "cyclic"})


# -- the stream's state in the datamodule's checkpoint state ---------------------------------------------
def datamodule(tree: Path, shard_dir: Path, **kw) -> RetrievalDataModule:
    settings = dict(batch_size=3, seed=13, num_workers=2, shuffle_buffer=4) | kw
    return RetrievalDataModule(None, mbeir_root=str(tree), shard_dir=str(shard_dir), **settings)


def attach(dm: RetrievalDataModule, global_step: int, accumulate: int = 2, world_size: int = 1):
    dm.trainer = SimpleNamespace(global_step=global_step, accumulate_grad_batches=accumulate, world_size=world_size)
    return dm


def test_datamodule_state_round_trip(tree: Path, shards: Path) -> None:
    saving = attach(datamodule(tree, shards), 0)
    assert saving.state_dict() == {}  # nothing to record before a stream was built
    saving.train_dataloader()
    saving.trainer.global_step = 7  # trained 7 optimizer steps x 2 accumulated batches
    state = saving.state_dict()["stream"]
    assert state["batches_consumed"] == 14 and state["batch_size"] == 3 and state["seed"] == 13
    assert state["world_size"] == 1 and state["workers_per_rank"] == 2 and state["accumulate_grad_batches"] == 2
    assert state["sources"]["mscoco_task0"] == {"count": 12, "shards": 8}
    assert sum(state["weights"].values()) == pytest.approx(1.0)

    resuming = attach(datamodule(tree, shards), 7)  # Lightning restores global_step, then loads the state
    resuming.load_state_dict({"stream": state})
    assert resuming.train_dataloader().dataset.start_batch == 14
    assert resuming.state_dict()["stream"] == state


@pytest.mark.parametrize("change,now,message", [
    ({"batch_size": 4}, {}, "batch_size: checkpoint 3, now 4"),
    ({"seed": 1}, {}, "seed: checkpoint 13, now 1"),
    ({"num_workers": 1}, {}, "workers_per_rank: checkpoint 2, now 1"),
    ({}, {"world_size": 2}, "world_size: checkpoint 1, now 2"),
    ({}, {"accumulate": 4}, "batches_consumed: checkpoint 14, now 28"),
    ({"shard_dir": "one_shard_each"}, {}, "sources.mscoco_task0: checkpoint {'count': 12, 'shards': 8}, now "
                                          "{'count': 12, 'shards': 1}"),
])
def test_resume_with_a_changed_stream_fails_unless_allowed(tree: Path, shards: Path, one_shard_each: Path, change,
                                                           now, message, caplog) -> None:
    saving = attach(datamodule(tree, shards), 7)
    saving.train_dataloader()
    state = saving.state_dict()
    shard_dir = one_shard_each if change.pop("shard_dir", None) else shards
    trainer = dict(global_step=7) | now
    changed = attach(datamodule(tree, shard_dir, **change), **trainer)
    changed.load_state_dict(state)
    with pytest.raises(ValueError, match="data.allow_stream_change") as err:
        changed.train_dataloader()
    assert message in str(err.value)
    allowed = attach(datamodule(tree, shard_dir, allow_stream_change=True, **change), **trainer)
    allowed.load_state_dict(state)
    caplog.set_level(logging.WARNING)
    allowed.train_dataloader()
    assert any(message in r.getMessage() and "allow_stream_change" in r.getMessage() for r in caplog.records)
