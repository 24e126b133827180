"""Export a trained encoder for use outside training, and load it back: ``mmtrain.load(path)``.

Layout of an export directory:

    mmtrain_export.json   the backbone spec (class + arguments, paths relative to the directory), the
                          files the encoder wrote, and the spec of ``merged/`` when there is one
    config.yaml           the run's resolved config, when given
    ...                   what the encoder family writes (``Encoder.save_export``, mmtrain/models/encoder.py):
                          MLLM: adapter/ (LoRA + projector), pooling.safetensors, processor/, base/
                          (tiny or swapped LLM only); CLIP_SF: model/ (CLIP + tokenizer + image processor)
    merged/               optional: trained weights folded into one plain transformers model directory
                          (``AutoModel.from_pretrained``) + processor, bf16

Resume checkpoints are a different thing: Lightning / DeepSpeed write them in their own format
(``checkpoints/``) to continue training; an export is what a user loads. ``python -m mmtrain.export
RUN_DIR OUT [--merged]`` turns a run's last checkpoint into an export.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from mmtrain.checkpoint import EXPORT_FILE, load_export as load_encoder
from mmtrain.data.schema import Item, modality_of
from mmtrain.io import atomic_write_json, atomic_write_text
from mmtrain.models.encoder import Encoder, encode_items


def export(encoder: Encoder, out_dir: str | Path, config: Mapping | None = None, merged: bool = False) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec, files = encoder.save_export(out)
    if config is not None:
        from omegaconf import OmegaConf
        atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(dict(config)), resolve=True))
        files.append("config.yaml")
    atomic_write_json(out / EXPORT_FILE, {"format": 1, "backbone": spec, "files": files}, indent=2, default=str)
    if merged:
        write_merged(out)
    return out




def write_merged(path: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """``merged/``: the export's trained weights folded into one model directory, cast to ``dtype``."""
    path = Path(path)
    meta = json.loads((path / EXPORT_FILE).read_text())
    meta["merged"] = load_encoder(path).save_merged(path / "merged", dtype)
    atomic_write_json(path / EXPORT_FILE, meta, indent=2, default=str)
    return path / "merged"


class Embedder:
    """``mmtrain.load(path).encode(inputs, instruction=None)`` -> (n, d) unit vectors (float32).

    Inputs: text (str), an image (PIL image, or encoded bytes), a (text, image) pair, a dict with
    ``txt`` / ``img`` (MM-Embed's ``encode`` convention) or an ``Item``. With an instruction the
    inputs are encoded as queries (instruction + content); without, as candidates (content only).
    """

    def __init__(self, encoder: Encoder, device: str | torch.device = "cpu"):
        self.encoder = encoder.to(device)
        self.processor = encoder.backbone.build_processor()
        self.device = torch.device(device)

    @staticmethod
    def to_item(x: Any, instruction: str | None) -> Item:
        if isinstance(x, Item):
            return x
        if isinstance(x, Mapping):
            text, image = x.get("txt"), x.get("img")
        elif isinstance(x, tuple):
            text, image = x
        elif isinstance(x, str):
            text, image = x, None
        else:
            text, image = None, x
        return Item(text, image, modality_of(text, image), instruction=instruction)

    def encode(self, inputs: Iterable[Any], instruction: str | None = None, batch_size: int = 16) -> torch.Tensor:
        return encode_items(self.encoder, self.processor, [self.to_item(x, instruction) for x in inputs],
                            query=instruction is not None, batch_size=batch_size, device=self.device)


def load(path: str | Path, device: str | torch.device = "cpu", merged: bool = False) -> Embedder:
    """Load an export (trained weights on their base, or ``merged=True`` for ``merged/``) for encoding."""
    return Embedder(load_encoder(path, merged=merged), device)


class ExportCallback(L.Callback):
    """Export at the end of training (rank 0), e.g. in ``callbacks``:
    ``export: {_target_: mmtrain.export.ExportCallback, dirpath: ${paths.run_dir}/export}``."""

    def __init__(self, dirpath: str, merged: bool = False, config_path: str | None = None):
        self.dirpath = dirpath
        self.merged = merged
        self.config_path = config_path

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        config = None
        if self.config_path and Path(self.config_path).is_file():
            from omegaconf import OmegaConf
            config = OmegaConf.load(self.config_path)
        export(pl_module.encoder, self.dirpath, config=config, merged=self.merged)


def from_run(run_dir: str | Path, out_dir: str | Path, checkpoint: str | None = None, merged: bool = False) -> Path:
    """Export a run's checkpoint (any kind mmtrain/checkpoint.py reads; default its last.ckpt)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mmtrain.checkpoint import load_encoder as load_checkpoint
    from mmtrain.run_dir import output_path
    cfg = OmegaConf.load(output_path(run_dir, "config"))
    ckpt = checkpoint or output_path(run_dir, "checkpoint")
    encoder = load_checkpoint(instantiate(cfg.model), ckpt)
    return export(encoder, out_dir, config=cfg, merged=merged)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a run's checkpoint: adapter + processor + config.")
    parser.add_argument("run_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--checkpoint", default=None, help="default: RUN_DIR/checkpoints/last.ckpt")
    parser.add_argument("--merged", action="store_true", help="also write merged/ (bf16, plain transformers)")
    args = parser.parse_args(argv)
    print(from_run(args.run_dir, args.out_dir, args.checkpoint, args.merged))


if __name__ == "__main__":
    main()
