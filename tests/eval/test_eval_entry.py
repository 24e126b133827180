"""The evaluation entry end to end (``mmtrain.evaluate``): the toy world through the M-BEIR adapter,
the embedding cache across runs, checkpoint loading, the RoCOCO- and FG-style toy variants, the MLLM
reranker option, mteb through the entry with a tiny CLIP, wandb, and 2 CPU ranks == 1 rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_eval_support import build_tiny_llava

from mmtrain.evaluate import evaluate

SMALL_WORLD = ["data.toy_world.n_train=8", "data.toy_world.n_val=4", "data.toy_world.n_test=10",
               "data.toy_world.n_distractors=4", "data.toy_world.beir_passages=30", "data.toy_world.beir_train=10",
               "data.toy_world.beir_test=8", "data.toy_world.vocab_size=500"]


def compose_eval(tmp: Path, run_dir: Path, *extra: str):
    with initialize_config_module("mmtrain.conf", version_base="1.3"):
        return compose("evaluate", overrides=[f"paths.cache_dir={tmp}/cache", f"paths.run_dir={run_dir}",
                                              *SMALL_WORLD, "encode.batch_size=32", *extra])


def run_files(run_dir: Path) -> dict[str, list[list[str]]]:
    return {p.name: [line.split()[:4] for line in p.read_text().splitlines()] for p in sorted(run_dir.glob("runs/*/*.run"))}


@pytest.mark.slow
def test_toy_world_through_the_entry_cache_and_checkpoint(tmp_path):
    cfg = compose_eval(tmp_path, tmp_path / "run1", "+eval=toy", "eval.write_run_files=true")
    first = evaluate(cfg)
    out = json.loads((tmp_path / "run1/results.json").read_text())
    assert out["benchmark"] == "toy" and {"local", "global"} <= set(out["metrics"]["pools"])
    assert len(out["metrics"]["pools"]["global"]["pairs"]) == 8  # the toy world's 8 (dataset, task) pairs
    assert out["extra"]["stats"]["cache_hits"] == 0 and out["extra"]["stats"]["encoded_items"] > 0
    for name in ("results.md", "results.png", "global/results.json", "local/results.png", "eval_results.tsv"):
        assert (tmp_path / "run1" / name).is_file(), name
    assert "Avg. All" in (tmp_path / "run1/results.md").read_text()

    # Same model and data: a second run encodes nothing and agrees.
    second = evaluate(compose_eval(tmp_path, tmp_path / "run2", "+eval=toy", "eval.write_run_files=true"))
    stats = json.loads((tmp_path / "run2/results.json").read_text())["extra"]["stats"]
    assert stats["encoded_items"] == 0 and stats["cache_misses"] == 0 and first == second
    assert run_files(tmp_path / "run1") == run_files(tmp_path / "run2")

    # A training checkpoint (Lightning layout, read with weights_only=True) of a seed-1 model, in a run
    # directory whose config.yaml names the backbone: the entry needs only ckpt=.
    cfg1 = compose_eval(tmp_path, tmp_path / "unused", "+eval=toy", "seed=1")
    backbone = instantiate(cfg1.model)
    torch.manual_seed(1)
    enc = backbone.build_encoder()
    train_run = tmp_path / "train_run"
    (train_run / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in enc.state_dict().items()}, "global_step": 3},
               train_run / "checkpoints/last.ckpt")
    (train_run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(
        {"model": OmegaConf.to_container(cfg1.model, resolve=True)})))
    ck = evaluate(compose_eval(tmp_path, tmp_path / "run3", "+eval=toy", "eval.pools=[global]",
                               f"ckpt={train_run}/checkpoints/last.ckpt", "model.tiny.hidden_size=32"))
    ref = evaluate(compose_eval(tmp_path, tmp_path / "run4", "+eval=toy", "eval.pools=[global]", "seed=1",
                                "cache.enabled=false"))
    assert ck == ref  # the run config's backbone (hidden 64), the checkpoint's weights


@pytest.mark.slow
def test_toy_rococo_and_fg_variants_end_to_end(tmp_path):
    evaluate(compose_eval(tmp_path, tmp_path / "rococo", "+eval=toy_rococo", "eval.n_images=24",
                          "eval.options.seeds=[1]", "wandb.enabled=true", "wandb.mode=offline"))
    out = json.loads((tmp_path / "rococo/results.json").read_text())
    assert out["benchmark"] == "toy_rococo"
    assert set(out["metrics"]["i2t"]) == {"clean", "same_concept", "diff_concept", "rand_voca", "danger"}
    assert set(out["metrics"]["t2i"]) == {"clean", "mix_0.9", "patch_0.9"}
    assert out["metrics"]["num_images"] == 24 and out["metrics"]["i2t"]["clean"]["false_rate"] == 0.0
    assert list((tmp_path / "rococo/wandb").glob("offline-run-*")), "wandb logs offline when enabled"
    evaluate(compose_eval(tmp_path, tmp_path / "fg", "+eval=toy_fg", "eval.n_images=20"))
    fg = json.loads((tmp_path / "fg/results.json").read_text())["metrics"]
    assert set(fg["results"]) == {"MSCOCO original test (20 images)", "MSCOCO-FG"}
    assert fg["sizes"]["MSCOCO-FG"][1] > 20 * 4  # ~5 near-duplicate distractors per target


@pytest.mark.slow
def test_reranker_option_and_mteb_through_the_entry(tmp_path):
    llava = build_tiny_llava(tmp_path / "llava")
    base = ["+eval=toy", "eval.pools=[global]", "eval.pairs=[toyedit_task7,toycap_task0]"]
    evaluate(compose_eval(tmp_path, tmp_path / "plain", *base))
    evaluate(compose_eval(tmp_path, tmp_path / "rerank", *base, f"rerank.model={llava}", "rerank.tasks=[7]",
                          "rerank.batch_size=4"))
    out = json.loads((tmp_path / "rerank/results.json").read_text())
    assert out["extra"]["stats"]["encoded_items"] == 0  # the reranking pass reuses the cached embeddings
    reranked = out["metrics"]["pools"]["global_rerank"]["pairs"]
    assert [p["pair"] for p in reranked] == ["toyedit_task7"]  # only the tasks asked for
    assert any(t["title"].startswith("Zero-shot reranking") for t in out["tables"])

    from mmtrain.eval.benchmarks.mteb_eval import beir_to_hf_layout, mbeir_pair_to_hf_layout

    world = tmp_path / "cache/toy_world/seed0"
    beir_to_hf_layout(world / "beir", tmp_path / "mteb_data/SciFact")
    mbeir_pair_to_hf_layout(world / "mbeir", "toycap", 0, tmp_path / "mteb_data/MSCOCOT2IRetrieval")
    evaluate(compose_eval(tmp_path, tmp_path / "mteb", "+eval=mteb", "eval.tasks=[SciFact,MSCOCOT2IRetrieval]",
                          f"eval.data_root={tmp_path}/mteb_data"))
    tasks = json.loads((tmp_path / "mteb/results.json").read_text())["metrics"]["tasks"]
    assert set(tasks) == {"SciFact", "MSCOCOT2IRetrieval"}
    assert all(0.0 <= t["main_score"] <= 1.0 for t in tasks.values())


@pytest.mark.slow
def test_two_cpu_ranks_equal_one(tmp_path):
    args = [f"paths.cache_dir={tmp_path}/cache", *SMALL_WORLD, "+eval=toy", "eval.write_run_files=true",
            "encode.batch_size=8"]
    one = evaluate(compose_eval(tmp_path, tmp_path / "one", "+eval=toy", "eval.write_run_files=true",
                                "encode.batch_size=8", f"cache.dir={tmp_path}/cache_one"))
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "mmtrain.evaluate", *args, f"hydra.run.dir={tmp_path}/two",
                           f"cache.dir={tmp_path}/cache_two", "fabric.devices=2", "fabric.accelerator=cpu",
                           "fabric.strategy=ddp"], cwd=tmp_path, env=env, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = json.loads((tmp_path / "two/results.json").read_text())
    assert two["extra"]["world_size"] == 2 and two["headline"] == one
    assert run_files(tmp_path / "one") == run_files(tmp_path / "two") != {}
    # Each rank encoded half of every list (padded), and the gathered embeddings match 1 rank's.
    n_one = json.loads((tmp_path / "one/results.json").read_text())["extra"]["stats"]["encoded_items"]
    assert abs(two["extra"]["stats"]["encoded_items"] - n_one / 2) <= 9  # one padded row per list at most
    for meta in (tmp_path / "cache_one").rglob("*.json"):
        other = tmp_path / "cache_two" / meta.relative_to(tmp_path / "cache_one")
        a, b = np.load(meta.with_suffix(".npy")), np.load(other.with_suffix(".npy"))
        assert np.allclose(a, b, atol=1e-5), meta.name


@pytest.mark.slow
def test_an_mmtrain_export_is_a_model_too(tmp_path):
    """ckpt=<mmtrain.export directory>: the export's spec and weights, nothing else needed; a tiny
    LLaVA-NeXT encoder exported and evaluated gives what the same encoder gives from its spec."""
    export = pytest.importorskip("mmtrain.export")
    base = ["+eval=toy", "eval.pools=[global]", "eval.pairs=[toycap_task0,toyedit_task8]", "model=llava_next_tiny",
            "cache.enabled=false"]
    ref = evaluate(compose_eval(tmp_path, tmp_path / "spec", *base))
    cfg = compose_eval(tmp_path, tmp_path / "unused", *base)
    torch.manual_seed(cfg.seed)  # the entry seeds the same way before building a from-spec model
    encoder = instantiate(cfg.model).build_encoder()
    export.export(encoder, tmp_path / "export")
    got = evaluate(compose_eval(tmp_path, tmp_path / "exported", *base, f"ckpt={tmp_path}/export"))
    assert got == ref and set(got) >= {"global/headline", "global/modality_acc"}
    spec = json.loads((tmp_path / "exported/results.json").read_text())["extra"]["model"]
    assert spec["_target_"].endswith("LlavaNextBackbone") or "llava" in json.dumps(spec).lower()
