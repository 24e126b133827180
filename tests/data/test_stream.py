"""Training stream: batch composition, cross-rank agreement, weights, coverage, determinism, resume."""

from __future__ import annotations

import math
from contextlib import nullcontext
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from mbeir_fixture import TRAIN_SIZES, write_mbeir_fixture
from torch.utils.data import DataLoader

import mmtrain.data.stream as stream_mod
from mmtrain.data.convert import convert
from mmtrain.data.schema import TrainExample
from mmtrain.data.stream import TrainStream

TOTAL = sum(TRAIN_SIZES.values())
SOURCE_OF_TASK = {0: "mscoco_task0", 3: "mscoco_task3", 4: "nights_task4", 6: "oven_task6"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mbeir_fixture(tmp_path_factory.mktemp("stream") / "mbeir")


@pytest.fixture(scope="module")
def shards(tree: Path) -> Path:
    """Every source has >= 4 shards: 2 ranks x 2 workers split by shard."""
    out = tree.parent / "shards"
    convert("mbeir", out, root=tree, splits=("train",), workers=1)
    return out


@pytest.fixture(scope="module")
def one_shard_each(tree: Path) -> Path:
    """One shard per source: 2 ranks x 2 workers must fall back to the sample split."""
    out = tree.parent / "shards1"
    convert("mbeir", out, root=tree, splits=("train",), min_shards_per_source=1, workers=1)
    return out


@pytest.fixture
def rank(monkeypatch: pytest.MonkeyPatch):
    """Set the simulated rank (env RANK / WORLD_SIZE, as torchrun does)."""

    def set_rank(r: int, world_size: int) -> None:
        monkeypatch.setenv("RANK", str(r))
        monkeypatch.setenv("WORLD_SIZE", str(world_size))

    set_rank(0, 1)
    return set_rank


def simulate_loader(stream: TrainStream, num_workers: int, n_batches: int | None,
                    monkeypatch: pytest.MonkeyPatch) -> list:
    """In-process stand-in for DataLoader(stream, batch_size=None, num_workers=k): one iterator per
    worker, round-robin; stops after n_batches (None: when every worker is exhausted, finite mode)."""
    iterators = []
    for w in range(num_workers):
        monkeypatch.setattr(stream_mod, "worker_and_num_workers", lambda w=w: (w, num_workers))
        iterators.append(iter(stream))
        iterators[-1] = _primed(iterators[-1])  # run __iter__'s prologue while the patch says "worker w"
    out, live = [], list(iterators)
    while live and (n_batches is None or len(out) < n_batches):
        for it in list(live):
            batch = next(it, None)
            if batch is None:
                live.remove(it)  # a finished worker; DataLoader does the same
            elif n_batches is None or len(out) < n_batches:
                out.append(batch)
    return out


def _primed(it):
    first = next(it, None)
    if first is None:
        return iter(())
    return _chain(first, it)


def _chain(first, rest):
    yield first
    yield from rest


def keys(batches: list[list[TrainExample]]) -> list[str]:
    return [e.key for batch in batches for e in batch]


def take(stream: TrainStream, n: int) -> list:
    it = iter(stream)
    return [next(it) for _ in range(n)]


def fingerprint(batch: list[TrainExample]) -> list[tuple]:
    return [(e.key, e.positive.id, e.query.instruction, tuple(n.id for n in e.negatives)) for e in batch]


def test_homogeneous_batches_follow_the_plan(shards: Path, rank) -> None:
    stream = TrainStream(shards, batch_size=4, seed=3)
    for b, batch in enumerate(take(stream, 30)):
        assert len(batch) == 4
        names = {SOURCE_OF_TASK[e.task_id] for e in batch}
        assert names == {stream.batch_sources(b)[0]}
        assert all(e.dataset_id == {0: 9, 3: 9, 4: 4, 6: 5}[e.task_id] for e in batch)


def test_ranks_agree_on_sources_and_read_disjoint_samples(shards: Path, rank) -> None:
    per_rank = []
    for r in range(2):
        rank(r, 2)
        per_rank.append(take(TrainStream(shards, batch_size=3, seed=5), 25))
    sources = [[[e.task_id for e in batch] for batch in batches] for batches in per_rank]
    assert sources[0] == sources[1]
    assert all(len(set(tasks)) == 1 for tasks in sources[0])
    assert not set(keys(per_rank[0])) & set(keys(per_rank[1]))


def test_mixed_batches_mix(shards: Path, rank) -> None:
    stream = TrainStream(shards, batch_size=8, composition="mixed", seed=1)
    batches = take(stream, 20)
    assert sum(len({e.task_id for e in batch}) > 1 for batch in batches) >= 15
    for b, batch in enumerate(batches):
        assert [SOURCE_OF_TASK[e.task_id] for e in batch] == stream.batch_sources(b)


def _within(observed: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(observed - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


def test_source_frequencies_follow_weights(shards: Path) -> None:
    weights = {"mscoco_task0": 0.5, "mscoco_task3": 0.3, "nights_task4": 0.2, "oven_task6": 0.0}
    stream = TrainStream(shards, batch_size=2, weights=weights, seed=11)
    n = 20_000
    counts = Counter(stream.batch_sources(b)[0] for b in range(n))
    assert "oven_task6" not in counts and "oven_task6" in stream.describe()
    assert all(_within(counts[name], n, p) for name, p in weights.items() if p > 0), counts
    sized = TrainStream(shards, batch_size=4, composition="mixed", seed=2)  # default: proportional to size
    counts = Counter(name for b in range(5_000) for name in sized.batch_sources(b))
    assert all(_within(counts[name], 20_000, size / TOTAL) for name, size in TRAIN_SIZES.items()), counts


def test_share_composition(shards: Path) -> None:
    def homogeneous_fraction(share: float) -> float:
        stream = TrainStream(shards, batch_size=8, composition="share", homogeneous_share=share, seed=4)
        return np.mean([len(set(stream.batch_sources(b))) == 1 for b in range(4_000)])

    assert homogeneous_fraction(1.0) == 1.0
    assert homogeneous_fraction(0.0) < 0.01
    assert 0.46 < homogeneous_fraction(0.5) < 0.54


def test_source_choice_depends_on_seed_and_step_only(shards: Path) -> None:
    a = TrainStream(shards, batch_size=4, seed=7, num_negatives=1, shuffle_buffer=3)
    b = TrainStream(shards, batch_size=4, seed=7, start_batch=100)
    assert [a.batch_sources(i) for i in range(50)] == [b.batch_sources(i) for i in range(50)]
    c = TrainStream(shards, batch_size=4, seed=8)
    assert [a.batch_sources(i) for i in range(50)] != [c.batch_sources(i) for i in range(50)]


@pytest.mark.parametrize("fixture", ["shards", "one_shard_each"])
def test_one_pass_covers_every_sample_once(fixture: str, request, rank, monkeypatch: pytest.MonkeyPatch) -> None:
    """2 ranks x 2 workers, one pass: the union of what all four readers yield is the manifest."""
    out = request.getfixturevalue(fixture)
    seen: list[str] = []
    for r in range(2):
        rank(r, 2)
        stream = TrainStream(out, batch_size=3, composition="share", homogeneous_share=0.5, seed=9, max_passes=1)
        # only reader slot 0 (rank 0, worker 0) warns, so the warning shows once
        expect_warning = fixture == "one_shard_each" and r == 0
        with pytest.warns(UserWarning, match="splitting by sample") if expect_warning else nullcontext():
            seen += keys(simulate_loader(stream, 2, None, monkeypatch))
    assert len(seen) == TOTAL and len(set(seen)) == TOTAL


def test_same_seed_same_batches(shards: Path, rank) -> None:
    def run(seed: int) -> list:
        stream = TrainStream(shards, batch_size=4, seed=seed, num_negatives=2, shuffle_buffer=5, composition="mixed")
        return [fingerprint(b) for b in take(stream, 25)]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_start_batch_equals_skipping(shards: Path, rank, monkeypatch: pytest.MonkeyPatch) -> None:
    """More start points, worker counts and a late resume: tests/data/test_stream_resume.py."""
    rank(1, 2)
    kw = dict(batch_size=3, seed=13, num_negatives=1, composition="share", homogeneous_share=0.5)
    full = simulate_loader(TrainStream(shards, **kw), 2, 23, monkeypatch)
    for start in (0, 4, 7):
        resumed = simulate_loader(TrainStream(shards, start_batch=start, **kw), 2, 23 - start, monkeypatch)
        assert [fingerprint(b) for b in resumed] == [fingerprint(b) for b in full[start:]], start


def coco_image(tree: Path, i: int) -> bytes:
    return (tree / f"mbeir_images/mscoco_images/train2014/COCO_train2014_{i:012d}.jpg").read_bytes()


def test_visit_content(shards: Path, tree: Path, rank) -> None:
    stream = TrainStream(shards, batch_size=4, sources=["mscoco_task0", "mscoco_task3"], num_negatives=2, seed=0)
    examples = [e for b in take(stream, 60) for e in b]
    coco0 = [e for e in examples if e.task_id == 0]
    coco3 = [e for e in examples if e.task_id == 3]
    for e in coco0:  # query 9:i has positive 9:i and exactly one negative 9:(i+1)%12: drawn twice
        i = int(e.key.split(":")[1])
        assert e.query.text == f"A photo of object {i}." and e.query.image is None and e.query.id == 9 * 500_000 + i
        assert e.positive.id == 90_000_000 + i and e.positive_ids == [90_000_000 + i]
        assert [n.id for n in e.negatives] == [90_000_000 + (i + 1) % 12] * 2
        assert e.negatives[0].image == coco_image(tree, (i + 1) % 12)
    assert {e.query.instruction for e in coco0} == {"Identify the image showcasing the given everyday scene.",
                                                   "Find a picture of the caption."}
    for e in coco3:
        i = int(e.key.split(":")[1]) - 1000
        assert e.query.text == "" and e.query.modality == "image" and e.negatives == []
        assert e.query.image == coco_image(tree, i)
        assert e.positive.id in e.positive_ids and e.positive.text.startswith("A cat number")
    assert len({e.positive.id for e in coco3 if e.key == "9:1000"}) == 2  # both positives get drawn


def test_instruction_modes_and_collate(shards: Path, rank) -> None:
    first = TrainStream(shards, batch_size=4, sources=["mscoco_task0"], instruction="first")
    instructions = {e.query.instruction for b in take(first, 10) for e in b}
    assert instructions == {"Identify the image showcasing the given everyday scene."}
    none = TrainStream(shards, batch_size=4, instruction="none")
    assert {e.query.instruction for b in take(none, 5) for e in b} == {None}
    assert take(TrainStream(shards, batch_size=5, collate_fn=len), 3) == [5, 5, 5]


def test_configuration_errors(shards: Path, rank) -> None:
    with pytest.raises(ValueError, match="unknown"):
        TrainStream(shards, batch_size=2, sources=["nope_task0"])
    with pytest.raises(ValueError, match="missing for"):
        TrainStream(shards, batch_size=2, weights={"mscoco_task0": 1.0})
    with pytest.raises(ValueError, match="composition"):
        TrainStream(shards, batch_size=2, composition="random")
    rank(7, 8)  # 8 readers, oven_task6 has 5 samples in 5 shards: reader 7 has none
    with pytest.raises(ValueError, match="fewer than the 8 readers"):
        take(TrainStream(shards, batch_size=2, sources=["oven_task6"]), 1)


def test_describe_and_sizes(shards: Path) -> None:
    stream = TrainStream(shards, batch_size=8)
    assert stream.source_sizes() == TRAIN_SIZES
    text = stream.describe()
    assert "mscoco_task0" in text and "p=0.3871" in text and "[(i,t)->t]" in text


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["shards", "one_shard_each"])
def test_dataloader_workers_cover_every_sample_once(fixture: str, request, rank) -> None:
    out = request.getfixturevalue(fixture)
    seen: list[str] = []
    for r in range(2):
        rank(r, 2)  # forked workers inherit the environment
        stream = TrainStream(out, batch_size=2, composition="mixed", seed=3, max_passes=1)
        seen += keys(list(DataLoader(stream, batch_size=None, num_workers=2)))
    assert len(seen) == TOTAL and len(set(seen)) == TOTAL


@pytest.mark.slow
def test_dataloader_resume_and_rank_agreement(shards: Path, rank) -> None:
    def loader_batches(r: int, start: int, n: int) -> list:
        rank(r, 2)
        stream = TrainStream(shards, batch_size=3, seed=21, start_batch=start, shuffle_buffer=4)
        it = iter(DataLoader(stream, batch_size=None, num_workers=2))
        return [fingerprint(next(it)) for _ in range(n)]

    full = loader_batches(0, 0, 16)
    assert loader_batches(0, 5, 11) == full[5:]
    late = loader_batches(0, 0, 64)  # real forked workers, ~6 passes per reader in
    assert loader_batches(0, 57, 7) == late[57:]
    other = loader_batches(1, 0, 16)
    assert [[k[0].split(":")[0] for k in b] for b in full] == [[k[0].split(":")[0] for k in b] for b in other]
    assert not {k[0] for b in full for k in b} & {k[0] for b in other for k in b}
