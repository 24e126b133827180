"""The toy world written in MMEB and Tevatron layouts, converted back, and trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_module

from mmtrain.data.convert import convert
from mmtrain.toy.layouts import write_toy_layout
from mmtrain.toy.world import generate_toy_world
from mmtrain.train import train

SMALL = dict(n_train=20, n_val=6, n_test=6, n_distractors=2, captions_per_image=2, beir_passages=30,
             beir_train=10, beir_test=5, vocab_size=600)
PAIRS = {"toycap": (0, 3), "toyqa": (1, 2), "toysim": (4,), "toyedit": (6, 7, 8)}
TAGS = {0: "t2i", 1: "t2t", 2: "t2it", 3: "i2t", 4: "i2i", 6: "it2t", 7: "it2i", 8: "it2it"}
# MMEB puts the instruction into the query text: an image-only query becomes image+text.
MMEB_TASK = {0: 0, 1: 1, 2: 2, 3: 6, 4: 7, 6: 6, 7: 7, 8: 8}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_toy_world(tmp_path_factory.mktemp("toy") / "world", seed=0, **SMALL)


def test_mmeb_layout_round_trip(world: Path, tmp_path: Path) -> None:
    kw = write_toy_layout("mmeb", world, tmp_path / "mmeb")
    row = pq.read_table(tmp_path / "mmeb/train/toycap_i2t/original-00000-of-00001.parquet").to_pylist()[0]
    assert row["qry"] == "<|image_1|>\nFind a caption describing this everyday image." or \
        row["qry"].startswith("<|image_1|>\n")
    assert row["qry_image_path"].startswith("mbeir_images/toycap_images/train/") and row["neg_text"] == ""
    m = convert(kw.pop("source"), tmp_path / "out", workers=1, min_shards_per_source=2, **kw)
    expected = {split: {f"{ds}_{TAGS[t]}": {str(MMEB_TASK[t]): n} for ds, tasks in PAIRS.items() for t in tasks}
                for split, n in (("train", 20), ("val", 6), ("test", 6))}
    assert m["counts"] == expected and m["bad_input"]["skipped_records"] == 0
    for split in ("val", "test"):
        # Every pool candidate is some row's candidate, but MMEB names candidates by content (no ids):
        # two candidates with the same text and image (a scene's passages can repeat) are one.
        pool = (world / f"mbeir/cand_pool/global/mbeir_union_{split}_cand_pool.jsonl").read_text().splitlines()
        contents = {(c["txt"], c["img_path"]) for c in map(json.loads, pool)}
        assert m["pools"][split]["count"] == len(contents)


def test_tevatron_layout_round_trip(world: Path, tmp_path: Path) -> None:
    kw = write_toy_layout("tevatron", world, tmp_path / "tev")
    first = json.loads((tmp_path / "tev/train.jsonl").read_text().splitlines()[0])
    assert sorted(first) == ["negative_document_ids", "positive_document_ids", "query_id", "query_image", "query_text"]
    m = convert(kw.pop("source"), tmp_path / "out", workers=1, min_shards_per_source=2, **kw)
    assert m["counts"] == {split: {"toy": {str(t): n for t in (0, 1, 2, 3, 4, 6, 7, 8)}}
                           for split, n in (("train", 20), ("val", 6), ("test", 6))}
    stats = json.loads((world / "stats.json").read_text())
    assert {s: m["pools"][s]["count"] for s in ("val", "test")} == \
        {s: stats["mbeir"][s]["pool"]["total"] for s in ("val", "test")}


@pytest.mark.slow
@pytest.mark.parametrize("data", ["toy_mmeb", "toy_tevatron"])
def test_train_on_converted_layout_reports_a_table(data: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with initialize_config_module("mmtrain.conf", version_base="1.3"):
        cfg = compose("config", overrides=[
            f"data={data}", f"paths.cache_dir={tmp_path}/cache", f"paths.run_dir={run}", "logger=csv",
            *[f"data.toy_world.{k}={v}" for k, v in SMALL.items()], "data.samples_per_shard=16",
            "data.min_shards_per_source=2", "data.shuffle_buffer=16", "data.batch_size=16", "data.num_workers=1",
            "data.eval_batch_size=64", "trainer.max_steps=6", "trainer.val_check_interval=3"])
    summary = train(cfg)
    results = json.loads((run / "results.json").read_text())
    pairs = results["pairs"] if "pairs" in results else results["results"]
    assert summary["num_pairs"] == len(pairs) == 8
    assert "| mean" in (run / "results.md").read_text()
