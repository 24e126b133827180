"""Logger builders that Lightning does not have as one call."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger


def wandb_has_credentials() -> bool:
    """True when wandb could log online: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_logger(project: str, name: str, save_dir: str, mode: str = "auto", **kwargs) -> WandbLogger:
    """A WandbLogger that never blocks on a missing API key.

    ``mode``: ``online``, ``offline``, ``disabled``, or ``auto`` (= online with credentials, else
    offline; an offline run can be uploaded later with ``wandb sync <run_dir>/wandb/offline-run-*``).
    ``WANDB_MODE`` in the environment wins, as wandb's own convention.
    """
    mode = os.environ.get("WANDB_MODE", mode)
    if mode == "auto":
        mode = "online" if wandb_has_credentials() else "offline"
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=project, name=name, save_dir=save_dir, mode=mode,
                       offline=mode == "offline", log_model=False, **kwargs)
