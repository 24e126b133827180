"""The MLLM bi-encoder: HF model (+ LoRA) -> last hidden states -> pooling head -> unit vectors.

The encoder contract (mmtrain/models/encoder.py): ``encode_queries(inputs)`` and
``encode_candidates(inputs)`` return L2-normalised (n, d); the instruction is already in the query
prompt, so both are the same function. The backbone spec supplies the per-backbone pieces
(``model_inputs``, ``split_inputs``); this class has no backbone branches.

Export layout (``save_export``): ``adapter/`` (peft: LoRA + the projector as ``modules_to_save``) or,
without LoRA, ``projector.safetensors``; ``pooling.safetensors`` when the head has weights;
``processor/`` (tokenizer + image processor); ``base/`` only when the base model cannot be fetched
by its hub id (from-config tiny models, a swapped LLM).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from peft import PeftModel, set_peft_model_state_dict
from peft.utils import load_peft_weights
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel

if TYPE_CHECKING:
    from mmtrain.models.mllm.backbone import MLLMBackbone


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens of each row. Without it a left-padded row starts at the
    pad count, so an item's embedding would depend on the longest item of its batch (and GradCache
    chunks would not reproduce full-batch embeddings)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def make_bidirectional(language_model: nn.Module) -> None:
    """Drop the causal mask (NV-Embed, recipes.md §7.3) with transformers' own switch:
    ``config.is_causal = False`` makes the mask builders return a bidirectional padding mask, and
    ``is_causal = False`` on the attention modules stops SDPA from re-imposing causality when that
    mask is skipped (no padding)."""
    language_model.config.is_causal = False
    for module in language_model.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False


class MLLMEncoder(nn.Module):
    def __init__(self, model: nn.Module, pooling: nn.Module, backbone: MLLMBackbone):
        super().__init__()
        self.model = model            # the HF model, or its peft wrapper
        self.pooling = pooling        # part of the state dict and trained (latent attention has weights)
        self.backbone = backbone      # the spec: plain attributes, not a module

    @property
    def base_model(self) -> nn.Module:
        """The HF model under the peft wrapper (LoRA layers injected in place)."""
        get = getattr(self.model, "get_base_model", None)
        return get() if get is not None else self.model

    @property
    def dim(self) -> int:
        return self.base_model.config.get_text_config().hidden_size

    def _pooled(self, inputs: dict[str, Any]) -> torch.Tensor:
        kwargs = self.backbone.model_inputs(self.base_model, inputs)
        hidden = self.model(**kwargs, use_cache=False).last_hidden_state
        pool_mask = inputs.get("pool_mask") if self.backbone.pooling.mask_instruction else None
        return self.pooling(hidden, inputs["attention_mask"], pool_mask)

    def embed(self, inputs: dict[str, Any]) -> torch.Tensor:
        groups = self.backbone.forward_groups(inputs)
        if groups is None:
            emb = self._pooled(inputs)
        else:
            parts = [(rows, self._pooled(sub)) for rows, sub in groups]
            n, d = inputs["input_ids"].shape[0], parts[0][1].shape[-1]
            emb = parts[0][1].new_zeros(n, d)
            for rows, part in parts:
                emb = emb.index_copy(0, rows, part)
        if self.training and torch.is_grad_enabled():
            emb = emb + self._graph_anchor()
        # float32 at least (bf16 runs), float64 stays float64 (exact tests)
        return F.normalize(emb.to(torch.promote_types(emb.dtype, torch.float32)), dim=-1)

    def _graph_anchor(self) -> torch.Tensor:
        """0 x (one entry of every trainable parameter): a text-only batch skips the vision path, so
        the projector (and mllama's cross-attention LoRA) would get no gradient and DDP without
        ``find_unused_parameters`` would fail; with this every trainable parameter is in every
        graph, with an exactly-zero gradient where it was not used (same idea as CLIP_SF's dummy rows).
        """
        params = [p.reshape(-1)[:1] for p in self.parameters() if p.requires_grad]
        return 0.0 * torch.cat(params).sum() if params else torch.zeros(())

    encode_queries = embed
    encode_candidates = embed

    def split_inputs(self, inputs: dict[str, Any], size: int) -> list[dict[str, Any]]:
        """Cut a processor batch into chunks of at most ``size`` items (GradCache)."""
        return self.backbone.split_inputs(inputs, size)

    # ------------------------------------------------------------------ export
    def save_export(self, out: Path) -> tuple[dict[str, Any], list[str]]:
        spec, files = self.backbone.describe(), ["processor", "pooling.safetensors"]
        if isinstance(self.model, PeftModel):
            self.model.save_pretrained(out / "adapter")
            files.append("adapter")
        else:  # no LoRA: the projector is the only trained part of the model
            _save(self.base_model.get_submodule(self.backbone.projector), out / "projector.safetensors")
            files.append("projector.safetensors")
        if not _save(self.pooling, out / "pooling.safetensors"):
            files.remove("pooling.safetensors")
        processor = self.backbone.build_processor()
        processor.save_pretrained(out / "processor")
        if self.backbone.is_tiny or self.backbone.llm_swap is not None:
            base = AutoModel.from_config(self.base_model.config)
            base.load_state_dict(_clean_base_state(self.base_model))
            base.save_pretrained(out / "base")
            processor.save_pretrained(out / "base")
            spec.update(pretrained="base", tiny=None, llm_swap=None)
            files.append("base")
        spec["tokenizer"] = "processor"  # spec["lora"] stays: build_encoder makes the adapter's shape
        return spec, files

    def load_export(self, path: Path) -> None:
        if isinstance(self.model, PeftModel) and (path / "adapter").is_dir():
            result = set_peft_model_state_dict(self.model, load_peft_weights(str(path / "adapter")))
            if result.unexpected_keys:
                raise ValueError(f"{path / 'adapter'}: unexpected {result.unexpected_keys[:5]}")
        elif (path / "projector.safetensors").is_file():
            self.base_model.get_submodule(self.backbone.projector).load_state_dict(
                load_file(str(path / "projector.safetensors")))
        if (path / "pooling.safetensors").is_file():
            self.pooling.load_state_dict(load_file(str(path / "pooling.safetensors")))

    def save_merged(self, out: Path, dtype: torch.dtype) -> dict[str, Any]:
        model = self.model.merge_and_unload() if isinstance(self.model, PeftModel) else self.model
        model.to(dtype).save_pretrained(out)
        self.backbone.build_processor().save_pretrained(out)
        return {**self.backbone.describe(), "pretrained": out.name, "tokenizer": out.name, "tiny": None,
                "llm_swap": None, "lora": None}


def _save(module: nn.Module, path: Path) -> bool:
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    if state:
        save_file(state, str(path))
    return bool(state)


def _clean_base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's own weights from under a peft wrapper: LoRA tensors dropped, the layers'
    ``base_layer`` and the projector's ``original_module`` renamed back."""
    state = {}
    for name, tensor in model.state_dict().items():
        if "lora_" in name or ".modules_to_save." in name:
            continue
        state[name.replace(".base_layer.", ".").replace(".original_module.", ".")] = tensor
    return state
