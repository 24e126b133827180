"""MLLM backbone specs: a cheap, picklable description with ``build_processor()`` (data side, in
DataLoader workers) and ``build_encoder()`` (model side, called in ``LightningModule.configure_model``
so the model is created under the strategy), the contract of mmtrain/models/encoder.py.

``MLLMBackbone`` holds everything the three backbones share: loading by hub id or local path with
transformers' Auto classes (``trust_remote_code`` only when set), tiny from-config variants (tests,
toy world), the prompt template, max lengths, padding side, pooling head, bidirectional attention,
the LLM swap, LoRA + trainable projector + frozen vision tower, gradient checkpointing and dtype.
A subclass per backbone (llava_next.py, mllama.py, qwen2_vl.py) fills in the class attributes and
the few hooks below; nothing here branches on the backbone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, PretrainedConfig

from mmtrain.models.config import MLLMConfig, TinyMLLMConfig
from mmtrain.models.encoder import Backbone
from mmtrain.models.lora import apply_lora, freeze_except
from mmtrain.models.mllm.encoder import MLLMEncoder, make_bidirectional, position_ids_from_mask
from mmtrain.models.mllm.processor import MLLMProcessor
from mmtrain.models.mllm.prompts import ImageStyle, build_template
from mmtrain.models.mllm.swap import load_into
from mmtrain.models.pooling import build_pooling

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# The shape is defined once, with the config schemas (mmtrain/models/config.py, light to import).
TinyMLLM = TinyMLLMConfig


class MLLMBackbone(Backbone):
    """Base spec (settings: ``MLLMConfig``). Subclasses set ``schema`` and the class attributes and
    implement ``tiny_config`` and ``hf_processor``."""

    schema = MLLMConfig
    name = "base"
    style = ImageStyle("<image>")
    special_tokens: tuple[str, ...] = ()        # added to an offline tokenizer for tiny models
    projector = ""                              # module path trained in full (peft modules_to_save)
    vision_tower = ""                           # module path of the (frozen) vision encoder
    language_model_prefix = "language_model"    # LoRA targets live under it; the LLM swap loads it
    bos_after_leading_image = False             # mllama: "<|image|><|begin_of_text|>..."
    expands_image_tokens = True                 # the processor repeats the image token per feature
    model_input_keys: tuple[str, ...] = ("input_ids", "attention_mask", "pixel_values")
    per_image_keys: tuple[str, ...] = ()        # tensors with one row per image, not per item
    position_ids_from_mask = True               # False where the model derives them (Qwen2-VL M-RoPE)

    def __init__(self, **settings: Any):
        super().__init__(**settings)
        if self.pretrained is None and (self.tiny is None or self.tokenizer is None):
            raise ValueError(f"{type(self).__name__} needs `pretrained` (hub id or path), or `tiny` + `tokenizer`")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        build_template(self.template, self.instruction_prefix, self.query_prefix)  # fail early on a bad name

    # ------------------------------------------------------------------ per-backbone hooks
    def tiny_config(self, tokenizer) -> PretrainedConfig:
        raise NotImplementedError

    def hf_processor(self, tokenizer) -> Any:
        raise NotImplementedError

    def after_build(self, model: nn.Module) -> None:
        """Adjust a freshly built model (e.g. mllama's closed gates on a tiny model)."""

    def images_argument(self, per_item: list[list]) -> Any:
        """What the HF processor's ``images=`` takes; default: one flat list."""
        return [image for images in per_item for image in images]

    def postprocess_inputs(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return out

    def forward_groups(self, batch: dict[str, Any]) -> list[tuple[torch.Tensor, dict[str, Any]]] | None:
        """Row groups to run as separate forwards (None: the batch in one). mllama needs it."""
        return None

    def model_inputs(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        kwargs = {k: batch[k] for k in self.model_input_keys if k in batch}
        dtype = model.dtype
        for key, value in kwargs.items():  # pixels in the model's precision (bf16 runs)
            if torch.is_floating_point(value):
                kwargs[key] = value.to(dtype)
        if self.position_ids_from_mask:
            kwargs["position_ids"] = position_ids_from_mask(batch["attention_mask"])
        return kwargs

    def split_inputs(self, batch: dict[str, Any], size: int) -> list[dict[str, Any]]:
        """Chunks of at most ``size`` items; per-image tensors follow their items' images."""
        n = batch["input_ids"].shape[0]
        per_item_images = batch["images_per_item"].tolist()
        chunks = []
        for start in range(0, n, size):
            stop = min(start + size, n)
            first, last = sum(per_item_images[:start]), sum(per_item_images[:stop])
            chunk = {}
            for key, value in batch.items():
                if not torch.is_tensor(value) or value.dim() == 0:
                    chunk[key] = value
                elif key in self.per_image_keys:
                    if last > first:  # a chunk without images passes none
                        chunk[key] = value[first:last]
                else:
                    chunk[key] = value[start:stop]
            chunks.append(self.fix_chunk(chunk, batch, first, last))
        return chunks

    def fix_chunk(self, chunk: dict[str, Any], batch: dict[str, Any], first: int, last: int) -> dict:
        """Hook for tensors that are neither per item nor per image (Qwen2-VL's patch rows)."""
        return chunk

    # ------------------------------------------------------------------ builders
    @property
    def is_tiny(self) -> bool:
        return self.pretrained is None

    def load_tokenizer(self):
        tok = AutoTokenizer.from_pretrained(self.tokenizer or self.pretrained,
                                            trust_remote_code=self.trust_remote_code)
        if self.is_tiny:  # an offline tokenizer gets this backbone's image specials
            missing = [t for t in self.special_tokens if t not in tok.get_vocab()]
            if missing:
                tok.add_tokens(missing, special_tokens=True)
        tok.padding_side = self.padding_side
        return tok

    def build_processor(self) -> MLLMProcessor:
        template = build_template(self.template, self.instruction_prefix, self.query_prefix)
        return MLLMProcessor(self.hf_processor(self.load_tokenizer()), self, template)

    def load_model(self) -> nn.Module:
        dtype = DTYPES[self.dtype]
        if not self.is_tiny:
            return AutoModel.from_pretrained(self.pretrained, dtype=dtype, trust_remote_code=self.trust_remote_code,
                                             attn_implementation=self.attn_implementation)
        config = self.tiny_config(self.load_tokenizer())
        config._attn_implementation = self.attn_implementation
        with torch.random.fork_rng(devices=[]):  # the same tiny weights on every rank and run
            torch.manual_seed(self.seed)
            model = AutoModel.from_config(config)
        return model.to(dtype)

    def language_model(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.language_model_prefix)

    def build_encoder(self) -> MLLMEncoder:
        model = self.load_model()
        self.after_build(model)
        swap = self.llm_swap
        if swap is not None:
            load_into(self.language_model(model), swap.source, swap.prefix, swap.revision)
        if self.bidirectional:
            make_bidirectional(self.language_model(model))
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        hidden = model.config.get_text_config().hidden_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + 1)
            pooling = build_pooling(self.pooling, hidden).to(DTYPES[self.dtype])
        if swap is not None and swap.pooling_prefix is not None:
            load_into(pooling, swap.source, swap.pooling_prefix, swap.revision)
        if self.lora is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + 2)
                model = apply_lora(model, self.lora, self.language_model_prefix, [self.projector])
        else:  # no LoRA: the projector alone trains on the model side
            freeze_except(model, [self.projector])
        return MLLMEncoder(model, pooling, self)
