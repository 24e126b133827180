"""mmE5 (``+experiment=mme5``) and its toy variant (``+experiment=toy_mme5``).

The paper's numbers are written here again, from the paper, and the configuration is checked
against them (batch arithmetic, steps, hard negatives, loss); the toy data writers, the toy XTD, the
parts data module and the after-training benchmarks are checked against hand-built inputs.
"""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mmtrain.toy.mme5 import (RESPELL, TOY_LANGUAGES, kth_most_similar, respell, write_toy_hardneg,
                                           write_toy_synthetic)
from mmtrain.data.mix import mixed_train_dir
from mmtrain.data.shards import read_manifest
from mmtrain.data.stream import TrainStream
from mmtrain.toy.world import ensure_toy_world

# ---- mmE5 (arXiv 2502.08468) as printed: App. B.2 and §4.1, Table 3; data sizes from data-formats.md §4, §5.
PAPER_GPUS = 64                     # "64 NVIDIA A100 GPUs, each equipped with 40GB of memory"
PAPER_ACCUMULATION = 4              # "set the gradient accumulation steps to 4"
SCRIPT_PER_DEVICE = 2               # the paper gives none; scripts/train/train.sh
PAPER_LR = 2e-5
PAPER_LORA_RANK = 8
PAPER_HARD_NEGATIVES = 1            # "Each training sample incorporates one hard negative document"
SYNTHETIC_ROWS = 126_177 + 13_823 + 98_040 + 41_960 + 56_185 + 27_988 + 27_656 + 14_090 + 14_081 + 140_000
LABELLED_ROWS = 1_470_000           # intfloat/mmE5-MMEB-hardneg as listed on the Hub
XTD_LANGUAGES = ["it", "es", "ru", "zh", "pl", "tr", "ko"]

SMALL_WORLD = {"n_train": 24, "n_val": 6, "n_test": 8, "n_distractors": 4, "beir_passages": 30,
               "beir_train": 10, "beir_test": 5, "vocab_size": 600}


def mme5_overrides(tmp_path: Path) -> list[str]:
    for name in ("hardneg", "synthetic", "mmeb", "mmeb_images", "xtd", "coco"):
        (tmp_path / name).mkdir(exist_ok=True)
    return [f"data.convert.root={tmp_path}/hardneg", f"data.convert.image_root={tmp_path}/hardneg",
            f"data.parts.synthetic.convert.root={tmp_path}/synthetic",
            f"data.parts.synthetic.convert.image_root={tmp_path}/synthetic",
            f"eval.benchmarks.mmeb.root={tmp_path}/mmeb", f"eval.benchmarks.mmeb.image_dir={tmp_path}/mmeb_images",
            f"eval.benchmarks.xtd.root={tmp_path}/xtd", f"eval.benchmarks.xtd.image_dir={tmp_path}/coco"]


def compose_cfg(overrides: list[str], tmp_path: Path):
    with initialize_config_module("mmtrain.conf", version_base="1.3"):
        return compose("config", overrides=[*overrides, f"paths.run_dir={tmp_path}/run",
                                            f"paths.cache_dir={tmp_path}/cache"])


# ---------------------------------------------------------------- the real experiment
def test_mme5_composes_and_builds_without_weights(tmp_path):
    cfg = compose_cfg(["+experiment=mme5", *mme5_overrides(tmp_path)], tmp_path)
    OmegaConf.resolve(cfg)
    assert cfg.model.pretrained == "meta-llama/Llama-3.2-11B-Vision" and cfg.model.template == "mme5"
    assert cfg.model.pooling.kind == "last" and cfg.model.lora.r == PAPER_LORA_RANK and not cfg.model.lora.use_dora
    assert cfg.model.gradient_checkpointing
    backbone = instantiate(cfg.model)                      # a spec: no weights are read
    assert hasattr(backbone, "build_encoder")
    loss = instantiate(cfg.loss)
    assert loss.hard_negatives == "own" and math.isclose(float(torch.exp(loss.logit_scale)), 1 / 0.02, rel_tol=1e-6)
    assert cfg.optim.optimizer.lr == PAPER_LR and cfg.optim.lr_schedule == "linear"
    data = instantiate(cfg.data, backbone=backbone, seed=cfg.seed)
    # labelled (shard_dir, weight mix_self) + synthetic part, by row count
    assert data.mix == {f"{tmp_path}/cache/shards/mme5_synthetic": 560_000.0} and data.cfg.mix_self == LABELLED_ROWS
    assert data.cfg.convert["source"] == "mme5-hardneg"
    assert data.parts["synthetic"]["convert"]["source"] == "mme5-synthetic"
    assert data.cfg.num_negatives == PAPER_HARD_NEGATIVES and data.cfg.composition == "mixed"
    assert type(instantiate(cfg.strategy)).__name__ == "DeepSpeedStrategy"
    check = instantiate(cfg.callbacks.check_benchmarks)
    assert set(check.benchmarks) == {"mmeb", "xtd"} and check.missing_inputs() == []
    assert check.benchmarks["xtd"].languages == XTD_LANGUAGES    # Table 3's seven languages
    assert cfg.eval.benchmarks.mmeb.subsets is None              # the 36 MMEB tasks


