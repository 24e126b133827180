"""CLIP score fusion (UniIR CLIP_SF): one CLIP, embedding = text embedding + image embedding.

UniIR ``clip_sf.py`` semantics (recipes.md §1): every item (query or candidate) is embedded as
``encode_text(txt) * has_text + encode_image(img) * has_image``, the unnormalised sum of CLIP's
projected embeddings, with a missing part contributing zero. The query's instruction is prepended to
its text (``"{instruction} {query text}"``, so an image-only query still has text); candidates get no
instruction. The vectors are L2-normalised on output (the loss normalises too; idempotent).

The spec (``ClipSFBackbone``) and the encoder (``ClipScoreFusion``) implement the encoder contract
(mmtrain/models/encoder.py). An export is the CLIP model, tokenizer and image processor in one
transformers directory (``model/``), so loading it needs no hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig
from transformers.models.clip import CLIPImageProcessorPil

from mmtrain.data.schema import Item
from mmtrain.models.config import ClipSFConfig, TinyClipConfig
from mmtrain.models.encoder import Backbone, decode_image


# The shape is defined once, with the config schemas (mmtrain/models/config.py, light to import).
TinyClip = TinyClipConfig


class ClipSFProcessor:
    """Turns ``Item``s into CLIP inputs. Picklable; runs in DataLoader workers.

    Output (for n items): ``input_ids``/``attention_mask`` (T, L) for the T items with text and
    ``text_index`` (T,) their positions; ``pixel_values`` (M, 3, S, S) for the M items with an image
    and ``image_index`` (M,). When no item has text (or no image) one dummy row with index -1 is
    added, so both towers always run and DDP sees every parameter in the graph (no
    ``find_unused_parameters``); the model multiplies dummy rows by zero.
    """

    def __init__(self, tokenizer, image_processor, max_text_length: int):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_text_length = max_text_length

    @staticmethod
    def text_of(item: Item) -> str:
        if item.instruction:
            return f"{item.instruction} {item.text or ''}".strip()
        return item.text or ""

    def __call__(self, items: list[Item]) -> dict[str, torch.Tensor]:
        texts = [(i, self.text_of(it)) for i, it in enumerate(items)]
        texts = [(i, t) for i, t in texts if t] or [(-1, "")]
        images = [(i, it.image) for i, it in enumerate(items) if it.image is not None]
        size = self.image_processor.crop_size
        tok = self.tokenizer([t for _, t in texts], padding=True, truncation=True,
                             max_length=self.max_text_length, return_tensors="pt")
        if images:
            pil = [decode_image(b) for _, b in images]
            pixels = self.image_processor(pil, return_tensors="pt")["pixel_values"]
        else:
            pixels = torch.zeros(1, 3, size["height"], size["width"])
            images = [(-1, None)]
        return {
            "input_ids": tok["input_ids"],
            "attention_mask": tok["attention_mask"],
            "text_index": torch.tensor([i for i, _ in texts], dtype=torch.long),
            "pixel_values": pixels,
            "image_index": torch.tensor([i for i, _ in images], dtype=torch.long),
            "num_items": torch.tensor(len(items)),
        }

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)


class ClipScoreFusion(nn.Module):
    """The CLIP_SF encoder: ``encode_queries`` / ``encode_candidates`` -> unit vectors (n, d)."""

    def __init__(self, clip: CLIPModel, backbone: ClipSFBackbone):
        super().__init__()
        self.clip = clip
        self.backbone = backbone      # the spec: plain attributes, not a module
        # The temperature belongs to the loss (fixed or learnable there, initialised from config);
        # CLIP's own logit_scale would be an unused parameter, which DDP rejects.
        clip.logit_scale.requires_grad_(False)

    @property
    def dim(self) -> int:
        return self.clip.config.projection_dim

    def embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        n = int(inputs["num_items"])
        text = _as_tensor(self.clip.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]))
        pixels = inputs["pixel_values"].to(self.clip.dtype)
        image = _as_tensor(self.clip.get_image_features(pixel_values=pixels))
        out = text.new_zeros(n, text.shape[-1])
        for emb, index in ((text, inputs["text_index"]), (image, inputs["image_index"])):
            real = index >= 0
            out = out.index_add(0, index[real], emb[real])
            # Dummy rows: zero contribution, but the tower stays in the autograd graph.
            out = out + 0.0 * emb[~real].sum()
        return F.normalize(out, dim=-1)

    # Queries and candidates share one tower pair; the instruction is already in the query text.
    encode_queries = embed
    encode_candidates = embed

    def split_inputs(self, inputs: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
        """Chunks of items ``start..start+size``: each tower's rows of those items, re-indexed from 0,
        with the processor's dummy row (index -1) where a chunk has no text or no image."""
        n = int(inputs["num_items"])
        chunks = []
        for start in range(0, n, size):
            stop = min(start + size, n)
            chunk = {"num_items": torch.tensor(stop - start)}
            for index_key, keys in (("text_index", ("input_ids", "attention_mask")),
                                    ("image_index", ("pixel_values",))):
                index = inputs[index_key]
                rows = ((index >= start) & (index < stop)).nonzero().flatten()
                if len(rows):
                    chunk[index_key] = index[rows] - start
                else:  # any row will do as the dummy: it is multiplied by zero
                    rows = torch.zeros(1, dtype=torch.long, device=index.device)
                    chunk[index_key] = torch.full_like(rows, -1)
                chunk.update({k: inputs[k][rows] for k in keys})
            chunks.append(chunk)
        return chunks

    def save_export(self, out: Path) -> tuple[dict[str, Any], list[str]]:
        self.clip.save_pretrained(out / "model")
        self.backbone.build_processor().save_pretrained(out / "model")
        return {**self.backbone.describe(), "pretrained": "model", "tokenizer": None, "tiny": None}, ["model"]

    def load_export(self, path: Path) -> None:
        """Nothing: ``model/`` holds every weight and ``build_encoder`` loaded it."""

    def save_merged(self, out: Path, dtype: torch.dtype) -> dict[str, Any]:
        self.clip.to(dtype).save_pretrained(out)
        self.backbone.build_processor().save_pretrained(out)
        return {**self.backbone.describe(), "pretrained": out.name, "tokenizer": None, "tiny": None}


