"""M-BEIR through the shard writer (``convert("mbeir")``): members and json read back with plain
``tarfile``, eval loaders, manifest, caching, races, staleness."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections import defaultdict
from pathlib import Path

import pytest
from mbeir_fixture import TRAIN_SIZES, write_mbeir_fixture

import mmtrain.data.convert.mbeir as mbeir_reader_mod
import mmtrain.data.convert.writer as writer_mod
from mmtrain.data.convert import ConversionError, convert, ensure_converted
from mmtrain.data.convert.writer import shard_sizes
from mmtrain.data.shards import iter_samples, load_eval_queries, load_pool, stale_source_files


# M-BEIR goes through the one shard writer; skip_invalid = any share of bad records may be skipped.
def write_mbeir_shards(root: Path, out: Path, skip_invalid: bool = False, **kw) -> dict:
    return convert("mbeir", out, root=root, max_bad=1.0 if skip_invalid else 0.0, workers=1, **kw)


def ensure_mbeir_shards(root: Path, out: Path, rebuild_stale: bool = False, **kw) -> dict:
    return ensure_converted(out, "mbeir", root=root, rebuild_stale=rebuild_stale, workers=1, **kw)


COCO0_INSTRUCTIONS = ["Identify the image showcasing the given everyday scene.", "Find a picture of the caption."]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    base = tmp_path_factory.mktemp("shards")
    root = write_mbeir_fixture(base / "mbeir")
    manifest = write_mbeir_shards(root, base / "out")
    return root, base / "out", manifest


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """key -> {member suffix: bytes}, independent of the writer and of webdataset."""
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, suffix = member.name.split(".", 1)
            samples[key][suffix] = tar.extractfile(member).read()
    return dict(samples)


def read_source(out: Path, manifest: dict, name: str) -> list[dict[str, bytes]]:
    return [s for p in manifest["sources"][name]["shards"] for s in read_tar(out / p).values()]


def test_shard_sizes() -> None:
    assert shard_sizes(0, 10, 8) == []
    assert shard_sizes(3, 1000, 8) == [1, 1, 1]
    assert shard_sizes(10, 1000, 8) == [1, 1, 1, 2, 1, 1, 1, 2]
    assert shard_sizes(25, 10, 2) == [8, 8, 9]
    assert shard_sizes(20, 10, 1) == [10, 10]


def test_training_sample_members_and_json(built) -> None:
    root, out, manifest = built
    first = read_tar(out / "train/mscoco_task3/shard-000000.tar")
    assert list(first) == ["000000000"]
    sample = first["000000000"]
    assert sorted(sample) == ["json", "query.jpg"]  # text positives: no image members
    assert json.loads(sample["json"]) == {
        "qid": "9:1000", "qid_hash": 9 * 500_000 + 1000, "source": "mbeir", "dataset": "mscoco", "dataset_id": 9,
        "task_id": 3, "language": "en", "query": {"text": "", "image": "query.jpg", "modality": "image"},
        "instructions": ["Find a caption describing this everyday image."],
        "positives": [
            {"did": "9:500", "did_hash": 90_000_500, "modality": "text", "text": "A cat number 0.", "image": None},
            {"did": "9:501", "did_hash": 90_000_501, "modality": "text", "text": "A cat number 1.", "image": None}],
        "negatives": [],
    }
    coco_image_0 = (root / "mbeir_images/mscoco_images/train2014/COCO_train2014_000000000000.jpg").read_bytes()
    assert sample["query.jpg"] == coco_image_0

    sample = read_tar(out / "train/mscoco_task0/shard-000000.tar")["000000000"]
    assert sorted(sample) == ["json", "neg.0.jpg", "pos.0.jpg"]
    record = json.loads(sample["json"])
    assert record["query"] == {"text": "A photo of object 0.", "image": None, "modality": "text"}
    assert record["instructions"] == COCO0_INSTRUCTIONS
    assert record["positives"] == [
        {"did": "9:0", "did_hash": 90_000_000, "modality": "image", "text": None, "image": "pos.0.jpg"}]
    assert record["negatives"] == [
        {"did": "9:1", "did_hash": 90_000_001, "modality": "image", "text": None, "image": "neg.0.jpg"}]
    assert sample["pos.0.jpg"] == coco_image_0

    oven = json.loads(read_tar(out / "train/oven_task6/shard-000000.tar")["000000000"]["json"])
    assert (oven["qid"], oven["dataset_id"], oven["positives"][0]["did"], oven["positives"][0]["did_hash"]) == (
        "5:0", 5, "6:0", 60_000_000)  # OVEN query, InfoSeek positive
    assert oven["query"] == {"text": "What is this building 0?", "image": "query.jpg", "modality": "image,text"}


def test_every_training_query_written_once(built) -> None:
    _, out, manifest = built
    expected = {
        "mscoco_task0": {f"9:{i}" for i in range(12)}, "mscoco_task3": {f"9:{1000 + i}" for i in range(8)},
        "nights_task4": {f"4:{i}" for i in range(6)}, "oven_task6": {f"5:{i}" for i in range(5)}}
    for name, qids in expected.items():
        samples = read_source(out, manifest, f"train/{name}")
        assert sorted(json.loads(s["json"])["qid"] for s in samples) == sorted(qids)
        entry = manifest["sources"][f"train/{name}"]
        assert entry["count"] == TRAIN_SIZES[name] == sum(entry["shard_counts"])
        assert len(entry["shards"]) == min(8, TRAIN_SIZES[name])  # min_shards_per_source=8


def test_eval_samples_carry_qrels_by_id(built) -> None:
    _, out, manifest = built
    samples = read_source(out, manifest, "val/oven_task6")
    record = json.loads(samples[0]["json"])
    assert sorted(samples[0]) == ["json", "query.jpg"]
    assert record["qid"] == "5:3000" and record["task_id"] == 6
    assert record["positives"] == [
        {"did": "6:2000", "did_hash": 60_002_000, "modality": "text", "text": None, "image": None},
        {"did": "5:2000", "did_hash": 50_002_000, "modality": "text", "text": None, "image": None}]
    coco = [json.loads(s["json"]) for s in read_source(out, manifest, "test/mscoco_task0")]
    assert [r["positives"][0]["did"] for r in coco] == ["9:4100", "9:4101", "9:4102"]  # relevance 0 dropped
    assert all(len(r["positives"]) == 1 for r in coco)


def test_pool_shards_and_load_pool(built) -> None:
    root, out, manifest = built
    assert manifest["pools"]["val"]["count"] == 8
    assert manifest["pools"]["val"]["count_per_modality"] == {"image": 3, "text": 5}
    assert manifest["pools"]["train"]["count"] == 31
    raw = [s for p in manifest["pools"]["val"]["shards"] for s in read_tar(out / p).values()]
    assert json.loads(raw[0]["json"]) == {"did": "9:2000", "did_hash": 90_002_000, "source": "mbeir",
                                          "dataset_id": 9, "modality": "image", "text": None, "image": "jpg"}
    assert raw[0]["jpg"] == (root / "mbeir_images/mscoco_images/val2014/0.jpg").read_bytes()
    items, dids = load_pool(out, "val")
    assert dids == ["9:2000", "9:2001", "9:2002", "6:2000", "6:2001", "5:2000", "5:2001", "9:2900"]
    assert [it.id for it in items][:4] == [90_002_000, 90_002_001, 90_002_002, 60_002_000]
    assert items[3].text == "Wiki val 0." and items[3].image is None and items[3].modality == "text"
    assert items[0].image == raw[0]["jpg"] and items[0].instruction is None


def test_load_eval_queries(built) -> None:
    root, out, _ = built
    queries = load_eval_queries(out, "test")
    assert [q.qid for q in queries] == ["9:4000", "9:4001", "9:4002", "5:4000", "5:4001"]
    q = queries[3]
    assert q.pair == "oven_task6" and q.dataset_id == 5 and q.task_id == 6
    assert q.item.id == 5 * 500_000 + 4000 and q.item.text == "Who built this 0."
    assert q.item.instruction == (
        "Retrieve a Wikipedia paragraph that provides an answer to the given query about the image.")
    assert q.item.image == (root / "mbeir_images/oven_images/test/0.jpg").read_bytes()
    assert q.relevant == [60_004_100, 50_004_100]
    assert queries[0].item.instruction == COCO0_INSTRUCTIONS[0] and queries[0].item.image is None


def test_iter_samples_parses_json(built) -> None:
    _, out, manifest = built
    samples = list(iter_samples(out / p for p in manifest["sources"]["train/nights_task4"]["shards"]))
    assert [s["json"]["qid"] for s in samples] == [f"4:{i}" for i in range(6)]
    assert isinstance(samples[0]["query.jpg"], bytes) and isinstance(samples[0]["pos.0.jpg"], bytes)


def test_manifest_metadata(built) -> None:
    root, _, manifest = built
    assert manifest["schema_version"] == 1 and manifest["skipped"] == []
    entry = manifest["sources"]["val/mscoco_task0"]
    assert {k: entry[k] for k in ("name", "dataset", "dataset_id", "task_id", "split", "count")} == {
        "name": "mscoco_task0", "dataset": "mscoco", "dataset_id": 9, "task_id": 0, "split": "val", "count": 3}
    tsv = root / "instructions/query_instructions.tsv"
    assert manifest["source_files"]["instructions/query_instructions.tsv"] == {
        "size": tsv.stat().st_size, "mtime_ns": tsv.stat().st_mtime_ns, "sha256": hashlib.sha256(tsv.read_bytes()).hexdigest()}
    assert "cand_pool/global/mbeir_union_test_cand_pool.jsonl" in manifest["source_files"]


def test_ensure_is_cached_and_write_refuses_existing(built) -> None:
    root, out, manifest = built
    before = (out / "manifest.json").stat().st_mtime_ns
    assert ensure_mbeir_shards(root, out) == manifest
    assert (out / "manifest.json").stat().st_mtime_ns == before
    with pytest.raises(FileExistsError):
        write_mbeir_shards(root, out)


def test_ensure_warns_when_cached_settings_differ(built, caplog: pytest.LogCaptureFixture) -> None:
    root, out, manifest = built
    assert ensure_mbeir_shards(root, out, samples_per_shard=5) == manifest
    assert "samples_per_shard': (1000, 5)" in caplog.text


def test_failed_write_leaves_no_conversion_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed write leaves no manifest (no reader takes it for shards) and no half-written file;
    the next call finishes the conversion."""
    root = write_mbeir_fixture(tmp_path / "mbeir")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    real = writer_mod._query_sample
    monkeypatch.setattr(writer_mod, "_query_sample", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_mbeir_shards(root, tmp_path / "out", splits=("val",))
    assert sorted(os.listdir(tmp_path)) == ["mbeir", "out"]  # no sibling temporary directory
    assert not (tmp_path / "out/manifest.json").exists() and not list((tmp_path / "out").rglob("*.tmp-*"))
    monkeypatch.setattr(writer_mod, "_query_sample", real)
    assert ensure_mbeir_shards(root, tmp_path / "out", splits=("val",))["sources"]["val/mscoco_task0"]["count"] == 3


def test_ensure_returns_the_winner_of_a_race(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process finishes first while we convert: we read its result."""
    root = write_mbeir_fixture(tmp_path / "mbeir")
    out = tmp_path / "out"
    winner = {"schema_version": 1, "sources": {}, "pools": {}, "note": "the other process"}
    real_load = mbeir_reader_mod.load_mbeir

    def load_then_lose_race(*args, **kwargs):
        data = real_load(*args, **kwargs)
        out.mkdir()
        (out / "manifest.json").write_text(json.dumps(winner))
        return data

    monkeypatch.setattr(mbeir_reader_mod, "load_mbeir", load_then_lose_race)
    assert ensure_mbeir_shards(root, out, splits=("val",)) == winner
    assert sorted(os.listdir(tmp_path)) == ["mbeir", "out"]


def test_invalid_input_and_skip_invalid(tmp_path: Path) -> None:
    root = write_mbeir_fixture(tmp_path / "mbeir")
    (root / "mbeir_images/oven_images/val/1.jpg").unlink()  # query 5:3001
    with pytest.raises(ConversionError, match="missing_image: 1"):
        write_mbeir_shards(root, tmp_path / "out", splits=("val",))
    assert not (tmp_path / "out/manifest.json").exists()
    manifest = write_mbeir_shards(root, tmp_path / "out", splits=("val",), skip_invalid=True)
    assert manifest["sources"]["val/oven_task6"]["count"] == 1
    assert manifest["skipped_counts"] == {"missing_image": 1}
    assert manifest["skipped"][0]["location"] == "query/val/mbeir_oven_task6_val.jsonl:2"
    assert list(manifest["pools"]) == ["val"]


def test_changed_source_makes_cache_stale(tmp_path):
    """Shards record their sources; a changed source file is an error, or a rebuild when asked."""
    root = write_mbeir_fixture(tmp_path / "mbeir")
    out = tmp_path / "shards"
    first = ensure_mbeir_shards(root, out, samples_per_shard=2, min_shards_per_source=1)
    assert stale_source_files(first, root) == []
    qrels = next((root / "qrels" / "test").glob("*.txt"))
    os.utime(qrels, ns=(1, 1))                     # touched, same content: still fresh
    assert stale_source_files(first, root) == []
    qrels.write_text(qrels.read_text() + "\n")     # real change
    assert stale_source_files(first, root) == [qrels.relative_to(root).as_posix()]
    with pytest.raises(RuntimeError, match="stale"):
        ensure_mbeir_shards(root, out, samples_per_shard=2, min_shards_per_source=1)
    rebuilt = ensure_mbeir_shards(root, out, rebuild_stale=True, samples_per_shard=2, min_shards_per_source=1)
    assert stale_source_files(rebuilt, root) == []
