"""Converted sources in the training stream: mixing manifests of different families by weight, exact
resume over 2 ranks x 2 DataLoader workers, a clear error (no hang) with too few shards, and corrupt
samples skipped only when configured, and counted."""

from __future__ import annotations

import io
import json
import logging
import math
import tarfile
from collections import Counter
from pathlib import Path

import fixtures_sources as fx
import pytest
from mbeir_fixture import TRAIN_SIZES, write_mbeir_fixture
from torch.utils.data import DataLoader

from mmtrain.data.convert import convert
from mmtrain.data.mix import family_weights, write_mix
from mmtrain.data.stream import TrainStream


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """M-BEIR fixture (31 train queries, 4 sources) and the Tevatron legacy + BEIR-like text sources."""
    base = tmp_path_factory.mktemp("mix")
    mbeir = base / "mbeir_shards"
    convert("mbeir", mbeir, root=write_mbeir_fixture(base / "mbeir"), splits=["train", "val"], workers=1,
            min_shards_per_source=4)
    text_root = base / "text"
    rows = [{"query_id": str(i), "query": f"question {i}",
             "positive_passages": [{"docid": f"p{i}", "title": "", "text": f"answer {i}"}],
             "negative_passages": [{"docid": f"n{i}", "text": f"wrong {i}"}]} for i in range(40)]
    fx.jsonl(text_root / "train.jsonl", rows)
    text = base / "text_shards"
    convert("tevatron", text, train=text_root / "train.jsonl", dataset="toytext", workers=1, samples_per_shard=5)
    return mbeir, text


@pytest.fixture
def rank(monkeypatch: pytest.MonkeyPatch):
    def set_rank(r: int, world_size: int) -> None:
        monkeypatch.setenv("RANK", str(r))
        monkeypatch.setenv("WORLD_SIZE", str(world_size))

    set_rank(0, 1)
    return set_rank


def test_mix_weights_are_met(parts, tmp_path: Path, rank) -> None:
    mbeir, text = parts
    manifest = write_mix(tmp_path / "mix", {mbeir: 1.0, text: 1.0})  # M-BEIR : text = 1 : 1
    assert family_weights(manifest) == pytest.approx({str(mbeir.resolve()): 0.5, str(text.resolve()): 0.5})
    stream = TrainStream(tmp_path / "mix", batch_size=4, weights=manifest["weights"], seed=3)
    n = 8000
    counts = Counter(stream.batch_sources(b)[0] for b in range(n))
    expected = {f"mbeir.{name}": 0.5 * size / sum(TRAIN_SIZES.values()) for name, size in TRAIN_SIZES.items()}
    expected["tevatron.toytext_task1"] = 0.5
    for name, p in expected.items():  # within 5 sigma of the binomial count
        assert abs(counts[name] - n * p) <= 5 * math.sqrt(n * p * (1 - p)), (name, counts[name], n * p)
    # what comes out follows the plan: a batch of the text source holds text examples
    it = iter(stream)
    for b in range(12):
        batch = next(it)
        assert all((e.task_id == 1) == (stream.batch_sources(b)[0] == "tevatron.toytext_task1") for e in batch)
    # evaluation comes from the first part
    assert set(manifest["pools"]) == {"train", "val"} and all(Path(s).is_absolute() for s in manifest["pools"]["val"]["shards"])


def test_mix_rejects_bad_parts(parts, tmp_path: Path) -> None:
    mbeir, _ = parts
    with pytest.raises(ValueError, match="positive sum"):
        write_mix(tmp_path / "m", {mbeir: 0.0})
    copy = tmp_path / "copy"  # the same source twice under one family name
    copy.mkdir()
    (copy / "manifest.json").write_text((mbeir / "manifest.json").read_text())
    with pytest.raises(ValueError, match="two parts have the source"):
        write_mix(tmp_path / "m", {mbeir: 1.0, copy: 1.0})


def fingerprint(batch) -> list[tuple]:
    return [(e.key, e.positive.id, e.query.instruction, tuple(n.id for n in e.negatives)) for e in batch]


