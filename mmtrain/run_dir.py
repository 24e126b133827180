"""The run directory and its one owner (NeMo exp_manager's idea, codebase-models.md §2.7).

``RunDir`` is the run layout: every path a run reads or writes is asked of it, and a staged
pipeline's stages find each other's outputs through it (``RUN_OUTPUTS``)::

    <run_dir>/
      .owner.lock         flock'ed by global rank 0 while a launch runs: a second launch into the
                          same directory fails instead of interleaving checkpoints
      owner.json          who holds it (host, pid, SLURM job id): for the error message only
      wandb_id            the wandb run id, written once; every relaunch logs into the same run
      config.yaml         the resolved config of the last launch (train.py)
      checkpoints/last.ckpt   written atomically (mmtrain/lightning/callbacks.py AtomicCheckpointIO)
      mining/table        hard negatives mined at the end of a stage (mining_text/table: the text set's)
      results.json        the final evaluation (mmtrain/eval/report.py)
      summary.json        the finished run's status and metrics (train.py)

    <pipeline_dir>/<stage name>/   one run directory per stage of a pipeline (mmtrain/pipeline.py)
    <pipeline_dir>/pipeline.{md,json}   the stage table

The directory itself comes from the config (``paths.run_dir`` = Hydra's run dir); under SLURM the
sbatch scripts derive it from the job id, so a requeued job finds it again and every rank agrees on
it (launch/slurm/train.sbatch). In the YAML, ``${run_output:mining}`` is this run's and
``${stage_output:rand,negatives}`` a pipeline stage's output (resolvers registered by mmtrain.config).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import IO, Any

from mmtrain.checkpoint import is_complete_checkpoint
from mmtrain.dist import rank_from_env
from mmtrain.io import atomic_write_text

log = logging.getLogger(__name__)

LOCK_FILE = ".owner.lock"
OWNER_FILE = "owner.json"
CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
MINED_TABLE = "table"    # a miner writes <its work_dir>/table (mmtrain/mining/miner.py)
# What a run leaves in its directory, by name: ``RunDir.output(name)``, ``${run_output:name}`` and
# ``${stage_output:stage,name}`` in the YAML all read this one table.
RUN_OUTPUTS = {
    "checkpoints": CHECKPOINT_DIR,                        # the checkpoint callback's dirpath
    "checkpoint": f"{CHECKPOINT_DIR}/{LAST}",
    "mining": "mining",                                   # the multimodal miner's work dir
    "negatives": f"mining/{MINED_TABLE}",                 # ... and the table it writes
    "mining_text": "mining_text",                         # the text set's miner (toy stage 2)
    "text_negatives": f"mining_text/{MINED_TABLE}",
    "config": "config.yaml",
    "results": "results.json",
    "summary": "summary.json",
    "wandb_id": "wandb_id",
}
PIPELINE_REPORT = "pipeline"  # <pipeline_dir>/pipeline.{md,json}


class RunDirBusy(RuntimeError):
    """Another live launch owns this run directory."""


class RunDir:
    """One run directory: ownership, wandb id, the checkpoint to resume from.

    Only global rank 0 owns (locks) the directory and writes the wandb id; every rank can ask for
    the resume checkpoint (they read the same files and agree).
    """

    def __init__(self, path: str | os.PathLike, rank: int | None = None) -> None:
        self.path = Path(path).absolute()
        self.rank = rank_from_env() if rank is None else rank
        self._lock: IO[str] | None = None

    # -- layout ------------------------------------------------------------------------------------
    def output(self, name: str) -> Path:
        """A path the run writes, by its name in ``RUN_OUTPUTS``."""
        return output_path(self.path, name)

    @property
    def checkpoints(self) -> Path:
        return self.output("checkpoints")

    @property
    def last_checkpoint(self) -> Path:
        return self.output("checkpoint")

    @property
    def config_file(self) -> Path:
        return self.output("config")

    @property
    def results_file(self) -> Path:
        return self.output("results")

    @property
    def summary_file(self) -> Path:
        return self.output("summary")

    # -- ownership ---------------------------------------------------------------------------------
    def acquire(self, requeue_wait_s: float = 180.0) -> None:
        """Rank 0: take the directory, or fail with who has it. flock, not a pid file: the kernel
        (or the cluster file system) releases it when the owner dies, kill -9 and node loss included.

        A requeued SLURM job whose earlier run still holds the lock (a lost node's lock lives on
        until the file system's lease expires, ~90 s on NFS) waits up to ``requeue_wait_s``."""
        self.path.mkdir(parents=True, exist_ok=True)
        if self.rank != 0 or self._lock is not None:
            return
        lock = open(self.path / LOCK_FILE, "a+")
        deadline = time.monotonic() + requeue_wait_s
        while True:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if self._same_job_as_owner() and time.monotonic() < deadline:
                    time.sleep(1)
                    continue
                lock.close()
                raise RunDirBusy(f"run directory {self.path} is in use by {self._owner_text()}; wait for that "
                                 "launch to end, or choose another hydra.run.dir") from None
            except OSError as e:  # a file system without flock (some NFS mounts): run without the guard
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                log.warning("cannot lock %s (%s): two launches into this directory would not be stopped",
                            self.path, e)
                break
        self._lock = lock
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                 "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT")}
        atomic_write_text(self.path / OWNER_FILE, json.dumps(owner, indent=1) + "\n")

    def release(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _owner(self) -> dict:
        try:
            return json.loads((self.path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def _same_job_as_owner(self) -> bool:
        job = os.environ.get("SLURM_JOB_ID")
        return bool(job) and self._owner().get("slurm_job_id") == job

    def _owner_text(self) -> str:
        o = self._owner()
        if not o:
            return "another process"
        job = f", SLURM job {o['slurm_job_id']}" if o.get("slurm_job_id") else ""
        return f"pid {o.get('pid')} on {o.get('host')}{job} (since {o.get('since')})"

    # -- wandb -------------------------------------------------------------------------------------
    def wandb_id(self) -> str | None:
        """The run's wandb id: created once by rank 0, read back on every relaunch, so a requeued or
        relaunched run continues the same wandb run (LHT #128). Other ranks log nothing to wandb."""
        path = self.output("wandb_id")
        if path.is_file():
            return path.read_text().strip() or None
        if self.rank != 0:
            return None
        run_id = uuid.uuid4().hex[:8]
        atomic_write_text(path, run_id + "\n")
        return run_id

    # -- resume ------------------------------------------------------------------------------------
    def resume_checkpoint(self) -> Path | None:
        """``checkpoints/last.ckpt`` when complete; otherwise the newest complete checkpoint there
        (never a temporary or a cut-off file); None for a fresh run."""
        if not self.checkpoints.is_dir():
            return None
        last = self.last_checkpoint
        if is_complete_checkpoint(last):
            return last
        if last.exists():
            log.warning("ignoring incomplete checkpoint %s", last)
        others = sorted((p for p in self.checkpoints.glob("*.ckpt") if p != last and is_complete_checkpoint(p)),
                        key=lambda p: p.stat().st_mtime)
        return others[-1] if others else None


def stage_dir(pipeline_dir: str | os.PathLike, stage: str) -> Path:
    """The run directory of one stage of a pipeline."""
    return Path(pipeline_dir) / stage


def output_path(run_dir: str | os.PathLike, name: str) -> Path:
    """``<run_dir>/<RUN_OUTPUTS[name]>`` (relative stays relative, as the config wrote it)."""
    if name not in RUN_OUTPUTS:
        raise KeyError(f"unknown run output {name!r}; one of {sorted(RUN_OUTPUTS)}")
    return Path(run_dir) / RUN_OUTPUTS[name]


def mined_table(work_dir: str | os.PathLike) -> Path:
    """The table a miner with this work dir writes."""
    return Path(work_dir) / MINED_TABLE


def run_output(name: str, *, _root_: Any) -> str:
    """``${run_output:mining}``: an output of this run (under ``paths.run_dir``)."""
    return str(output_path(_root_.paths.run_dir, name))


def stage_output(stage: str, name: str, *, _root_: Any) -> str:
    """``${stage_output:hard,checkpoint}``: an output of another stage of the same pipeline (under
    ``<paths.pipeline_dir>/<stage>``), so a stage run alone finds the previous one's."""
    return str(output_path(stage_dir(_root_.paths.pipeline_dir, stage), name))


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("run_output", run_output, replace=True)
    OmegaConf.register_new_resolver("stage_output", stage_output, replace=True)
