"""Converters: round trip of every source's fixture (every record in is a sample out or a skipped record
with its reason), bad-input threshold, image re-encoding, never-eval, restart, parallel determinism.

Shards are read back with plain ``tarfile``; expectations are the literals in fixtures_sources.py.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import defaultdict
from pathlib import Path

import fixtures_sources as fx
import pytest
from mbeir_fixture import write_mbeir_fixture
from PIL import Image

import mmtrain.data.convert.writer as writer_mod
from mmtrain.data.convert import ConversionError, convert
from mmtrain.data.placeholders import IMAGE_MARKER, neutralize, render_placeholders


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, suffix = member.name.split(".", 1)
            samples[key][suffix] = tar.extractfile(member).read()
    return dict(samples)


def query_samples(out: Path, manifest: dict, split: str | None = None) -> dict[str, tuple[dict, dict]]:
    """qid -> (record, members) over every query source (of ``split``)."""
    found = {}
    for entry in manifest["sources"].values():
        if split is None or entry["split"] == split:
            for rel in entry["shards"]:
                for members in read_tar(out / rel).values():
                    record = json.loads(members["json"])
                    assert record["qid"] not in found, f"{record['qid']} written twice"
                    found[record["qid"]] = (record, members)
    return found


def pool_dids(out: Path, manifest: dict, split: str) -> set[str]:
    return {json.loads(m["json"])["did"] for rel in manifest["pools"][split]["shards"]
            for m in read_tar(out / rel).values()}


def check_round_trip(out: Path, manifest: dict, expected: dict) -> dict[str, tuple[dict, dict]]:
    """Every good record is a sample with the expected content; every bad one is skipped with its kind;
    nothing else went in or out."""
    samples = query_samples(out, manifest)
    assert set(samples) == set(expected["good"])
    for qid, (text, has_image, positives) in expected["good"].items():
        record, members = samples[qid]
        assert record["query"]["text"] == text and "<|image" not in text
        assert (record["query"]["image"] is not None) == has_image == ("query.jpg" in members)
        if record in [s[0] for s in query_samples(out, manifest, "train").values()]:
            assert [p["text"] for p in record["positives"]] == positives
    skipped = {(s["location"], s["kind"]) for s in manifest["skipped"]}
    assert {(loc, kind) for loc, kind in expected["bad"].items()} <= skipped
    assert skipped == {*expected["bad"].items(), *expected.get("also", {}).items()}
    report = manifest["bad_input"]
    assert report["input_records"] == len(expected["good"]) + len(expected["bad"]) + expected.get("ignored", 0)
    return samples


def negatives_of(record: dict, members: dict) -> list[tuple[str | None, bool]]:
    return [(n["text"], n["image"] is not None and n["image"] in members) for n in record["negatives"]]


def test_mmeb_round_trip_reencode_and_placeholders(tmp_path: Path) -> None:
    expected = fx.write_mmeb(tmp_path / "mmeb")
    out = tmp_path / "out"
    m = convert("mmeb", out, train_root=tmp_path / "mmeb/train", eval_root=tmp_path / "mmeb/eval",
                image_root=tmp_path / "mmeb", max_bad=1.0, workers=1, min_shards_per_source=1)
    samples = check_round_trip(out, m, expected)
    record, members = samples["MSCOCO_i2t:1"]
    assert Image.open(io.BytesIO(members["query.jpg"])).size == (384, 256)  # 600x400 -> short side 256
    assert negatives_of(record, members) == [("A blue wall.", False)] and record["neg_dids"] == [record["negatives"][0]["did"]]
    record, members = samples["VisDial:0"]
    assert record["positives"][0]["modality"] == "image,text" and record["task_id"] == 2  # t -> (i,t)
    assert Image.open(io.BytesIO(members["pos.0.jpg"])).format == "JPEG"  # the PNG was re-encoded
    assert samples["MSCOCO_i2t:0"][0]["task_id"] == 6 and samples["MSCOCO_i2t:0"][0]["language"] == "en"
    # MMEB-eval: the row's own candidate list (positive first) is kept, all of it in the split's pool.
    record, _ = samples["VOC2007:0"]
    assert record["positives"][0]["did"] == record["candidate_dids"][0] and len(record["candidate_dids"]) == 3
    assert set(record["candidate_dids"]) <= pool_dids(out, m, "test")
    cat = [d for d in samples["MSCOCO_i2t:0"][0]["positives"]] + [samples["VOC2007:0"][0]["positives"][0]]
    assert cat[0]["did"] == cat[1]["did"]  # "A cat on a mat." is one candidate id across subsets
    assert m["images"]["reencoded"] >= 2 and m["counts"]["test"]["MSCOCO_t2i"] == {"0": 1}
    assert m["sources"]["train/MSCOCO_i2t_task6"]["bytes"] > 0 and m["source_files"]


def test_default_threshold_fails_with_every_kind(tmp_path: Path) -> None:
    fx.write_mmeb(tmp_path / "mmeb")
    with pytest.raises(ConversionError) as err:
        convert("mmeb", tmp_path / "out", train_root=tmp_path / "mmeb/train", image_root=tmp_path / "mmeb", workers=1)
    message = str(err.value)
    for kind in ("missing_image", "undecodable_image", "empty_query", "empty_positive", "malformed_json"):
        assert kind in message
    assert "MSCOCO_i2t/original-00000-of-00001.parquet:row2: query image" in message  # relative to the train root
    report = json.loads((tmp_path / "out/bad_input.json").read_text())
    assert report["kinds"]["malformed_json"]["count"] == 1 and not (tmp_path / "out/manifest.json").exists()
    # 5 bad of 9 training records: a threshold above that converts
    m = convert("mmeb", tmp_path / "out", train_root=tmp_path / "mmeb/train", image_root=tmp_path / "mmeb",
                workers=1, max_bad=0.6)
    assert m["bad_input"]["skipped_records"] == 5 and m["bad_input"]["input_records"] == 9


def test_mme5_hardneg_parses_literals_never_eval(tmp_path: Path) -> None:
    pwned = Path("/tmp/mmtrain_pwned")
    pwned.unlink(missing_ok=True)
    expected = fx.write_mme5_hardneg(tmp_path / "hn")
    m = convert("mme5-hardneg", tmp_path / "out", root=tmp_path / "hn", max_bad=1.0, workers=1)
    samples = check_round_trip(tmp_path / "out", m, expected)
    assert not pwned.exists()
    for qid, negs in expected["negatives"].items():
        assert negatives_of(*samples[qid]) == negs


def test_mme5_synthetic_modality_language_and_quirk(tmp_path: Path) -> None:
    expected = fx.write_mme5_synthetic(tmp_path / "syn")
    m = convert("mme5-synthetic", tmp_path / "out", root=tmp_path / "syn", max_bad=1.0, workers=1)
    samples = check_round_trip(tmp_path / "out", m, expected)
    assert {q: samples[q][0]["language"] for q in samples} == expected["languages"]
    assert m["bad_input"]["repairs"] == expected["repairs"]
    assert samples["Retrieval:0"][0]["subset"] == "T2I" and samples["Retrieval:0"][0]["task_id"] == 2
    assert negatives_of(*samples["Retrieval:0"]) == [("Plain negative text.", False)]
    assert negatives_of(*samples["Retrieval:1"]) == [("Eine Katze.", False)]


def test_beir(tmp_path: Path) -> None:
    expected = fx.write_beir(tmp_path / "scifact")
    m = convert("beir", tmp_path / "out", root=tmp_path / "scifact", max_bad=1.0, workers=1)
    expected = {**expected, "good": {**expected["good"], "q4": ("german cities", False, None)}, "ignored": 0}
    # 4 corpus lines + 1 malformed, 4 queries; qrels rows are not records
    assert m["bad_input"]["input_records"] == 9
    samples = query_samples(tmp_path / "out", m)
    assert set(samples) == set(expected["good"])
    for qid, (text, _, positives) in expected["good"].items():
        if positives is not None:
            assert samples[qid][0]["query"]["text"] == text and [p["text"] for p in samples[qid][0]["positives"]] == positives
    assert [p["did"] for p in samples["q4"][0]["positives"]] == expected["test"]["q4"]
    assert pool_dids(tmp_path / "out", m, "test") == {"d1", "d2", "d3"}
    assert {(s["location"], s["kind"]) for s in m["skipped"]} == set(expected["bad"].items())
    assert samples["q1"][0]["task_id"] == 1 and samples["q1"][0]["source"] == "beir"


def test_tevatron_legacy(tmp_path: Path) -> None:
    expected = fx.write_tevatron_legacy(tmp_path / "tev")
    m = convert("tevatron", tmp_path / "out", train=tmp_path / "tev/train.jsonl", max_bad=1.0, workers=1)
    samples = check_round_trip(tmp_path / "out", m, expected)
    assert negatives_of(*samples["1"]) == expected["negatives"]["1"]


def test_tevatron_id_based(tmp_path: Path) -> None:
    expected = fx.write_tevatron_ids(tmp_path / "tev")
    m = convert("tevatron", tmp_path / "out", train=tmp_path / "tev/train.jsonl", test=tmp_path / "tev/test.jsonl",
                corpus=tmp_path / "tev/corpus.jsonl", max_bad=1.0, workers=1)
    expected = {**expected, "good": {**expected["good"], "t": ("third please", False, None)}, "ignored": 3}  # corpus rows c1-c3
    samples = check_round_trip(tmp_path / "out", m, expected)
    assert negatives_of(*samples["a"]) == expected["negatives"]["a"]
    assert samples["b"][0]["task_id"] == 4 and samples["t"][0]["task_id"] == 2
    assert [p["did"] for p in samples["t"][0]["positives"]] == ["c3"]


def write_bad_mbeir(root: Path) -> dict[str, str]:
    """The M-BEIR fixture plus one bad record of each kind the M-BEIR reader reports; location -> kind."""
    write_mbeir_fixture(root)
    (root / "mbeir_images/bad").mkdir(parents=True)
    (root / "mbeir_images/bad/corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    lines = [
        '{"qid": "9:900", "query_txt": "broken',
        {"qid": "9:901", "query_txt": None, "query_img_path": None, "query_modality": "text",
         "pos_cand_list": ["9:0"], "neg_cand_list": [], "task_id": 0},
        {"qid": "9:902", "query_txt": "x", "query_img_path": None, "query_modality": "text",
         "pos_cand_list": ["9:0"], "neg_cand_list": [], "task_id": 42},
        {"qid": "9:903", "query_txt": "x", "query_img_path": None, "query_modality": "text",
         "pos_cand_list": ["9:777777"], "neg_cand_list": [], "task_id": 0},
        {"qid": "9:904", "query_txt": None, "query_img_path": "mbeir_images/bad/corrupt.jpg", "query_modality": "image",
         "pos_cand_list": ["9:500"], "neg_cand_list": [], "task_id": 3},
        {"qid": "9:905", "query_txt": None, "query_img_path": "mbeir_images/bad/missing.jpg", "query_modality": "image",
         "pos_cand_list": ["9:500"], "neg_cand_list": [], "task_id": 3},
    ]
    path = root / "query/train/mbeir_mscoco_train.jsonl"
    n = len(path.read_text().splitlines())
    with open(path, "a") as f:
        f.write("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    kinds = ["malformed_json", "empty_query", "unknown_task_id", "positive_not_in_pool", "undecodable_image",
             "missing_image"]
    return {f"query/train/mbeir_mscoco_train.jsonl:{n + 1 + i}": k for i, k in enumerate(kinds)}


def test_mbeir_bad_records_and_round_trip(tmp_path: Path) -> None:
    bad = write_bad_mbeir(tmp_path / "mbeir")
    with pytest.raises(ConversionError, match="positive_not_in_pool"):
        convert("mbeir", tmp_path / "out", root=tmp_path / "mbeir", workers=1)
    m = convert("mbeir", tmp_path / "out", root=tmp_path / "mbeir", workers=1, max_bad=0.2, min_shards_per_source=1)
    assert {(s["location"], s["kind"]) for s in m["skipped"]} == set(bad.items())
    samples = query_samples(tmp_path / "out", m, "train")
    assert len(samples) == 31 and not {"9:900", "9:901", "9:902", "9:903", "9:904", "9:905"} & set(samples)
    record = samples["5:1"][0]  # OVEN query, InfoSeek positive (cross-pool), hashes kept beside strings
    assert record["positives"][0]["did"] == "6:1" and record["positives"][0]["did_hash"] == 60_000_001
    assert record["qid_hash"] == 5 * 500_000 + 1 and record["task_id"] == 6
    assert samples["4:0"][0]["task_id"] == 4  # derived: the line has no task_id
    val = query_samples(tmp_path / "out", m, "val")
    assert [p["did"] for p in val["5:3000"][0]["positives"]] == ["6:2000", "5:2000"]


def test_mbeir_duplicate_did_is_fatal(tmp_path: Path) -> None:
    root = write_mbeir_fixture(tmp_path / "mbeir")
    pool = root / "cand_pool/global/mbeir_union_val_cand_pool.jsonl"
    pool.write_text(pool.read_text() + pool.read_text().splitlines()[0] + "\n")
    with pytest.raises(ConversionError, match="duplicate_did"):
        convert("mbeir", tmp_path / "out", root=root, workers=1, max_bad=1.0)


def test_union_train_file_keeps_upsampling(tmp_path: Path) -> None:
    root = write_mbeir_fixture(tmp_path / "mbeir")
    lines = [l for f in sorted((root / "query/train").glob("*.jsonl")) for l in f.read_text().splitlines()]
    union = root / "query/union_train/mbeir_union_up_train.jsonl"
    union.parent.mkdir(parents=True)
    union.write_text("\n".join(lines + lines[:3]) + "\n")  # the first three queries upsampled x2
    m = convert("mbeir", tmp_path / "out", root=root, splits=["train"], union_train=True, workers=1)
    assert m["counts"]["train"] == {"mscoco": {"0": 12 + 3, "3": 8}, "nights": {"4": 6}, "oven": {"6": 5}}


def test_restart_redoes_only_missing_shards_and_parallel_is_deterministic(tmp_path: Path, monkeypatch) -> None:
    root = write_mbeir_fixture(tmp_path / "mbeir")
    kw = dict(root=root, min_shards_per_source=2)
    one = convert("mbeir", tmp_path / "one", workers=1, **kw)
    calls = []
    real = writer_mod.write_job

    def dying(job, out, max_side):  # the third shard "kills" the run
        calls.append(job.rel)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job, out, max_side)

    monkeypatch.setattr(writer_mod, "write_job", dying)
    with pytest.raises(KeyboardInterrupt):
        convert("mbeir", tmp_path / "two", workers=1, **kw)
    assert not (tmp_path / "two/manifest.json").exists() and len(list((tmp_path / "two").rglob("*.tar"))) == 2
    (tmp_path / "two/pool/test/shard-000001.tar.tmp-123").write_bytes(b"half")  # a half-written shard
    monkeypatch.setattr(writer_mod, "write_job", real)
    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "two").rglob("*.tar")}
    two = convert("mbeir", tmp_path / "two", workers=2, **kw)  # resumes, now on 2 processes
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())
    assert not list((tmp_path / "two").rglob("*.tmp-*"))
    for rel in [r for e in one["sources"].values() for r in e["shards"]]:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()
    assert one["sources"] == two["sources"] and one["bytes"] == two["bytes"]


def test_placeholders() -> None:
    assert neutralize("<|image_1|>\nWhat is it?", True) == ("What is it?", None)
    assert neutralize("<|image_1|>\nRetrieve it.", False) == ("Retrieve it.", "placeholder_without_image")
    assert neutralize("Compare <|image_1|> with this.", True) == (f"Compare {IMAGE_MARKER} with this.", None)
    assert render_placeholders("What is it?", True, "llava_next") == "<image>\nWhat is it?"
    assert render_placeholders("What is it?", True, "phi3_v") == "<|image_1|>\nWhat is it?"
    assert render_placeholders("What is it?", True, "mllama") == "<|image|><|begin_of_text|>What is it?"
    assert render_placeholders("What is it?", False, "mllama") == "<|begin_of_text|>What is it?"
    assert render_placeholders(f"Compare {IMAGE_MARKER} it.", True, "qwen2_vl") == \
        "Compare <|vision_start|><|image_pad|><|vision_end|> it."
    assert render_placeholders("Text.", False, "llava_next") == "Text."
