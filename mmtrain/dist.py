"""Rank and world size, from the process group when there is one, else from the launcher's environment
(torchrun's RANK / WORLD_SIZE, srun's SLURM_PROCID, Lightning's local children's LOCAL_RANK /
NODE_RANK): one place, so every module agrees before and after ``init_process_group``."""

from __future__ import annotations

import os


def _group() -> tuple[int, int] | None:
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else None


def rank_from_env() -> int:
    """Global rank before any process group exists."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    local, node = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("NODE_RANK", 0))
    return 0 if local == 0 and node == 0 else max(1, local)


def world_from_env() -> int:
    # Not SLURM_NTASKS: one process started in an allocation of N tasks is still a world of one.
    return int(os.environ["WORLD_SIZE"]) if os.environ.get("WORLD_SIZE", "").isdigit() else 1


def rank() -> int:
    return (_group() or (rank_from_env(), 0))[0]


def world_size() -> int:
    return (_group() or (0, world_from_env()))[1]


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_global_zero() -> bool:
    return rank() == 0
