"""Guards in one process: NaN/inf losses skipped then stopped, a clean stop on a signal or on the
launch's time budget (checkpoint, requeue on SLURM, relaunch continues)."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_module

from launch_helpers import ckpt_step, run_cli, small
from mmtrain.lightning.callbacks import RunInterrupted
from mmtrain.train import build, train


def compose_run(run_dir: Path, cache: Path, *extra: str):
    with initialize_config_module("mmtrain.conf", version_base="1.3"):
        return compose("config", overrides=[*small(cache), f"paths.run_dir={run_dir}", "logger=csv",
                                            "data.batch_size=8", "data.num_workers=0", "eval.final_split=null",
                                            "data.val_split=null", "trainer.val_check_interval=null", *extra])


class Snapshots(L.Callback):
    """The parameters after every optimizer step, by global step."""

    def __init__(self) -> None:
        self.after: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[trainer.global_step] = [p.detach().clone() for p in pl_module.parameters()]


def changed(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return any(not torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.slow
def test_nonfinite_loss_skips_the_step_then_stops(tmp_path, toy_cache):
    cfg = compose_run(tmp_path / "run", toy_cache, "trainer.max_steps=20", "callbacks.nonfinite.max_consecutive=3")
    module, datamodule, trainer = build(cfg)
    nan_calls = {3, 5, 6, 7}  # one isolated NaN, then three in a row
    calls = {"n": 0}
    forward = module.loss.forward

    def poisoned(*args, **kwargs):
        out = forward(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] in nan_calls:
            out.loss = out.loss * float("nan")
        return out

    module.loss.forward = poisoned
    snaps = Snapshots()
    trainer.callbacks.append(snaps)
    with pytest.warns(UserWarning, match="non-finite loss or gradients at step 3: optimizer step skipped"):
        with pytest.raises(FloatingPointError, match=r"NaN/inf for 3 optimizer steps in a row \(up to step 7\)"):
            trainer.fit(module, datamodule=datamodule)
    after = snaps.after
    assert not changed(after[2], after[3]), "the NaN step must leave the weights alone"
    assert changed(after[3], after[4]), "training goes on after an isolated NaN"
    assert not changed(after[4], after[6]), "skipped steps change nothing"
    # Skipped steps still count (the data stream follows global_step); the 7th raised before counting.
    assert trainer.global_step == 6
    assert all(torch.isfinite(p).all() for p in module.parameters())


@pytest.mark.slow
def test_nonfinite_steps_under_ddp_stop_every_rank_together(tmp_path, toy_cache):
    """Two gloo ranks diverging (lr 1e30): both skip the same steps, then both stop with the error
    (Lightning itself refuses a skipped training_step under DDP; a one-sided skip would hang)."""
    proc = run_cli(["+experiment=toy_clip_sf_ddp_cpu", f"hydra.run.dir={tmp_path}/run", *small(toy_cache),
                    "data.batch_size=8", "trainer.max_steps=20", "logger=csv", "optim.optimizer.lr=1e30",
                    "optim.warmup_ratio=0", "callbacks.nonfinite.max_consecutive=2"], cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.count("FloatingPointError: the loss or the gradients were NaN/inf for 2 optimizer steps "
                             "in a row (up to step 3)") == 2, proc.stderr[-3000:]  # one per rank
    assert "non-finite loss or gradients at step 2: optimizer step skipped" in proc.stderr


def fake_scontrol(tmp_path: Path, monkeypatch) -> Path:
    """An `scontrol` on PATH that records its arguments, and a SLURM job id to requeue."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    return calls


class SendAt(L.Callback):
    def __init__(self, step: int, sig: signal.Signals) -> None:
        self.step, self.sig = step, sig

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.sig)


@pytest.mark.slow
@pytest.mark.parametrize("sig, requeued", [(signal.SIGUSR1, True), (signal.SIGTERM, False)])
def test_a_signal_stops_at_the_next_step_with_a_checkpoint(tmp_path, toy_cache, monkeypatch, sig, requeued):
    calls = fake_scontrol(tmp_path, monkeypatch)
    run = tmp_path / "run"
    cfg = compose_run(run, toy_cache, "trainer.max_steps=50")
    module, datamodule, trainer = build(cfg)
    trainer.callbacks.append(SendAt(2, sig))  # after GracefulStop: it sees the flag one step later
    with pytest.raises(RunInterrupted) as err:
        trainer.fit(module, datamodule=datamodule)
    assert err.value.reason == sig.name and err.value.global_step == 3
    assert ckpt_step(run / "checkpoints" / "last.ckpt") == 3
    assert (calls.read_text().split() if calls.exists() else []) == (["requeue", "4242"] if requeued else [])
    assert signal.getsignal(sig) is not None  # handlers restored after fit


@pytest.mark.slow
def test_time_budget_stops_cleanly_and_a_relaunch_continues(tmp_path, toy_cache, monkeypatch, caplog):
    calls = fake_scontrol(tmp_path, monkeypatch)
    run = tmp_path / "run"
    # A budget already spent when training starts: stop after the first step.
    with pytest.raises(RunInterrupted, match=r"time_limit\) at step 1"):
        train(compose_run(run, toy_cache, "trainer.max_steps=4", "callbacks.graceful_stop.max_time=0.001"))
    assert ckpt_step(run / "checkpoints" / "last.ckpt") == 1
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert calls.read_text().split() == ["requeue", "4242"]  # on SLURM the job goes back in the queue

    caplog.set_level(logging.INFO, logger="mmtrain.train")
    summary = train(compose_run(run, toy_cache, "trainer.max_steps=4"))
    assert any(f"resuming from {run}/checkpoints/last.ckpt" in r.message for r in caplog.records)
    assert summary["status"] == "completed" and summary["global_step"] == 4
    assert ckpt_step(run / "checkpoints" / "last.ckpt") == 4