def test_mme5_batch_arithmetic_and_steps_follow_the_paper(tmp_path):
    from mmtrain.preflight import check_batch

    cfg = compose_cfg(["+experiment=mme5", *mme5_overrides(tmp_path)], tmp_path)
    paper_global = PAPER_GPUS * SCRIPT_PER_DEVICE * PAPER_ACCUMULATION
    assert paper_global == 512
    t = cfg.trainer
    assert t.devices * t.num_nodes == PAPER_GPUS and t.accumulate_grad_batches == PAPER_ACCUMULATION
    assert cfg.data.batch_size * t.devices * t.num_nodes * t.accumulate_grad_batches == paper_global
    assert cfg.global_batch_size == paper_global and check_batch(cfg) == []
    # One epoch over both sets (App. B.2) at 512 per optimiser step.
    assert SYNTHETIC_ROWS == 560_000
    assert t.max_steps == math.ceil((LABELLED_ROWS + SYNTHETIC_ROWS) / paper_global) == 3965
    # The check can fail: the layout of one node does not give the paper's batch.
    wrong = compose_cfg(["+experiment=mme5", *mme5_overrides(tmp_path), "trainer.num_nodes=1"], tmp_path)
    assert [p.check for p in check_batch(wrong)] == ["batch"]


def test_mme5_dry_run_is_clean(tmp_path, capsys):
    from mmtrain.preflight import dry_run

    report = dry_run(compose_cfg(["+experiment=mme5", *mme5_overrides(tmp_path)], tmp_path))
    out = capsys.readouterr().out
    assert report["ok"], out
    assert "8 node(s) x 8 device(s) = 64 rank(s)" in out and "2 per device x 64 ranks x 4 accumulation = 512" in out


def test_mme5_refuses_to_start_without_benchmark_paths(tmp_path):
    from mmtrain.preflight import dry_run

    base = [o for o in mme5_overrides(tmp_path) if not o.startswith("eval.benchmarks.xtd")]
    report = dry_run(compose_cfg(["+experiment=mme5", *base], tmp_path), out=lambda *_: None)
    assert not report["ok"] and any("XTD needs" in p["message"] for p in report["problems"])


def test_own_hard_negative_loss_matches_a_hand_written_infonce():
    """Each query sees the batch's positives and exactly its own one hard negative (mmE5 Eq. 1)."""
    cfg_loss = compose_cfg(["+experiment=toy_mme5"], Path("/tmp")).loss
    loss = instantiate(cfg_loss)
    g = torch.Generator().manual_seed(0)
    b, d = 5, 7
    q, p, n = (torch.randn(b, d, generator=g, dtype=torch.float64) for _ in range(3))
    out = loss(q, p, n.view(b, 1, d), negative_mask=torch.ones(b, 1, dtype=torch.bool),
               positive_ids=torch.arange(b), negative_ids=torch.arange(100, 100 + b).view(b, 1),
               query_positive_ids=torch.arange(b).view(b, 1))
    qn, pn, nn_ = F.normalize(q, dim=-1), F.normalize(p, dim=-1), F.normalize(n, dim=-1)
    expected = 0.0
    for i in range(b):
        logits = [float(qn[i] @ pn[j]) / 0.02 for j in range(b)] + [float(qn[i] @ nn_[i]) / 0.02]
        expected += -(logits[i] - math.log(sum(math.exp(x) for x in logits)))
    assert math.isclose(float(out.loss), expected / b, rel_tol=1e-6)  # the scale buffer is float32


