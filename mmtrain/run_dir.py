"""The run directory and its one owner (NeMo exp_manager's idea, codebase-models.md §2.7).

A run directory holds everything a relaunch needs to continue the same run::

    <run_dir>/
      .owner.lock         flock'ed by global rank 0 while a launch runs: a second launch into the
                          same directory fails instead of interleaving checkpoints
      owner.json          who holds it (host, pid, SLURM job id): for the error message only
      wandb_id            the wandb run id, written once; every relaunch logs into the same run
      checkpoints/last.ckpt   written atomically (mmtrain/lightning/callbacks.py AtomicCheckpoint)
      summary.json        the finished run's status and metrics (train.py)

The directory itself comes from the config (``paths.run_dir`` = Hydra's run dir); under SLURM the
sbatch scripts derive it from the job id, so a requeued job finds it again and every rank agrees on
it (launch/slurm/train.sbatch).
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
import zipfile
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

LOCK_FILE = ".owner.lock"
OWNER_FILE = "owner.json"
WANDB_ID_FILE = "wandb_id"
CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"


class RunDirBusy(RuntimeError):
    """Another live launch owns this run directory."""


def global_rank_from_env() -> int:
    """This process's global rank before any process group exists: torchrun's RANK, srun's
    SLURM_PROCID, else Lightning's local DDP children (LOCAL_RANK / NODE_RANK set by its launcher)."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    local, node = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("NODE_RANK", 0))
    return 0 if local == 0 and node == 0 else max(1, local)


def atomic_write_text(path: Path, text: str) -> None:
    """Write beside the target, then rename: a reader sees the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def is_complete_checkpoint(path: Path) -> bool:
    """A checkpoint a relaunch may load: a torch.save zip whose central directory is intact (a file
    cut off mid-write loses it, since it is written last), or a DeepSpeed checkpoint directory with
    its ``latest`` tag (written after the shards)."""
    if path.is_dir():
        return (path / "latest").is_file()
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("data.pkl") for name in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


class RunDir:
    """One run directory: ownership, wandb id, the checkpoint to resume from.

    Only global rank 0 owns (locks) the directory and writes the wandb id; every rank can ask for
    the resume checkpoint (they read the same files and agree).
    """

    def __init__(self, path: str | os.PathLike, rank: int | None = None) -> None:
        self.path = Path(path).absolute()
        self.rank = global_rank_from_env() if rank is None else rank
        self._lock: IO[str] | None = None

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

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
        path = self.path / WANDB_ID_FILE
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
        last = self.checkpoints / LAST
        if is_complete_checkpoint(last):
            return last
        if last.exists():
            log.warning("ignoring incomplete checkpoint %s", last)
        others = sorted((p for p in self.checkpoints.glob("*.ckpt") if p != last and is_complete_checkpoint(p)),
                        key=lambda p: p.stat().st_mtime)
        return others[-1] if others else None
