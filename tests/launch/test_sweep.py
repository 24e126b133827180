"""The example sweep (conf/experiment/sweep_mme5_hparams.yaml) with `-m` on the toy world: one
results row per job in the summary table; jobs that diverge fail alone, the others still run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from launch_helpers import run_cli, small

pytestmark = pytest.mark.slow


def test_sweep_writes_one_row_per_job_and_survives_failed_jobs(tmp_path, toy_cache):
    sweep = tmp_path / "sweep"
    # The example's axes, shrunk (2 temperatures x 1 batch size), and a learning rate of 1e30 that
    # diverges at step 2: those jobs fail mid-training (NonFiniteGuard), after wandb has started.
    proc = run_cli(["-m", "+experiment=sweep_mme5_hparams", f"hydra.sweep.dir={sweep}", *small(toy_cache),
                    'hydra.sweeper.params={loss.temperature: "0.02,0.05", data.batch_size: "8"}',
                    "optim.optimizer.lr=1e30,1e-3", "optim.warmup_ratio=0", "trainer.max_steps=3",
                    "callbacks.nonfinite.max_consecutive=2", "data.num_workers=0"], cwd=tmp_path, timeout=600)
    assert proc.returncode == 1, "a failed job makes the sweep's exit status non-zero"
    assert "FloatingPointError" in proc.stderr

    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    expected = [("0.02", "1e+30", "failed"), ("0.02", "0.001", "completed"),
                ("0.05", "1e+30", "failed"), ("0.05", "0.001", "completed")]
    for row, (temperature, lr, status) in zip(rows, expected):
        assert f"loss.temperature={temperature}" in row["overrides"] and f"optim.optimizer.lr={lr}" in row["overrides"]
        assert row["status"] == status, row
        if status == "completed":
            assert row["global_step"] == "3" and 0.0 <= float(row["headline"]) <= 1.0 and not row["error"]
        else:
            assert "NaN/inf for 2 optimizer steps in a row" in row["error"] and not row["headline"]
    table = (sweep / "summary.md").read_text()
    assert table.startswith("4 jobs: 2 completed, 2 failed")
    assert "| job | loss.temperature | optim.optimizer.lr | status |" in table

    # Every job logged into its own wandb run: the failed job's run was finished, not reused.
    ids = [(sweep / str(j) / "wandb_id").read_text().strip() for j in range(4)]
    assert len(set(ids)) == 4
    for j, run_id in enumerate(ids):
        assert list((sweep / str(j) / "wandb").glob(f"offline-run-*-{run_id}")), f"job {j} has no wandb run"
        assert json.loads((sweep / str(j) / "summary.json").read_text())["status"] == expected[j][2]
