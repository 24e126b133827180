"""Fault tolerance for long runs: atomic checkpoints, a clean stop on signals or a time budget, a
guard against NaN/inf losses, and a per-batch trace for checking resumes.

What Lightning already does is used as is (ModelCheckpoint's schedule, the Trainer's loops and
strategy collectives); each class says what it adds and why Lightning's own piece is not enough.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from mmtrain.io import atomic_path

log = logging.getLogger(__name__)


class RunInterrupted(RuntimeError):
    """Training stopped at a step boundary before ``max_steps``, with ``last.ckpt`` written: the
    same command relaunched in the same run directory continues from there."""

    def __init__(self, reason: str, global_step: int, checkpoint: str | None) -> None:
        super().__init__(f"run interrupted ({reason}) at step {global_step}; checkpoint: {checkpoint}")
        self.reason, self.global_step, self.checkpoint = reason, global_step, checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files appear whole or not at all: written beside the target, fsync'ed, renamed.

    Lightning's own save writes through an fsspec transaction into $TMPDIR and moves the file into
    place; across file systems (node-local /tmp, shared run directory) that move is a copy into the
    final name, so a job killed mid-copy leaves a cut-off ``last.ckpt``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also leaves ``last.ckpt`` at the final step and can save it on demand.

    Lightning saves ``last`` at the end of fit only when nothing was saved during that fit, so a
    finished run's ``last.ckpt`` may be up to ``every_n_train_steps`` old and a relaunch would train
    those steps again. Use ``enable_version_counter=False`` so the name stays ``last.ckpt``.
    """

    @property
    def last_path(self) -> Path:
        return Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"

    def save_last_now(self, trainer: L.Trainer) -> Path:
        """Save ``last.ckpt`` at the current step unless already saved there (every rank calls it)."""
        # `_last_global_step_saved` is ModelCheckpoint's own record of its latest save.
        if self._last_global_step_saved != trainer.global_step or not self.last_path.exists():
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        return self.last_path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and trainer.global_step > 0:
            self.save_last_now(trainer)