# ---------------------------------------------------------------- toy languages and toy data
def test_respell_by_hand():
    text = "A red circle, on navy."
    assert respell(text, "en") == text
    assert respell(text, "rev") == "A der elcric, no yvan."
    assert respell(text, "vowel") == "E rid corcli, un nevy."
    cipher = respell("red circle red", "cipher").split()
    assert cipher[0] == cipher[2] != cipher[1] and all(w.isalpha() and w.islower() for w in cipher)
    assert respell("red, red!", "cipher") == f"{cipher[0]}, {cipher[0]}!"
    with pytest.raises(ValueError, match="unknown toy language"):
        respell(text, "xx")
    assert set(TOY_LANGUAGES) == set(RESPELL)


def test_kth_most_similar_against_brute_force():
    rng = np.random.default_rng(3)
    v = rng.normal(size=(12, 5))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    for k in (1, 3, 11):
        got = kth_most_similar(v, k)
        for i in range(len(v)):
            others = sorted((j for j in range(len(v)) if j != i), key=lambda j: (-float(v[i] @ v[j]), j))
            assert got[i] == others[k - 1]
    with pytest.raises(ValueError):
        kth_most_similar(v, 12)


def _words(text: str) -> Counter:
    import re
    return Counter(re.findall(r"[a-z]+", text.replace("<|image_1|>\n", "").lower()))


def _cosine(a: Counter, b: Counter) -> float:
    dot = sum(a[w] * b[w] for w in a)
    return dot / math.sqrt(sum(x * x for x in a.values()) * sum(x * x for x in b.values()))


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    world = tmp_path_factory.mktemp("mme5_world") / "toy"
    ensure_toy_world(world, seed=0, **SMALL_WORLD)
    return world


def test_toy_hardneg_rows_carry_one_mined_negative(small_world):
    from mmtrain.data.convert import convert

    kwargs = write_toy_hardneg(small_world, small_world / "mme5_hardneg", negative_rank=2)
    assert kwargs["source"] == "mme5-hardneg"
    tables = sorted(Path(kwargs["root"]).glob("*/train-*.parquet"))
    assert len(tables) == 8
    for table in tables:
        rows = pq.read_table(table).to_pylist()
        positives = {(r["pos_text"], r["pos_image_path"]) for r in rows}
        for r in rows:
            neg = (ast.literal_eval(r["neg_text"]), ast.literal_eval(r["neg_image_path"]))  # list literals
            assert len(neg[0]) == len(neg[1]) == 1
            neg = (neg[0][0], neg[1][0])
            assert neg in positives and neg != (r["pos_text"], r["pos_image_path"])
        if table.parent.name == "toyqa_t2t":  # text-only: the 2nd most similar passage by bag of words
            unique = list(dict.fromkeys((r["pos_text"], r["pos_image_path"]) for r in rows))
            checked = 0
            for r in rows:
                mine = _words(r["pos_text"])
                ranked = sorted(((-_cosine(mine, _words(t)), j) for j, (t, _) in enumerate(unique)
                                 if t != r["pos_text"]))
                if ranked[1][0] - ranked[0][0] > 1e-9 and ranked[2][0] - ranked[1][0] > 1e-9:  # no near-tie
                    assert ast.literal_eval(r["neg_text"])[0] == unique[ranked[1][1]][0]
                    checked += 1
            assert checked >= len(rows) // 2
    manifest = convert(**kwargs, out_dir=small_world / "converted", samples_per_shard=64, min_shards_per_source=1,
                       workers=1)
    assert sum(s["count"] for s in manifest["sources"].values()) == 8 * SMALL_WORLD["n_train"]


