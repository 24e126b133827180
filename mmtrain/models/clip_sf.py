"""CLIP score fusion (UniIR CLIP_SF): one CLIP, embedding = text embedding + image embedding.

UniIR ``clip_sf.py`` semantics (recipes.md §1): every item (query or candidate) is embedded as
``encode_text(txt) * has_text + encode_image(img) * has_image``, the unnormalised sum of CLIP's
projected embeddings, with a missing part contributing zero. The query's instruction is prepended to
its text (``"{instruction} {query text}"``, so an image-only query still has text); candidates get no
instruction. The vectors are L2-normalised on output (the loss normalises too; idempotent).

A backbone is described by a cheap, picklable *spec* (``ClipSFBackbone``) with two builders:
``build_processor()`` for the data side (runs in DataLoader workers) and ``build_encoder()`` for the
model side (called in ``LightningModule.configure_model``, under the strategy). MLLM backbones follow
the same contract.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import AutoTokenizer, CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig
from transformers.models.clip import CLIPImageProcessorPil

from mmtrain.config import TinyClipConfig
from mmtrain.data.schema import Item


# The shape is defined once, with the config schemas (mmtrain/config.py, light to import at composition).
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
            pil = [Image.open(io.BytesIO(b)).convert("RGB") for _, b in images]
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


class ClipScoreFusion(nn.Module):
    """The CLIP_SF encoder: ``encode_queries`` / ``encode_candidates`` -> unit vectors (n, d)."""

    def __init__(self, clip: CLIPModel):
        super().__init__()
        self.clip = clip
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
        image = _as_tensor(self.clip.get_image_features(pixel_values=inputs["pixel_values"]))
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


def _as_tensor(output: Any) -> torch.Tensor:
    # transformers 5 returns an output object whose projected embedding is `pooler_output`.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipSFBackbone:
    """Spec of a CLIP_SF backbone: a hub id / local path, or a tiny from-scratch shape.

    ``pretrained``: e.g. ``openai/clip-vit-large-patch14`` or a local directory (model, tokenizer
    and image processor are loaded from it). ``tokenizer``: a tokenizer directory for from-scratch
    models (the toy world writes one). ``trust_remote_code`` is passed only when the user sets it.
    A plain class rather than a dataclass: Hydra would turn a dataclass argument into a config node.
    """

    def __init__(self, pretrained: str | None = None, tokenizer: str | None = None,
                 tiny: TinyClip | Mapping | None = None, max_text_length: int = 77,
                 trust_remote_code: bool = False):
        self.pretrained = pretrained
        self.tokenizer = tokenizer
        self.tiny = TinyClip(**tiny) if isinstance(tiny, Mapping) else tiny  # dict or DictConfig
        self.max_text_length = max_text_length
        self.trust_remote_code = trust_remote_code
        if pretrained is None and (self.tiny is None or tokenizer is None):
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
            return ClipScoreFusion(clip)
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
        return ClipScoreFusion(CLIPModel(config))
