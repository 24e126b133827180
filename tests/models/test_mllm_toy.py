"""End to end: ``python -m mmtrain +experiment=toy_llava_next`` trains a tiny LLaVA-Next with LoRA
and GradCache on a small toy world, evaluates it and exports it; the export loads and encodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

SMALL_WORLD = ["debug=tiny"]  # the tests' shared small toy world and shards (conf/debug/tiny.yaml)


@pytest.mark.slow
def test_toy_llava_next_trains_end_to_end_via_cli(tmp_path):
    run = tmp_path / "run"
    args = ["+experiment=toy_llava_next", f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path}/cache", *SMALL_WORLD,
            "data.batch_size=16", "module.chunk_size=6", "data.eval_batch_size=64", "trainer.max_steps=6",
            "trainer.val_check_interval=3", "trainer.log_every_n_steps=1", "logger=csv",
            "+callbacks.export._target_=mmtrain.export.ExportCallback", f"+callbacks.export.dirpath={run}/export",
            f"+callbacks.export.config_path={run}/config.yaml"]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mmtrain", *args], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["extra"]["global_step"] == 6 and "| mean" in proc.stdout
    rows = (run / "csv" / "version_0" / "metrics.csv").read_text()
    assert "train/loss" in rows and "val/R@5" in rows
    assert "mmtrain.models.mllm.LlavaNextBackbone" in (run / "config.yaml").read_text()
    assert "GradCacheRetrievalModule" in (run / "config.yaml").read_text()

    import mmtrain
    embedder = mmtrain.load(run / "export")
    vectors = embedder.encode(["a red circle", ("a blue square", None)], instruction="Find an image.")
    assert vectors.shape == (2, 64) and torch.isfinite(vectors).all()
