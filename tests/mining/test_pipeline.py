"""The staged toy recipe end to end on a small world: rand -> mine -> hard -> re-mine -> continual."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import initialize_config_module

from mmtrain.mining.table import NegativesTable
from mmtrain.pipeline import run_pipeline

# debug=tiny: the tests' shared small toy world (conf/debug/tiny.yaml: 20 BEIR training queries,
# 10 test queries, 40 passages).
SMALL = ["debug=tiny", "data.batch_size=8", "data.num_workers=0", "trainer.max_steps=4", "trainer.val_check_interval=4",
         "logger=csv", "callbacks.checkpoint.every_n_train_steps=2"]


@pytest.mark.slow
def test_staged_pipeline(tmp_path):
    overrides = [f"paths.cache_dir={tmp_path}/cache", f"paths.output_dir={tmp_path}/out", *SMALL]
    with initialize_config_module("mmtrain.conf", version_base="1.3"):
        stages = run_pipeline(["toy_clip_sf_stage1", "toy_clip_sf_stage2", "toy_clip_sf_stage3"], overrides)
    assert [s["stage"] for s in stages] == ["rand", "hard", "continual"]
    root = tmp_path / "out" / "toy_clip_sf" / "seed0"

    rand = NegativesTable(root / "rand" / "mining" / "table")
    hard = NegativesTable(root / "hard" / "mining" / "table")
    assert rand.meta["stage"] == "rand" and rand.meta["checkpoint"].endswith("last.ckpt")
    assert hard.meta["kept_groups"] == ["C1"] and hard.meta["kept_from"] == str(root / "rand" / "mining" / "table")
    # Re-mining keeps C1 from M_rand exactly; C2 comes from M_hard.
    c1 = lambda t: {q: sorted(n.id for n in v if n.group == "C1") for q, v in t.as_dict().items()}
    assert c1(hard) == c1(rand) and sum(map(len, c1(rand).values())) > 0

    # Stage 2 trained with one mined negative per query; stage 3 started from M_hard's weights.
    hard_cfg = (root / "hard" / "config.yaml").read_text()
    assert "num_negatives: 1" in hard_cfg and str(root / "rand" / "mining" / "table") in hard_cfg
    assert f"init_from: {root / 'hard' / 'checkpoints' / 'last.ckpt'}" in (root / "continual" / "config.yaml").read_text()
    hard_w = torch.load(root / "hard" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    rand_w = torch.load(root / "rand" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    key = "encoder.clip.text_projection.weight"
    assert not torch.equal(hard_w[key], rand_w[key])

    # The text set: mined with M_hard by the positive-aware rule, mixed into stage 3 with its table,
    # and scored (nDCG@10) after every stage.
    text = NegativesTable(root / "hard" / "mining_text" / "table")
    assert text.meta["rule"] == "positive_aware" and len(text) == 20  # beir_train queries
    assert text.meta["pool"]["shard_dir"].endswith("_beir")
    continual_cfg = (root / "continual" / "config.yaml").read_text()
    assert str(root / "hard" / "mining_text" / "table") in continual_cfg and "train_weight: 1.0" in continual_cfg
    for s in stages:
        t = s["results"]["extra"]["text_retrieval"]
        assert t["num_queries"] == 10 and t["corpus_size"] == 40 and 0.0 <= t["ndcg@10"] <= 1.0

    report = (root / "pipeline.md").read_text()
    assert "| Task | Dataset | rand | hard | continual |" in report and "M.A.@1" in report
    assert "Text retrieval, nDCG@10" in report
    assert len(json.loads((root / "pipeline.json").read_text())) == 3
