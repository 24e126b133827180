"""The MLLM bi-encoder: HF model (+ LoRA) -> last hidden states -> pooling head -> unit vectors.

Same contract as CLIP_SF (mmtrain/models/clip_sf.py): ``encode_queries(inputs)`` and
``encode_candidates(inputs)`` return L2-normalised (n, d); the instruction is already in the query
prompt, so both are the same function. The backbone spec supplies the per-backbone pieces
(``model_inputs``, ``split_inputs``); this class has no backbone branches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

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
