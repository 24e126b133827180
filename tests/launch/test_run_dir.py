"""The run directory: one owner, the wandb id, and which checkpoint a relaunch may load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mmtrain.checkpoint import is_complete_checkpoint
from mmtrain.dist import rank_from_env
from mmtrain.lightning.callbacks import AtomicCheckpointIO
from mmtrain.run_dir import RunDir, RunDirBusy

HOLD = ("import sys, time; from mmtrain.run_dir import RunDir; r = RunDir(sys.argv[1], rank=0); r.acquire(); "
        "print('held', flush=True); time.sleep(60)")


@pytest.fixture(autouse=True)
def no_slurm_job(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)


def test_a_requeued_job_waits_for_its_own_earlier_run_to_let_go(tmp_path, monkeypatch):
    """After a lost node the old run's lock can outlive it (NFS lease): the same job id waits."""
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    code = HOLD.replace("time.sleep(60)", "time.sleep(2)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    t0 = time.monotonic()
    run = RunDir(tmp_path, rank=0)
    run.acquire(requeue_wait_s=30)
    assert 0.5 < time.monotonic() - t0 < 30
    run.release()
    holder.wait()
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    monkeypatch.setenv("SLURM_JOB_ID", "79")  # another job: refused at once, naming the holder
    t0 = time.monotonic()
    with pytest.raises(RunDirBusy, match=f"pid {holder.pid} on .*, SLURM job 78"):
        RunDir(tmp_path, rank=0).acquire(requeue_wait_s=30)
    assert time.monotonic() - t0 < 1.0
    holder.wait()


def test_a_second_launch_is_refused_while_the_first_holds_the_directory(tmp_path):
    first = RunDir(tmp_path, rank=0)
    first.acquire()
    with pytest.raises(RunDirBusy, match=f"pid {os.getpid()}"):
        RunDir(tmp_path, rank=0).acquire()
    RunDir(tmp_path, rank=1).acquire()  # other ranks of the same launch never lock
    first.release()
    again = RunDir(tmp_path, rank=0)
    again.acquire()
    again.release()


def test_the_lock_dies_with_its_owner_even_on_kill_9(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirBusy, match=f"pid {holder.pid}"):
            RunDir(tmp_path, rank=0).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    run = RunDir(tmp_path, rank=0)
    run.acquire()  # released by the kernel when the holder died
    run.release()


def test_wandb_id_is_created_once_and_read_back(tmp_path):
    assert RunDir(tmp_path, rank=1).wandb_id() is None  # only rank 0 creates it
    first = RunDir(tmp_path, rank=0).wandb_id()
    assert first and RunDir(tmp_path, rank=0).wandb_id() == first == RunDir(tmp_path, rank=1).wandb_id()


@pytest.mark.parametrize("env, rank", [({}, 0), ({"RANK": "3"}, 3), ({"SLURM_PROCID": "2"}, 2),
                                       ({"LOCAL_RANK": "1"}, 1), ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, 1)])
def test_rank_from_env(monkeypatch, env, rank):
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert rank_from_env() == rank


def save(path, step: int) -> None:
    torch.save({"global_step": step, "state_dict": {"w": torch.full((64, 64), float(step))}}, path)


def test_a_cut_off_checkpoint_is_never_picked(tmp_path):
    run = RunDir(tmp_path, rank=0)
    assert run.resume_checkpoint() is None
    ckpts = run.checkpoints
    ckpts.mkdir()
    save(ckpts / "last.ckpt", 8)
    assert run.resume_checkpoint() == ckpts / "last.ckpt"

    # A kill during a non-atomic write leaves the head of the file: never picked.
    data = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(data[: len(data) // 2])
    assert not is_complete_checkpoint(ckpts / "last.ckpt")
    assert run.resume_checkpoint() is None
    save(ckpts / "step=4.ckpt", 4)
    (ckpts / ".last.ckpt.tmp-123").write_bytes(data)  # a temporary is never a candidate
    assert run.resume_checkpoint() == ckpts / "step=4.ckpt"
    (ckpts / "last.ckpt").write_bytes(b"")
    assert run.resume_checkpoint() == ckpts / "step=4.ckpt"


def test_atomic_checkpoint_io_keeps_the_old_file_when_a_save_dies(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, path)
    before = path.read_bytes()

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_lock_wait_is_not_needed_after_release(tmp_path):
    """Release, then a new owner at once (a relaunch inside the same process: pipelines, sweeps)."""
    t0 = time.monotonic()
    for _ in range(3):
        run = RunDir(tmp_path, rank=0)
        run.acquire()
        run.release()
    assert time.monotonic() - t0 < 1.0


def test_run_layout_names_every_output(tmp_path):
    run = RunDir(tmp_path / "r", rank=0)
    assert run.last_checkpoint == tmp_path / "r" / "checkpoints" / "last.ckpt"
    assert run.output("negatives") == tmp_path / "r" / "mining" / "table"
    assert run.output("text_negatives") == tmp_path / "r" / "mining_text" / "table"
    assert (run.config_file, run.results_file, run.summary_file) == (
        tmp_path / "r" / "config.yaml", tmp_path / "r" / "results.json", tmp_path / "r" / "summary.json")
    with pytest.raises(KeyError, match="unknown run output"):
        run.output("negative")
