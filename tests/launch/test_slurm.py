"""launch/slurm/train.sbatch on a real one-node SLURM on localhost (2 tasks on CPU, toy world): a
job completes; a job that gets the pre-timeout USR1 requeues itself, is then requeued from outside
(`scontrol requeue`, SIGTERM) and each time continues from the checkpoint saved on the signal, in the
same run directory and the same wandb run, to the end.

Starts SLURM itself (launch/slurm/local_cluster.sh; installs slurm-wlm and munge with apt-get when
missing) and skips, saying why, only when that is impossible here (not root, no apt-get, no package)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch_helpers import REPO, ckpt_step, small, trace_by_launch

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CLUSTER = REPO / "launch" / "slurm" / "local_cluster.sh"
SBATCH = REPO / "launch" / "slurm" / "train.sbatch"


@pytest.fixture(scope="module")
def slurm() -> None:
    if shutil.which("slurmctld") is None or shutil.which("sbatch") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("SLURM is not installed, and installing it needs root and apt-get "
                        "(apt-get install slurm-wlm munge)")
        install = subprocess.run([str(CLUSTER), "--install"], capture_output=True, text=True, timeout=600)
        if shutil.which("slurmctld") is None:
            pytest.skip(f"apt-get install slurm-wlm munge failed: {install.stderr[-500:]}")
    elif os.geteuid() != 0 and subprocess.run(["scontrol", "ping"], capture_output=True).returncode != 0:
        pytest.skip("SLURM is installed but not running, and starting its daemons needs root")
    start = subprocess.run([str(CLUSTER)], capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stdout + start.stderr


def submit(tmp_path: Path, *overrides: str) -> str:
    # As if submitted from a Python session that used wandb: launch/env.sh must not let the job
    # attach to that session's wandb service (a requeued job then failed with "run ID is in use").
    env = {**os.environ, "PYTHON": sys.executable, "MMTRAIN_HOME": str(REPO), "MMTRAIN_OUTPUT": str(tmp_path / "out"),
           "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "WANDB_SERVICE": "submitting-session-service"}
    proc = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
                           f"--output={tmp_path}/slurm-%j.out", str(SBATCH), *overrides],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(job_id: str, states: set[str], timeout: float, log: Path) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job(job_id)
        if info.get("JobState") in states:
            return info
        if info.get("JobState") in {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}:
            break
        time.sleep(1)
    subprocess.run(["scancel", job_id])
    tail = log.read_text()[-4000:] if log.exists() else "(no log)"
    pytest.fail(f"job {job_id} is {job(job_id).get('JobState')}, expected {states}:\n{tail}")


def test_generic_sbatch_runs_two_ranks_to_completion(slurm, tmp_path, toy_cache):
    job_id = submit(tmp_path, "+experiment=toy_clip_sf_ddp_cpu", *small(toy_cache), "data.batch_size=8",
                    "trainer.max_steps=4", "logger=csv", "eval.final_split=null")
    log = tmp_path / f"slurm-{job_id}.out"
    info = wait_for(job_id, {"COMPLETED"}, 300, log)
    assert info["ExitCode"] == "0:0"
    run = tmp_path / "out" / "slurm" / job_id
    summary = json.loads((run / "summary.json").read_text())
    assert summary | {"status": "completed", "world_size": 2, "global_step": 4} == summary
    assert ckpt_step(run / "checkpoints" / "last.ckpt") == 4
    assert f"mmtrain: job {job_id} (restart 0) on 1 node(s) x 2 task(s): {run}" in log.read_text()


def wait_for_step(job_id: str, trace: Path, step: int, log: Path, timeout: float = 300) -> None:
    """Until the job's current launch has started batch ``step`` (BatchTrace of rank 0)."""
    deadline = time.monotonic() + timeout
    while not (trace.exists() and max(trace_by_launch(trace)[-1], default=-1) >= step):
        state = job(job_id).get("JobState")
        assert time.monotonic() < deadline and state in {"PENDING", "RUNNING"}, f"{state}: {log.read_text()[-3000:]}"
        time.sleep(0.2)


def restart_now(job_id: str, log: Path) -> None:
    """A requeued job waits ~2 minutes (BeginTime) before it may start again; start it now."""
    wait_for(job_id, {"PENDING"}, 120, log)
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)


def test_requeued_job_finishes_from_its_checkpoint_with_the_same_wandb_run(slurm, tmp_path, toy_cache):
    steps = 30
    # No periodic checkpoint: the only ones to resume from are those saved on the signals.
    job_id = submit(tmp_path, "+experiment=toy_clip_sf_ddp_cpu", *small(toy_cache), "data.batch_size=8",
                    f"trainer.max_steps={steps}", "callbacks.checkpoint.every_n_train_steps=1000",
                    "+callbacks.batch_trace._target_=mmtrain.lightning.callbacks.BatchTrace",
                    "+callbacks.batch_trace.dirpath=${paths.run_dir}/trace")
    log, run = tmp_path / f"slurm-{job_id}.out", tmp_path / "out" / "slurm" / job_id
    trace = run / "trace" / "rank0.jsonl"

    # 1. What --signal=USR1@300 does before the time limit: USR1 to the step's tasks (scancel without
    #    -b). The job saves and requeues itself.
    wait_for_step(job_id, trace, 4, log)
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
    restart_now(job_id, log)
    # 2. The acceptance case: requeued from outside (SIGTERM to every task, then back in the queue).
    wait_for_step(job_id, trace, 10, log)
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    restart_now(job_id, log)
    info = wait_for(job_id, {"COMPLETED"}, 300, log)
    assert info["Restarts"] == "2" and info["ExitCode"] == "0:0"

    text = log.read_text()
    assert f"requeued SLURM job {job_id}" in text  # by the job itself, on USR1
    assert f"mmtrain: job {job_id} (restart 2)" in text
    assert text.count(f"resuming from {run}/checkpoints/last.ckpt") == 4  # 2 relaunches x 2 ranks
    first, second, third = trace_by_launch(trace)
    # Each launch continues exactly where the previous one stopped (no batch lost or repeated).
    assert min(first) == 0 and min(second) == max(first) + 1 and min(third) == max(second) + 1
    assert max(first) >= 4 and max(second) >= 10 and max(third) == steps - 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == steps == ckpt_step(run / "checkpoints" / "last.ckpt")
    assert summary["world_size"] == 2
    wandb_id = (run / "wandb_id").read_text().strip()
    runs = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(runs) == 3 and all(name.endswith(f"-{wandb_id}") for name in runs), runs
