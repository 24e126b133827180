"""The encoder contract both model families implement (CLIP_SF: clip_sf.py; MLLM: mllm/), and the one
encode loop that mining, export and evaluation share.

A family is two classes. The *backbone spec* (a ``Backbone``) is cheap and picklable: Hydra builds it
from ``conf/model/*.yaml``; its settings are one schema dataclass (mmtrain/models/config.py), so names,
types and defaults exist once; ``build_processor()`` runs on the data side (DataLoader workers:
``list[Item]`` -> tensors), ``build_encoder()`` on the model side (``LightningModule.configure_model``,
under the strategy); ``describe()`` gives its settings, JSON-ready, so an export can rebuild it.
The *encoder* (``Encoder``, an ``nn.Module``) is what training, GradCache, mining, evaluation and
export call, and all they may call: nothing outside a family reaches into its modules.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from mmtrain.data.collate import IndexedItems, ItemCollator
from mmtrain.data.schema import Item
from mmtrain.models.config import as_schema

Inputs = dict[str, Any]       # a processor's output for a batch of items


class Backbone:
    """Base of the specs: keyword settings (or Hydra's node) checked against ``schema`` (unknown key,
    wrong type, missing value: an error) become attributes. A plain class, not a dataclass: Hydra
    would turn a dataclass argument into a config node."""

    schema: type

    def __init__(self, **settings: Any):
        self.config = as_schema(self.schema, settings)
        for f in fields(self.config):
            if f.name != "_target_":
                setattr(self, f.name, getattr(self.config, f.name))

    def build_processor(self) -> Callable[[list[Item]], Inputs]:
        raise NotImplementedError

    def build_encoder(self) -> Encoder:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """``{"_target_": class path, **settings}``, JSON-ready (export writes it; ``mmtrain.load`` rebuilds)."""
        settings = {k: v for k, v in asdict(self.config).items() if k != "_target_"}
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", **settings}


class Encoder(Protocol):
    """An ``nn.Module``; what training, GradCache, mining, evaluation and export may call."""

    backbone: Backbone        # the spec that built it

    @property
    def dim(self) -> int: ...

    def encode_queries(self, inputs: Inputs) -> torch.Tensor:
        """(n, dim) L2-normalised; the instruction is part of the query inputs."""

    def encode_candidates(self, inputs: Inputs) -> torch.Tensor:
        """(n, dim) L2-normalised."""

    def split_inputs(self, inputs: Inputs, size: int) -> list[Inputs]:
        """A processor batch cut into consecutive chunks of at most ``size`` items (GradCache);
        encoding the chunks and concatenating gives the batch's embeddings."""

    def save_export(self, out: Path) -> tuple[dict[str, Any], list[str]]:
        """Write the trained weights and the processor files into ``out``; return the spec that
        rebuilds this encoder from them (``describe()`` with paths relative to ``out``) and the names
        written. Loading is ``spec.build_encoder()`` then ``load_export(out)``."""

    def load_export(self, path: Path) -> None:
        """Load what ``save_export`` wrote that ``build_encoder`` does not already load."""

    def save_merged(self, out: Path, dtype: torch.dtype) -> dict[str, Any]:
        """``out``: one plain transformers directory (model + processor), trained weights folded
        in, cast to ``dtype``; returns the spec that loads it (paths relative to ``out.parent``)."""


def decode_image(data: bytes | Image.Image) -> Image.Image:
    """An item's image (encoded bytes from the shards, or a PIL image from ``mmtrain.load``) as RGB."""
    return data.convert("RGB") if isinstance(data, Image.Image) else Image.open(io.BytesIO(data)).convert("RGB")


def _to(inputs: Inputs, device: torch.device, dtype: torch.dtype | None) -> Inputs:
    # Floating inputs (pixels) in the weights' precision ("-true" bf16 / fp16 runs).
    return {k: (v.to(device, dtype=dtype) if dtype is not None and v.is_floating_point() else v.to(device))
            if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


@torch.inference_mode()
def encode_items(encoder: Encoder, processor: Callable[[list[Item]], Inputs], items: Sequence[Item], *,
                 query: bool, batch_size: int = 64, device: str | torch.device = "cpu", num_workers: int = 0,
                 autocast: Callable[[], AbstractContextManager] = nullcontext) -> torch.Tensor:
    """(len(items), dim) float32 CPU embeddings, in order: ``encode_queries`` when ``query`` else
    ``encode_candidates``, ``batch_size`` items per forward, the processor in ``num_workers``
    DataLoader workers. The caller sets eval mode."""
    loader = torch.utils.data.DataLoader(IndexedItems(items), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=ItemCollator(processor))
    encode = encoder.encode_queries if query else encoder.encode_candidates
    dtype = next((p.dtype for p in encoder.parameters() if p.is_floating_point()), None)
    out = []
    for batch in loader:
        with autocast():
            out.append(encode(_to(batch["inputs"], torch.device(device), dtype)).float().cpu())
    return torch.cat(out) if out else torch.empty(0, encoder.dim)