def test_toy_synthetic_rows(tmp_path):
    kwargs = write_toy_synthetic(tmp_path, tmp_path / "syn", n_scenes=30, seed=1)
    rows = pq.read_table(Path(kwargs["root"]) / "Retrieval" / "Retrieval.parquet").to_pylist()
    assert len(rows) == 60 and Counter(r["modality"] for r in rows) == {"T2I": 30, "I2T": 30}
    assert set(r["language"] for r in rows) <= set(TOY_LANGUAGES)
    for r in rows:
        if r["modality"] == "T2I":
            assert not r["qry_image_path"] and r["pos_image_path"] and r["neg_image_path"]
            assert r["neg_image_path"] != r["pos_image_path"]
            syn = tmp_path / "syn"
            assert (syn / r["pos_image_path"]).read_bytes() != (syn / r["neg_image_path"]).read_bytes()
        else:
            assert r["qry_image_path"] and r["pos_text"] and r["neg_text"] and r["pos_text"] != r["neg_text"]
        if r["language"] == "rev":  # reversing back gives English toy words again
            text = r["qry"].split("\n", 1)[1] if r["modality"] == "T2I" else r["pos_text"]
            assert any(w in respell(text, "rev").split() for w in ("a", "on", "background", "the", "with"))
    again = write_toy_synthetic(tmp_path, tmp_path / "syn2", n_scenes=30, seed=1)
    assert pq.read_table(Path(again["root"]) / "Retrieval" / "Retrieval.parquet").to_pylist() == rows


def test_parts_data_module_mixes_labelled_and_synthetic_with_one_negative_each(small_world, tmp_path):
    from mmtrain.lightning.datamodule import RetrievalDataModule

    write = {"samples_per_shard": 32, "min_shards_per_source": 1, "workers": 1}
    dm = RetrievalDataModule(None, mbeir_root=str(small_world / "mbeir"), shard_dir=str(tmp_path / "labelled"),
                         convert={"toy_layout": "mme5_hardneg", **write}, mix_self=3.0, num_negatives=1,
                         parts={"synthetic": {"shard_dir": str(tmp_path / "synthetic"), "weight": 1.0,
                                              "convert": {"toy_layout": "mme5_synthetic",
                                                          "toy_options": {"n_scenes": 40}, **write}}})
    dm.prepare_data()
    assert read_manifest(tmp_path / "synthetic")["source_family"] == "mme5_synthetic"
    train_dir, weights = mixed_train_dir(dm.shard_dir, dm.mix, dm.cfg.mix_self)
    stream = TrainStream(train_dir, batch_size=50, composition="mixed", weights=weights, num_negatives=1, seed=0)
    examples = [e for _, batch in zip(range(8), stream) for e in batch]
    assert all(len(e.negatives) == 1 and e.negatives[0].id != e.positive.id for e in examples)
    synthetic = sum(e.key.startswith("Retrieval") for e in examples) / len(examples)
    sigma = math.sqrt(0.25 * 0.75 / len(examples))
    assert abs(synthetic - 0.25) < 5 * sigma            # weights 3 : 1
    with pytest.raises(ValueError, match="own shard directory"):
        RetrievalDataModule(None, mbeir_root="m", shard_dir=str(tmp_path / "labelled"),
                        parts={"x": {"shard_dir": str(tmp_path / "labelled"), "weight": 1.0, "convert": {}}})


# ---------------------------------------------------------------- toy XTD and the after-training report
class IdProcessor:
    """Items -> their ids (LazyItems give every caption and image its row index)."""

    def __call__(self, items):
        return {"ids": torch.tensor([item.id for item in items])}


class OracleEncoder(torch.nn.Module):
    """Caption i and image i get the same one-hot vector; with ``shift`` caption i points at image
    i + shift and away from image i (which then ranks last)."""

    def __init__(self, n: int, shift: int = 0):
        super().__init__()
        self.n, self.shift = n, shift
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def encode_candidates(self, inputs):
        return F.one_hot(inputs["ids"] % self.n, self.n).float()

    def encode_queries(self, inputs):
        own = F.one_hot(inputs["ids"] % self.n, self.n).float()
        return own if not self.shift else F.one_hot((inputs["ids"] + self.shift) % self.n, self.n).float() - own