@pytest.mark.slow
def test_mixed_stream_resumes_exactly_on_2_ranks_x_2_workers(parts, tmp_path: Path, rank) -> None:
    mbeir, text = parts
    manifest = write_mix(tmp_path / "mix", {mbeir: 1.0, text: 1.0})

    def batches(r: int, start: int, n: int) -> list:
        rank(r, 2)  # forked DataLoader workers inherit RANK / WORLD_SIZE
        stream = TrainStream(tmp_path / "mix", batch_size=3, weights=manifest["weights"], seed=21, num_negatives=1,
                             composition="share", homogeneous_share=0.5, start_batch=start, shuffle_buffer=4)
        it = iter(DataLoader(stream, batch_size=None, num_workers=2))
        return [fingerprint(next(it)) for _ in range(n)]

    for r in range(2):
        full = batches(r, 0, 14)
        assert batches(r, 5, 9) == full[5:], f"rank {r}"
    rank0, rank1 = batches(0, 0, 10), batches(1, 0, 10)
    # ranks draw the same sources per batch and read disjoint samples
    source = lambda k: "text" if not k[0].count(":") else k[0].split(":")[0]  # noqa: E731
    assert [[source(k) for k in b] for b in rank0] == [[source(k) for k in b] for b in rank1]
    assert not {k[0] for b in rank0 for k in b if ":" in k[0]} & {k[0] for b in rank1 for k in b if ":" in k[0]}


@pytest.mark.slow
def test_few_shards_raise_instead_of_hanging(tmp_path: Path, rank) -> None:
    fx.jsonl(tmp_path / "train.jsonl", [{"query_id": str(i), "query": f"q {i}",
                                         "positive_passages": [{"docid": f"p{i}", "text": f"a {i}"}]} for i in range(3)])
    convert("tevatron", tmp_path / "out", train=tmp_path / "train.jsonl", workers=1)
    rank(1, 2)  # 2 ranks x 2 workers = 4 readers for 3 samples in 3 shards: reader 3 would wait forever
    loader = DataLoader(TrainStream(tmp_path / "out", batch_size=2), batch_size=None, num_workers=2)
    it = iter(loader)
    with pytest.raises(Exception, match="fewer than the 4 readers"):
        for _ in range(4):  # worker 0 may deliver first; worker 1's error surfaces at its turn
            next(it)


def _rewrite_member(tar_path: Path, member_suffix: str, new: bytes) -> None:
    """Replace the first member ending in ``member_suffix`` (a corrupt shard, as a bad disk leaves it)."""
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    done = False
    with tarfile.open(tar_path, "w") as tar:
        for m, data in members:
            if not done and m.name.endswith(member_suffix):
                data, done = new, True
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    assert done


def test_corrupt_samples_fail_by_default_and_are_skipped_and_counted_when_configured(parts, tmp_path: Path, rank,
                                                                                    caplog) -> None:
    mbeir, _ = parts
    out = tmp_path / "shards"
    convert("mbeir", out, root=mbeir.parent / "mbeir", splits=["train"], workers=1, min_shards_per_source=1)
    manifest = json.loads((out / "manifest.json").read_text())
    coco0 = out / manifest["sources"]["train/mscoco_task0"]["shards"][0]
    nights = out / manifest["sources"]["train/nights_task4"]["shards"][0]
    _rewrite_member(coco0, ".json", b"{not json")
    _rewrite_member(nights, ".pos.0.jpg", b"\xff\xd8 truncated")

    def keys(skip: bool) -> list[str]:
        stream = TrainStream(out, batch_size=2, composition="mixed", max_passes=1, skip_corrupt=skip, seed=1)
        return [e.key for b in stream for e in b]

    with pytest.raises(json.JSONDecodeError):
        keys(False)
    caplog.set_level(logging.WARNING, logger="mmtrain.data.stream")
    seen = keys(True)
    assert len(seen) == sum(TRAIN_SIZES.values()) - 2 and len(set(seen)) == len(seen)
    messages = [r.getMessage() for r in caplog.records if "skip_corrupt" in r.getMessage()]
    assert len(messages) == 2 and any("so far" in m for m in messages)
