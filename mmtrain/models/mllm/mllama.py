"""Llama-3.2-Vision / mllama (mmE5's backbone: ``meta-llama/Llama-3.2-11B-Vision``).

The image enters through cross-attention layers, so ``<|image|>`` is one token (no expansion) and
text follows as ``<|image|><|begin_of_text|>...`` (data-formats.md §11). A text-only item in a mixed
batch gets an empty image list: the processor pads its pixels and zeroes its aspect-ratio and
cross-attention masks. The projector is ``multi_modal_projector``; LoRA's default targets include
the cross-attention projections (same names as self-attention).

Text-only items of a mixed batch run as their own forward (``forward_groups``): in transformers'
mllama a text row whose cross-attention mask is all zero still receives the gated cross-attention
output (only the MLP branch is row-masked), so its vector would depend on whether its batch held an
image. (mmE5/VLM2Vec feed such rows dummy pixels and do have that dependence.)

Tiny from-config models: mllama initialises its cross-attention gates (``tanh(gate)`` scales the
cross-attention and its MLP) to zero, so a fresh model ignores the image and the projector gets an
exactly-zero gradient (environment.md §2). A trained checkpoint has learned gates; a tiny model gets
them opened to 1.0 in ``after_build``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoProcessor, MllamaConfig, MllamaProcessor
from transformers.models.mllama import MllamaImageProcessorPil
from transformers.models.mllama.configuration_mllama import MllamaTextConfig, MllamaVisionConfig

from mmtrain.models.config import MllamaSchema
from mmtrain.models.mllm.backbone import MLLMBackbone
from mmtrain.models.mllm.prompts import ImageStyle


class MllamaBackbone(MLLMBackbone):
    schema = MllamaSchema
    name = "mllama"
    style = ImageStyle("<|image|>", "")     # mmE5: "<|image|><|begin_of_text|>{instruction}\n..."
    special_tokens = ("<|image|>", "<|python_tag|>")  # MllamaProcessor looks both up
    projector = "multi_modal_projector"
    vision_tower = "vision_model"                # frozen
    bos_after_leading_image = True
    expands_image_tokens = False
    model_input_keys = ("input_ids", "attention_mask", "pixel_values", "aspect_ratio_ids",
                        "aspect_ratio_mask", "cross_attention_mask")

    def tiny_config(self, tokenizer) -> MllamaConfig:
        t = self.tiny
        vision = MllamaVisionConfig(hidden_size=t.vision_hidden_size, num_hidden_layers=t.vision_layers,
                                    num_global_layers=1, attention_heads=t.vision_heads,
                                    intermediate_size=t.vision_intermediate_size, image_size=t.image_size,
                                    patch_size=t.patch_size, max_num_tiles=self.max_image_tiles,
                                    intermediate_layers_indices=[0], vision_output_dim=2 * t.vision_hidden_size)
        text = MllamaTextConfig(vocab_size=len(tokenizer), hidden_size=t.hidden_size,
                                num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
                                num_key_value_heads=t.num_kv_heads, intermediate_size=t.intermediate_size,
                                cross_attention_layers=[t.num_layers - 1], bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        return MllamaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                            image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"))

    def hf_processor(self, tokenizer) -> MllamaProcessor:
        if not self.is_tiny:
            loaded = AutoProcessor.from_pretrained(self.pretrained, trust_remote_code=self.trust_remote_code)
            return MllamaProcessor(loaded.image_processor, tokenizer)
        s = self.tiny.image_size
        image_processor = MllamaImageProcessorPil(size={"height": s, "width": s},
                                                  max_image_tiles=self.max_image_tiles)
        return MllamaProcessor(image_processor, tokenizer)

    IMAGE_KEYS = ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask")

    def forward_groups(self, batch: dict[str, Any]) -> list[tuple[torch.Tensor, dict[str, Any]]] | None:
        has_image = batch["images_per_item"] > 0
        if "pixel_values" not in batch or bool(has_image.all()):
            return None
        groups = []
        for rows, keep_images in ((has_image.nonzero().flatten(), True), ((~has_image).nonzero().flatten(), False)):
            if len(rows):
                groups.append((rows, {k: v[rows] if torch.is_tensor(v) and v.dim() else v
                                      for k, v in batch.items() if keep_images or k not in self.IMAGE_KEYS}))
        return groups

    def images_argument(self, per_item: list[list]) -> list[list]:
        return per_item  # one (possibly empty) list per item

    def after_build(self, model: nn.Module) -> None:
        if not self.is_tiny:
            return
        for name, param in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                param.data.fill_(1.0)
