"""Export a trained MLLM encoder for use outside training, and load it back: ``mmtrain.load(path)``.

Layout of an export directory:

    mmtrain_export.json   the backbone spec (class + arguments) and what the directory holds
    config.yaml           the run's resolved config, when given
    adapter/              peft adapter: LoRA + the trained projector (peft ``modules_to_save``)
    pooling.safetensors   the pooling head's weights (latent attention), when it has any
    processor/            tokenizer + image processor (transformers ``save_pretrained``)
    base/                 the base model, only when it cannot be fetched by its hub id: from-config
                          (tiny) models, and models whose LLM was swapped (``write_base``)
    merged/               optional: LoRA and projector folded into the base weights (bf16), a plain
                          transformers model directory (``AutoModel.from_pretrained``) + processor

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
from hydra.utils import get_class
from lightning.pytorch.utilities import rank_zero_only
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from mmtrain.data.schema import Item, modality_of
from mmtrain.models.mllm.encoder import MLLMEncoder

EXPORT_FILE = "mmtrain_export.json"


def _clean_base_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base model's own weights from under a peft wrapper: LoRA tensors dropped, the layers'
    ``base_layer`` and the projector's ``original_module`` renamed back."""
    state = {}
    for name, tensor in model.state_dict().items():
        if "lora_" in name or ".modules_to_save." in name:
            continue
        state[name.replace(".base_layer.", ".").replace(".original_module.", ".")] = tensor
    return state


def export(encoder: MLLMEncoder, out_dir: str | Path, config: Mapping | None = None, merged: bool = False,
           write_base: bool | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone = encoder.backbone
    spec = backbone.describe()
    files: list[str] = []
    if isinstance(encoder.model, PeftModel):
        encoder.model.save_pretrained(out / "adapter")
        files.append("adapter")
    else:  # no LoRA: the projector is the only trained part of the model
        projector = encoder.base_model.get_submodule(backbone.projector)
        save_file({k: v.contiguous() for k, v in projector.state_dict().items()}, str(out / "projector.safetensors"))
        files.append("projector.safetensors")
    pooling = {k: v.contiguous() for k, v in encoder.pooling.state_dict().items()}
    if pooling:
        save_file(pooling, str(out / "pooling.safetensors"))
        files.append("pooling.safetensors")
    processor = backbone.build_processor()
    processor.hf_processor.save_pretrained(out / "processor")
    files.append("processor")
    if write_base if write_base is not None else (backbone.is_tiny or backbone.llm_swap is not None):
        base = AutoModel.from_config(encoder.base_model.config)
        base.load_state_dict(_clean_base_state(encoder.base_model))
        base.save_pretrained(out / "base")
        processor.hf_processor.save_pretrained(out / "base")
        spec.update(pretrained="base", tiny=None, llm_swap=None)
        files.append("base")
    spec["tokenizer"] = "processor"  # spec["lora"] stays: a record of how the adapter was trained
    if config is not None:
        from omegaconf import OmegaConf
        (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(dict(config)), resolve=True))
        files.append("config.yaml")
    meta = {"format": 1, "backbone": spec, "files": files}
    (out / EXPORT_FILE).write_text(json.dumps(meta, indent=2, default=str))
    if merged:
        write_merged(out)
    return out


def _spec_from(path: Path, merged: bool = False) -> Any:
    meta = json.loads((path / EXPORT_FILE).read_text())
    args = dict(meta["backbone"])
    cls = get_class(args.pop("_target_"))
    for key in ("pretrained", "tokenizer"):  # directory-relative entries
        if args.get(key) and (path / args[key]).exists():
            args[key] = str(path / args[key])
    if merged:
        args.update(pretrained=str(path / "merged"), tiny=None, llm_swap=None)
    args["lora"] = None  # the trained LoRA comes from adapter/, not a fresh one
    return cls(**args)


def load_encoder(path: str | Path, merged: bool = False) -> MLLMEncoder:
    """The exported encoder, in eval mode."""
    path = Path(path)
    backbone = _spec_from(path, merged)
    encoder = backbone.build_encoder()
    if not merged and (path / "adapter").is_dir():
        encoder.model = PeftModel.from_pretrained(encoder.model, str(path / "adapter"))
    elif not merged and (path / "projector.safetensors").is_file():
        encoder.base_model.get_submodule(backbone.projector).load_state_dict(
            load_file(str(path / "projector.safetensors")))
    if (path / "pooling.safetensors").is_file():
        encoder.pooling.load_state_dict(load_file(str(path / "pooling.safetensors")))
    return encoder.eval()


def write_merged(path: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """``merged/``: the export's LoRA and projector folded into the base weights, cast to ``dtype``."""
    path = Path(path)
    encoder = load_encoder(path)
    model = encoder.model.merge_and_unload() if isinstance(encoder.model, PeftModel) else encoder.model
    model.to(dtype).save_pretrained(path / "merged")
    encoder.backbone.build_processor().hf_processor.save_pretrained(path / "merged")
    return path / "merged"


class Embedder:
    """``mmtrain.load(path).encode(inputs, instruction=None)`` -> (n, d) unit vectors (float32).

    Inputs: text (str), an image (PIL image, or encoded bytes), a (text, image) pair, a dict with
    ``txt`` / ``img`` (MM-Embed's ``encode`` convention) or an ``Item``. With an instruction the
    inputs are encoded as queries (instruction + content); without, as candidates (content only).
    """

    def __init__(self, encoder: MLLMEncoder, device: str | torch.device = "cpu"):
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

    @torch.no_grad()
    def encode(self, inputs: Iterable[Any], instruction: str | None = None, batch_size: int = 16) -> torch.Tensor:
        items = [self.to_item(x, instruction) for x in inputs]
        out = []
        for start in range(0, len(items), batch_size):
            batch = self.processor(items[start:start + batch_size])
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            out.append(self.encoder.encode_queries(batch).float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.encoder.dim)


def load(path: str | Path, device: str | torch.device = "cpu", merged: bool = False) -> Embedder:
    """Load an export (adapter on its base, or ``merged=True`` for ``merged/``) for encoding."""
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
    """Export a run's checkpoint (Lightning ``.ckpt``, or a DeepSpeed checkpoint directory)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    ckpt = Path(checkpoint) if checkpoint else run_dir / "checkpoints" / "last.ckpt"
    encoder = instantiate(cfg.model).build_encoder()
    if ckpt.is_dir():  # DeepSpeed: consolidate the partitioned states (Lightning's converter)
        import tempfile

        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict
        with tempfile.TemporaryDirectory() as tmp:
            state = convert_zero_checkpoint_to_fp32_state_dict(str(ckpt), f"{tmp}/fp32.ckpt")["state_dict"]
    else:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    weights = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    missing, _ = encoder.load_state_dict(weights, strict=False)
    trained = {n for n, p in encoder.named_parameters() if p.requires_grad}
    if trained & set(missing):
        raise ValueError(f"{ckpt} lacks trained weights: {sorted(trained & set(missing))[:5]}")
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