def test_toy_xtd_layout(tmp_path):
    from mmtrain.toy.variants import ensure_variant

    out = ensure_variant("xtd", tmp_path / "xtd", 15, 0)
    names = (out / "XTD10" / "test_image_names.txt").read_text().split()
    assert len(names) == 15 and all((out / "images" / n).is_file() for n in names)
    english = (out / "XTD10" / "test_1kcaptions_en.txt").read_text().splitlines()
    for lang in TOY_LANGUAGES:
        lines = (out / "XTD10" / f"test_1kcaptions_{lang}.txt").read_text().splitlines()
        assert lines == [respell(c, lang) for c in english]


@pytest.mark.parametrize("shift,expected_r1,expected_r10", [(0, 1.0, 1.0), (1, 0.0, 0.0)])
def test_after_training_benchmarks_write_one_report(tmp_path, shift, expected_r1, expected_r10):
    import lightning as L

    from mmtrain.eval.benchmarks.after_training import run_benchmarks

    n = 12
    cfg = OmegaConf.create({
        "name": "probe", "data": {"eval_batch_size": 5},
        "eval": {"final_split": "test", "report": True, "benchmarks": {"xtd": {
            "_target_": "mmtrain.eval.benchmarks.toy_variants.ToyVariantBenchmark", "kind": "xtd",
            "out_dir": str(tmp_path / "xtd"), "n_images": n, "seed": 0}}}})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.md").write_text("## the split's table\n")
    module = SimpleNamespace(encoder=OracleEncoder(n, shift), eval_results={"test": ["a pair"]}, backbone=None)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    headline = run_benchmarks(cfg, run_dir, module, SimpleNamespace(processor=IdProcessor()), trainer)
    assert headline["xtd"]["R@10/mean"] == expected_r10
    saved = json.loads((run_dir / "benchmarks" / "xtd" / "results.json").read_text())
    assert saved["metrics"]["languages"]["cipher"]["R@1"] == expected_r1
    md = (run_dir / "results.md").read_text()
    assert md.startswith("## the split's table") and "Recall@k per toy language" in md


# ---------------------------------------------------------------- end to end
@pytest.mark.slow
def test_toy_xtd_and_toy_mmeb_through_the_evaluation_entry(tmp_path):
    from mmtrain.evaluate import evaluate

    world = [f"data.toy_world.{k}={v}" for k, v in SMALL_WORLD.items()]
    for name, extra in (("toy_xtd", ["eval.n_images=16"]), ("toy_mmeb", [])):
        with initialize_config_module("mmtrain.conf", version_base="1.3"):
            cfg = compose("evaluate", overrides=[f"paths.cache_dir={tmp_path}/cache",
                                                 f"paths.run_dir={tmp_path}/{name}", *world, f"+eval={name}", *extra])
        headline = evaluate(cfg)
        saved = json.loads((tmp_path / name / "results.json").read_text())
        assert saved["benchmark"] == name and saved["headline"] == headline
    assert set(json.loads((tmp_path / "toy_xtd" / "results.json").read_text())["metrics"]["languages"]) == set(
        TOY_LANGUAGES)
    assert len(json.loads((tmp_path / "toy_mmeb" / "results.json").read_text())["metrics"]["tasks"]) == 8


@pytest.mark.slow
def test_toy_mme5_trains_and_reports_mmeb_and_xtd_via_cli(tmp_path):
    run = tmp_path / "run"
    args = ["+experiment=toy_mme5", f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path}/cache", "debug=tiny",
            "data.batch_size=8", "global_batch_size=8", "trainer.max_steps=4", "trainer.log_every_n_steps=1",
            "logger=csv", "data.parts.synthetic.convert.toy_options.n_scenes=24", "eval.benchmarks.xtd.n_images=20"]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mmtrain", *args], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 4
    bench = summary["summary"]["benchmarks"]
    assert {f"R@10/{lang}" for lang in TOY_LANGUAGES} <= set(bench["xtd"]) and "P@1/mean" in bench["mmeb"]
    md = (run / "results.md").read_text()
    assert "Toy MMEB" in md and "Toy XTD" in md and "| cipher" in md
    assert "train/loss" in (run / "csv" / "version_0" / "metrics.csv").read_text()
    assert "synthetic:" in (run / "config.yaml").read_text()
    assert (run / "checkpoints" / "last.ckpt").is_file()