def _as_tensor(output: Any) -> torch.Tensor:
    # transformers 5 returns an output object whose projected embedding is `pooler_output`.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipSFBackbone(Backbone):
    """Spec of a CLIP_SF backbone (settings: ``ClipSFConfig``): a hub id / local path, or a tiny
    from-scratch shape.

    ``pretrained``: e.g. ``openai/clip-vit-large-patch14`` or a local directory (model, tokenizer
    and image processor are loaded from it). ``tokenizer``: a tokenizer directory for from-scratch
    models (the toy world writes one). ``trust_remote_code`` is passed only when the user sets it.
    """

    schema = ClipSFConfig

    def __init__(self, **settings: Any):
        super().__init__(**settings)
        if self.pretrained is None and (self.tiny is None or self.tokenizer is None):
            raise ValueError("ClipSFBackbone needs `pretrained` (hub id or path), or `tiny` + `tokenizer`")

    def _tokenizer(self):
        return AutoTokenizer.from_pretrained(self.tokenizer or self.pretrained,
                                             trust_remote_code=self.trust_remote_code)

    def build_processor(self) -> ClipSFProcessor:
        if self.pretrained is not None:
            image_processor = CLIPImageProcessorPil.from_pretrained(self.pretrained)
        else:
            s = self.tiny.image_size
            image_processor = CLIPImageProcessorPil(size={"shortest_edge": s},
                                                    crop_size={"height": s, "width": s})
        return ClipSFProcessor(self._tokenizer(), image_processor, self.max_text_length)

    def build_encoder(self) -> ClipScoreFusion:
        if self.pretrained is not None:
            clip = CLIPModel.from_pretrained(self.pretrained, trust_remote_code=self.trust_remote_code)
            return ClipScoreFusion(clip, self)
        tok, t = self._tokenizer(), self.tiny
        text = CLIPTextConfig(
            vocab_size=len(tok), hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
            max_position_embeddings=t.max_position_embeddings, projection_dim=t.projection_dim,
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        vision = CLIPVisionConfig(
            hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
            image_size=t.image_size, patch_size=t.patch_size, projection_dim=t.projection_dim)
        config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                            projection_dim=t.projection_dim)
        return ClipScoreFusion(CLIPModel(config), self)

