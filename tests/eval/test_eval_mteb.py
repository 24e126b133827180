"""The mteb v2 wrapper on real mteb task definitions (SciFact, MSCOCOT2IRetrieval) over local fixture
data in the layout mteb loads, with hand-computable rankings and the Table 11 instructions."""

from __future__ import annotations

import json
import math

import pytest
from test_eval_mbeir import write_tree
from test_eval_support import fake_context, unit

from mmtrain.eval.benchmarks.mteb_eval import (MIEB_INSTRUCTIONS, MTEB_INSTRUCTIONS, MtebBenchmark,
                                               beir_to_hf_layout, mbeir_pair_to_hf_layout, task_instruction)

pytest.importorskip("mteb")


def write_beir(root):
    (root / "qrels").mkdir(parents=True)
    docs = [("d1", "Alpha", "first passage"), ("d2", "Beta", "second passage"), ("d3", "Gamma", "third passage")]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n"
                                                for q, t in (("q1", "claim one"), ("q2", "claim two"))))
    (root / "qrels/test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t1\n")


def test_table11_instructions():
    assert task_instruction("SciFact") == MTEB_INSTRUCTIONS["SciFact"]
    assert task_instruction("CQADupstackAndroidRetrieval") == MTEB_INSTRUCTIONS["CQADupstack"]
    assert task_instruction("SomeTask", {"query": "own prompt"}) == "own prompt"
    assert len(MTEB_INSTRUCTIONS) == 15 and len(MIEB_INSTRUCTIONS) == 16


def test_text_and_image_task_definitions_on_local_data(tmp_path):
    write_beir(tmp_path / "beir")
    beir_to_hf_layout(tmp_path / "beir", tmp_path / "data" / "SciFact")
    mbeir = write_tree(tmp_path / "mbeir")
    mbeir_pair_to_hf_layout(mbeir, "mscoco", 0, tmp_path / "data" / "MSCOCOT2IRetrieval")
    # q1 matches d1 (rank 1); q2's d3 comes second after d2: nDCG@10 = 1 / log2(3).
    table = {"claim one": unit(1, 0, 0), "Alpha first passage": unit(1, 0, 0), "claim two": unit(0, 1, 0),
             "Beta second passage": unit(0, 1, 0.1), "Gamma third passage": unit(0, 1, 0.5)}
    ctx, bb = fake_context(table, run_dir=tmp_path)
    res = MtebBenchmark(["SciFact", "MSCOCOT2IRetrieval"], data_root=str(tmp_path / "data")).run(ctx)
    scores = res.metrics["tasks"]
    assert scores["SciFact"]["main_score"] == pytest.approx((1 + 1 / math.log2(3)) / 2, abs=1e-4)
    assert scores["MSCOCOT2IRetrieval"]["main_score"] == pytest.approx(1.0)  # colour captions -> colour images
    sci = next(it for it in bb.log if it.text == "claim one")
    assert sci.instruction == MTEB_INSTRUCTIONS["SciFact"] and sci.image is None
    assert next(it for it in bb.log if it.text == "Alpha first passage").instruction is None
    coco_q = next(it for it in bb.log if it.text == "Red thing.")
    assert coco_q.instruction == MIEB_INSTRUCTIONS["MSCOCOT2IRetrieval"]
    assert any(it.modality == "image" and it.image for it in bb.log)  # mteb's PIL images reached the encoder
    assert res.tables[0].rows[0][13] == pytest.approx(100 * scores["SciFact"]["main_score"])  # SciFact column
