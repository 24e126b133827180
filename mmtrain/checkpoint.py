"""Training checkpoint -> encoder weights: the one loader behind ``stage.init_from``, resume's
completeness check, ``python -m mmtrain.mining``, ``python -m mmtrain.evaluate ckpt=...`` and
``python -m mmtrain.export``.

A checkpoint is one of:
- a Lightning ``.ckpt`` file: the module's ``state_dict``; the encoder is its ``encoder.`` entries;
- a Lightning DeepSpeed checkpoint directory (``last.ckpt/`` as a folder, with its ``latest`` tag):
  the partitioned states are consolidated in memory by DeepSpeed's own ``zero_to_fp32``;
- a plain encoder state dict file (``torch.save(encoder.state_dict())``);
- an ``mmtrain.export`` directory (``mmtrain_export.json``): it also carries its own backbone spec,
  so ``load_export`` builds the encoder from it (``mmtrain.load``, ``evaluate ckpt=<export>``); as a
  weights source (``stage.init_from``) its encoder's state dict is loaded into the configured one.

Every file is read with ``torch.load(weights_only=True)``: a checkpoint is data, never code.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any
from unittest import mock

DEEPSPEED_TAG_FILE = "latest"  # DeepSpeed writes it after the shards: a directory without it is cut off
EXPORT_FILE = "mmtrain_export.json"  # marks an mmtrain.export directory
# An export's spec names its backbone class; a downloaded export is data, so only our own backbone
# families may be instantiated from it (never an arbitrary `_target_` such as `builtins.open`).
TRUSTED_BACKBONE_MODULES = ("mmtrain.models.",)


def is_export(path: str | os.PathLike | None) -> bool:
    return path is not None and (Path(path) / EXPORT_FILE).is_file()


def _export_backbone(path: Path, merged: bool = False) -> Any:
    from hydra.utils import get_class

    meta = json.loads((path / EXPORT_FILE).read_text())
    if merged and "merged" not in meta:
        raise FileNotFoundError(f"{path} has no merged/ (export with merged=True, or write_merged)")
    args = dict(meta["merged"] if merged else meta["backbone"])
    target = str(args.pop("_target_", ""))
    if not target.startswith(TRUSTED_BACKBONE_MODULES):
        raise ValueError(f"{path / EXPORT_FILE} names backbone class {target!r}, which is not one of "
                         f"mmtrain's model families ({', '.join(TRUSTED_BACKBONE_MODULES)}*): refusing to load it")
    for key in ("pretrained", "tokenizer"):  # directory-relative entries
        if args.get(key) and (path / args[key]).exists():
            args[key] = str(path / args[key])
    return get_class(target)(**args)


def load_export(path: str | os.PathLike, merged: bool = False) -> Any:
    """The encoder of an ``mmtrain.export`` directory, built from its own spec, in eval mode."""
    path = Path(path)
    encoder = _export_backbone(path, merged).build_encoder()
    encoder.load_export(path)
    return encoder.eval()


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """A checkpoint a relaunch may load: a torch.save zip whose central directory is intact (a file
    cut off mid-write loses it, since it is written last), or a DeepSpeed checkpoint directory with
    its ``latest`` tag (written after the shards)."""
    path = Path(path)
    if path.is_dir():
        return (path / DEEPSPEED_TAG_FILE).is_file()
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("data.pkl") for name in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def checkpoint_problem(path: str | os.PathLike, what: str = "checkpoint") -> str | None:
    """Why ``path`` cannot be loaded (one line), or None. ``what`` names the setting in the message."""
    path = Path(path)
    if not path.exists():
        hint = (": run the previous stage first (or point stage.init_from at its checkpoint)"
                if what == "stage.init_from" else "")
        return f"{what}={path} does not exist{hint}"
    if is_complete_checkpoint(path) or is_export(path):
        return None
    if path.is_dir():
        return (f"{what}={path} is a directory without a DeepSpeed `{DEEPSPEED_TAG_FILE}` tag: an incomplete "
                "DeepSpeed checkpoint (cut off while saving), or not a checkpoint")
    return f"{what}={path} is an incomplete checkpoint file (empty or cut off while saving)"


class _WeightsOnlyTorch:
    """``torch`` as DeepSpeed's ``zero_to_fp32`` sees it while we consolidate: its ``torch.load`` calls
    pass ``weights_only=False`` (deepspeed 0.19.8, and Lightning's converter does the same); here they
    get ``weights_only=True``."""

    def __getattr__(self, name: str) -> Any:
        import torch
        return getattr(torch, name)

    @staticmethod
    def load(*args: Any, **kwargs: Any) -> Any:
        import torch
        kwargs.pop("weights_only", None)
        return torch.load(*args, weights_only=True, **kwargs)


def _deepspeed_state(path: Path) -> dict[str, Any]:
    """The module's consolidated fp32 state of a DeepSpeed checkpoint directory (ZeRO 1-3), in memory."""
    import torch
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils import zero_to_fp32
    from deepspeed.utils.tensor_fragment import fragment_address

    # The optimizer shards hold these DeepSpeed objects beside the tensors: plain attribute bags, a
    # dataclass and an enum, allowed by name; anything else in the files fails to load.
    allowed = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
    with mock.patch.object(zero_to_fp32, "torch", _WeightsOnlyTorch()), torch.serialization.safe_globals(allowed):
        state = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(path))
    # Lightning < 2.1 saved the module under its wrapper's `_forward_module.` (as its converter strips).
    return {k.removeprefix("_forward_module."): v for k, v in state.items()}


def encoder_weights(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Any]:
    """The encoder's state dict from a checkpoint (any of the module docstring's kinds)."""
    import torch

    problem = checkpoint_problem(path, what)
    if problem:
        raise (FileNotFoundError if not Path(path).exists() else ValueError)(problem)
    path = Path(path)
    if is_export(path):
        return load_export(path).state_dict()
    if path.is_dir():
        state = _deepspeed_state(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    # A Lightning checkpoint holds the whole module; the encoder is its `encoder` attribute.
    if any(k.startswith("encoder.") for k in state):
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    return state


def load_weights(encoder: Any, weights: dict[str, Any], source: str | os.PathLike = "checkpoint") -> Any:
    """Load ``weights`` into ``encoder``. Every trained (``requires_grad``) weight must be there and
    nothing foreign; frozen weights may be absent (DeepSpeed's ``exclude_frozen_parameters``): the
    built encoder already holds them."""
    try:
        missing, unexpected = encoder.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shape mismatches: torch lists each on a line below a header; name the first
        lines = str(e).strip().splitlines()
        raise ValueError(f"{source} does not match the encoder ({type(encoder).__name__}): "
                         f"{lines[min(1, len(lines) - 1)].strip()}") from None
    trained = {n for n, p in encoder.named_parameters() if p.requires_grad}
    lacking = sorted(trained & set(missing))
    if lacking or unexpected:
        raise ValueError(f"{source} does not match the encoder ({type(encoder).__name__}): "
                         f"{len(lacking)} trained weights missing {lacking[:5]}, "
                         f"{len(unexpected)} unexpected {sorted(unexpected)[:5]}")
    return encoder


def load_encoder(backbone: Any, path: str | os.PathLike | None, what: str = "checkpoint") -> Any:
    """``backbone.build_encoder()``, with the weights of the checkpoint at ``path`` when given."""
    encoder = backbone.build_encoder()
    if path:
        load_weights(encoder, encoder_weights(path, what), f"{what}={path}")
    return encoder
