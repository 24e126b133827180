"""Shared by the tests in tests/launch: a small toy world, CLI runs, checkpoint and trace reading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
# debug=tiny: the small toy world every test shares (conf/debug/tiny.yaml); then quiet, fine-grained logs.
SMALL_WORLD = ["debug=tiny", "data.eval_batch_size=64", "trainer.log_every_n_steps=1", "callbacks.progress=null",
               "trainer.enable_model_summary=false"]


def small(cache: Path, *extra: str) -> list[str]:
    """Overrides for a small, fast toy run with its data under ``cache``."""
    return [f"paths.cache_dir={cache}", *SMALL_WORLD, *extra]


def cli_env(**extra: str) -> dict[str, str]:
    """This environment for a child run, minus the wandb service an in-process test may have started
    here (wandb keeps its address in WANDB_SERVICE; a child would log through it)."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {**env, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def run_cli(args: list[str], cwd: Path, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmtrain", *args], cwd=cwd, env=cli_env(**env), text=True,
                          capture_output=True, timeout=timeout)


def ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def ckpt_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def trace_by_launch(path: Path) -> list[dict[int, str]]:
    """A BatchTrace file as one {global step: batch digest} per launch, in launch order."""
    from mmtrain.lightning.callbacks import read_trace

    launches: dict[str, dict[int, str]] = {}
    for row in read_trace(path):
        launches.setdefault(row["launch"], {})[row["step"]] = row["digest"]
    return list(launches.values())


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())
