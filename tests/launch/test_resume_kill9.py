"""kill -9 of a local 2-process DDP run at a random step, then the same command again: it resumes
from the last complete checkpoint and ends exactly where an uninterrupted run with the same seed
ends (same batches after the resume point, same weights, same metrics)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from launch_helpers import ckpt_step, ckpt_weights, cli_env, results, run_cli, small, trace_by_launch

pytestmark = pytest.mark.slow

STEPS, EVERY = 24, 4


def args(run: Path, cache: Path) -> list[str]:
    return ["+experiment=toy_clip_sf_ddp_cpu", f"hydra.run.dir={run}", *small(cache), "data.batch_size=8",
            f"trainer.max_steps={STEPS}", f"callbacks.checkpoint.every_n_train_steps={EVERY}",
            "trainer.deterministic=true", "logger=csv",
            "+callbacks.batch_trace._target_=mmtrain.lightning.callbacks.BatchTrace",
            f"+callbacks.batch_trace.dirpath={run}/trace"]


def kill_at_step(run: Path, cache: Path, step: int, timeout: float = 240) -> None:
    """Start the run, wait until rank 0 starts batch `step`, kill -9 every process of it."""
    proc = subprocess.Popen([sys.executable, "-m", "mmtrain", *args(run, cache)], cwd=run.parent, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    trace = run / "trace" / "rank0.jsonl"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            launches = trace_by_launch(trace) if trace.exists() else []
            if launches and max(launches[-1]) >= step:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # both ranks (rank 0 started rank 1 in its session)
        proc.wait()


def test_kill_9_then_relaunch_equals_an_uninterrupted_run(tmp_path, toy_cache):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    proc = run_cli(args(reference, toy_cache), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    kill_step = random.Random().randint(EVERY + 1, STEPS - 4)
    print(f"kill -9 at step {kill_step}")
    kill_at_step(killed, toy_cache, kill_step)
    resume_from = ckpt_step(killed / "checkpoints" / "last.ckpt")
    assert EVERY <= resume_from <= kill_step and resume_from % EVERY == 0

    proc = run_cli(args(killed, toy_cache), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"resuming from {killed}/checkpoints/last.ckpt" in proc.stdout + proc.stderr

    for rank in (0, 1):
        [ref] = trace_by_launch(reference / "trace" / f"rank{rank}.jsonl")
        first, resumed = trace_by_launch(killed / "trace" / f"rank{rank}.jsonl")
        assert sorted(ref) == list(range(STEPS))
        assert min(resumed) == resume_from and max(resumed) == STEPS - 1
        assert resumed == {s: ref[s] for s in range(resume_from, STEPS)}, f"rank {rank}: other batches after resume"
        assert first == {s: ref[s] for s in first}, f"rank {rank}: the killed launch differed from the reference"
    assert ckpt_step(killed / "checkpoints" / "last.ckpt") == STEPS
    ref_w, got_w = ckpt_weights(reference / "checkpoints" / "last.ckpt"), ckpt_weights(killed / "checkpoints" / "last.ckpt")
    assert ref_w.keys() == got_w.keys() and all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)
    assert results(killed)["pairs"] == results(reference)["pairs"]
    assert results(killed)["summary"] == results(reference)["summary"]