def _parse_duration(value: str | float | int | None) -> float | None:
    """Seconds from ``"DD:HH:MM:SS"``, ``"HH:MM:SS"``, ``"MM:SS"`` or a number of seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    seconds = 0.0
    for part, unit in zip(reversed(str(value).split(":")), (1, 60, 3600, 86400)):
        seconds += float(part) * unit
    return seconds


class GracefulStop(Callback):
    """Stop at a step boundary with ``last.ckpt`` saved, on a signal or when this launch's time
    budget is spent, then raise :class:`RunInterrupted`; on SLURM, requeue the job first when the
    stop was asked for ahead of the wall clock (``requeue_signals``, the time budget).

    ``signals``: SLURM sends ``--signal=USR1@<s>`` before the time limit (launch/slurm/*.sbatch)
    and SIGTERM on preemption, ``scancel`` and ``scontrol requeue``; submitit (Hydra's submitit
    launcher) uses USR2. ``max_time``: this launch's budget (``"HH:MM:SS"``), counted from when the
    callback is built, i.e. start-up included. When a launcher had its own handler for the signal
    (submitit's: checkpoint the job object, requeue, exit), it is called after the save, so the
    launcher keeps track of its requeued job.

    Why not Lightning's own handling: its SLURM SIGUSR1 handler saves ``hpc_ckpt_N.ckpt`` from
    inside the signal handler, mid-step and with a barrier, and its SIGTERM handler broadcasts
    inside the handler too; a rank that is waiting in another collective at that moment pairs the
    wrong collectives (lightning #4265, #21404). Here the handlers only set a flag; the decision is
    all-reduced once per optimizer step, so every rank saves and stops after the same step.
    ``Trainer(max_time=...)`` is not used for the budget because its Timer restores the elapsed
    time from the checkpoint (a budget for the whole run, not per launch), and because setting
    ``should_stop`` makes Lightning run a validation pass before stopping.
    """

    def __init__(self, signals: list[str] | tuple[str, ...] = ("SIGUSR1", "SIGUSR2", "SIGTERM"),
                 requeue_signals: list[str] | tuple[str, ...] = ("SIGUSR1",),
                 max_time: str | float | None = None, requeue: bool = True) -> None:
        self.signals = [signal.Signals[s] for s in signals]
        self.requeue_signals = {signal.Signals[s] for s in requeue_signals}
        self.max_time = _parse_duration(max_time)
        self.requeue = requeue
        self._start = time.monotonic()
        self._received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._trainer: L.Trainer | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning registered its handlers just before this hook and restores the pre-fit ones
        # when fit ends; ours replace its handlers for the training loop only.
        self._trainer = trainer
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # Only a flag (and forwarding): no I/O, no collectives inside a signal handler.
        self._received = signal.Signals(signum)
        launcher = self._trainer.strategy.launcher if self._trainer is not None else None
        if launcher is not None and hasattr(launcher, "kill"):
            launcher.kill(signum)  # local DDP: rank 0 started the other ranks and passes it on

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # only between optimizer steps: a checkpoint holds no half-accumulated gradient
        out_of_time = self.max_time is not None and time.monotonic() - self._start >= self.max_time
        if not trainer.strategy.reduce_boolean_decision(self._received is not None or out_of_time, all=False):
            return
        reason = self._received.name if self._received is not None else "time_limit" if out_of_time else "peer"
        checkpoint = _save_last(trainer)
        launcher_handler = self._launcher_handler(self._received)
        if launcher_handler is not None:
            self._restore()
            launcher_handler(self._received, None)  # submitit: requeues on rank 0 and exits
        elif self.requeue and trainer.is_global_zero and (self._received in self.requeue_signals or out_of_time):
            _slurm_requeue()
        raise RunInterrupted(reason, trainer.global_step, checkpoint)

    def _launcher_handler(self, sig: signal.Signals | None) -> Any:
        """The handler a job launcher (not Lightning) had installed for ``sig``, if any."""
        from lightning.pytorch.trainer.connectors.signal_connector import _HandlersCompose

        previous = self._previous.get(sig) if sig is not None else None
        if not callable(previous) or isinstance(previous, _HandlersCompose):
            return None
        return previous


def _save_last(trainer: L.Trainer) -> str | None:
    """``last.ckpt`` at the current step, in the checkpoint callback's directory (every rank calls it)."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, RunCheckpoint):
            return str(cb.save_last_now(trainer))
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            path = Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
            trainer.save_checkpoint(path)
            return str(path)
    rank_zero_warn("GracefulStop: no checkpoint callback, stopping without a checkpoint")
    return None


def _slurm_requeue() -> None:
    """Put this SLURM job back in the queue (same job id, so the same run directory)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode == 0:
        log.info("requeued SLURM job %s", job)
    else:
        log.warning("scontrol requeue %s failed: %s", job, result.stderr.strip())


class NonFiniteGuard(Callback):
    """Skip optimizer steps whose loss or gradients are NaN/inf, with a warning; stop with a clear
    error after ``max_consecutive`` in a row.

    Skipping happens just before the optimizer updates the weights (``on_before_optimizer_step``,
    after backward and DDP's gradient all-reduce): the gradients are dropped (set to None), which
    the optimizers skip entirely, so weights and optimizer state stay as they were. The decision is
    all-reduced, so every rank skips the same steps (one rank stepping alone would desynchronise the
    replicas). The step still counts: ``global_step``, the LR schedule and the data stream move on.
    Lightning has no such option (``training_step`` returning None is refused under DDP). Works for
    manual optimization (GradCache) too; not for DeepSpeed, whose engine owns the gradients. With
    fp16 AMP the grad scaler already skips overflow steps; they are counted here as well.
    """

    def __init__(self, max_consecutive: int = 10) -> None:
        if max_consecutive < 1:
            raise ValueError("max_consecutive must be >= 1")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped = 0
        self._loss_finite = True

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        # Every backward since the last optimizer step (accumulation, GradCache chunks) counts.
        self._loss_finite = self._loss_finite and bool(torch.isfinite(loss.detach()).all())

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = self._loss_finite and (not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()))
        self._loss_finite = True
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            self.consecutive = 0
            return
        optimizer.zero_grad(set_to_none=True)  # the optimizer then leaves every parameter alone
        self.consecutive += 1
        self.skipped += 1
        step = trainer.global_step + 1
        rank_zero_warn(f"non-finite loss or gradients at step {step}: optimizer step skipped "
                       f"({self.consecutive} in a row, {self.skipped} in this launch)")
        pl_module.log("train/skipped_nonfinite", float(self.skipped), rank_zero_only=True)
        if self.consecutive >= self.max_consecutive:
            raise FloatingPointError(
                f"the loss or the gradients were NaN/inf for {self.consecutive} optimizer steps in a row (up to "
                f"step {step}); stopping (the skipped steps left the weights as they were; "
                "checkpoints/last.ckpt, if any, is from before). Lower optim.optimizer.lr, raise "
                "loss.temperature, or check the data; callbacks.nonfinite.max_consecutive sets the limit.")


def batch_digest(batch: Any) -> str:
    """A content hash of every tensor in a (nested) batch, in key order."""
    h = hashlib.sha1()

    def visit(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            h.update(str(tuple(x.shape)).encode())
            h.update(x.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(x, dict):
            for k in sorted(x):
                h.update(str(k).encode())
                visit(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                visit(v)
        elif x is not None and hasattr(x, "items"):  # transformers BatchEncoding / BatchFeature
            visit(dict(x.items()))
        else:
            h.update(repr(x).encode())

    visit(batch)
    return h.hexdigest()


class BatchTrace(Callback):
    """One JSON line per training batch in ``<dirpath>/rank<R>.jsonl``: launch id, global step,
    digest of the batch's tensors. Appended and flushed per line, so a killed run keeps its trace:
    the resume tests compare the batches after a resume with an uninterrupted run's."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.launch = uuid.uuid4().hex[:8]

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        row = {"launch": self.launch, "step": trainer.global_step, "batch_idx": batch_idx,
               "digest": batch_digest(batch)}
        with open(self.dirpath / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


def read_trace(path: str | Path) -> list[dict]:
    """A trace file's rows (a last line cut off by a kill is skipped)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
