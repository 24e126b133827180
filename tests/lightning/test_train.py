"""End to end: compose -> train(cfg) -> in-loop and final evaluation -> report; resume; DDP; install."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from mmtrain.data.schema import TASKS
from mmtrain.train import train

REPO = Path(__file__).resolve().parents[2]
SMALL_WORLD = ["debug=tiny"]  # the tests' shared small toy world and shards (conf/debug/tiny.yaml)


def compose_small(tmp_path: Path, run_dir: Path, *extra: str):
    with initialize_config_module("mmtrain.conf", version_base="1.3"):
        return compose("config", overrides=[
            f"paths.cache_dir={tmp_path}/cache", f"paths.run_dir={run_dir}", *SMALL_WORLD,
            "data.batch_size=16", "data.num_workers=1", "data.eval_batch_size=64",
            "trainer.max_steps=8", "trainer.val_check_interval=4", "trainer.log_every_n_steps=1",
            "callbacks.checkpoint.every_n_train_steps=4", *extra])


@pytest.mark.slow
def test_train_reports_every_task_and_resumes(tmp_path, caplog):
    run = tmp_path / "run"
    summary = train(compose_small(tmp_path, run))

    results = json.loads((run / "results.json").read_text())
    pairs = results["pairs"] if "pairs" in results else results["results"]
    assert sorted(p["task_id"] for p in pairs) == sorted(TASKS)          # all 8 M-BEIR task types
    assert all(0.0 <= p["recall"]["5"] <= 1.0 for p in pairs)
    assert summary["num_pairs"] == 8 and summary["chance_r5"] < 0.05
    assert (run / "results.md").read_text().count("|") > 40
    assert (run / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["extra"]["global_step"] == 8
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "wandb").glob("offline-run-*")), "wandb must log offline without an API key"
    with open(run / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("val/R@5") for r in rows), "evaluation must run in the training loop"
    assert max(int(r["step"]) for r in rows if r.get("train/loss")) >= 6

    # Relaunch in the same run directory with more steps: continues from last.ckpt.
    caplog.set_level(logging.INFO, logger="mmtrain.train")
    train(compose_small(tmp_path, run, "trainer.max_steps=12"))
    assert any("resuming from" in r.message for r in caplog.records)
    assert json.loads((run / "results.json").read_text())["extra"]["global_step"] == 12
    assert (run / "csv" / "version_0" / "metrics.csv").is_file() and (run / "csv" / "version_1").is_dir()


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300):
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "mmtrain", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.mark.slow
def test_ddp_two_cpu_processes_via_cli(tmp_path):
    """`python -m mmtrain +experiment=toy_clip_sf_ddp_cpu`: two gloo ranks, one run directory."""
    run = tmp_path / "run"
    proc = run_cli(["+experiment=toy_clip_sf_ddp_cpu", f"hydra.run.dir={run}",
                    f"paths.cache_dir={tmp_path}/cache", *SMALL_WORLD, "data.batch_size=8",
                    "trainer.max_steps=4", "trainer.val_check_interval=2", "logger=csv"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["extra"]["world_size"] == 2 and results["extra"]["global_step"] == 4
    assert "| mean" in proc.stdout


@pytest.mark.slow
def test_installed_copy_finds_its_configs(tmp_path):
    """A non-editable install, used from another directory, composes from its packaged conf/."""
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(REPO)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-3000:]
    env = {"PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import mmtrain; print(mmtrain.__file__)"], cwd=tmp_path,
                           env={**os.environ, **env}, capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr
    proc = run_cli(["--cfg", "job"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "name: toy_clip_sf" in proc.stdout and "_target_: mmtrain.models.clip_sf.ClipSFBackbone" in proc.stdout


def test_cpu_threads_leave_cores_to_the_dataloader_workers(tmp_path, monkeypatch):
    from mmtrain.train import cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "devices": 2}, "data": {"num_workers": 1}})
    assert cpu_threads(cfg) == 3                        # 8 cores / 2 processes - 1 worker
    cfg.data.num_workers = 6
    assert cpu_threads(cfg) == 1                        # never below one
    cfg.trainer.accelerator = "gpu"
    assert cpu_threads(cfg) is None
    cfg.trainer.accelerator = "cpu"
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert cpu_threads(cfg) is None                     # the user's setting wins
