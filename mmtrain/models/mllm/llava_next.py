"""LLaVA-Next (MM-Embed's backbone: ``llava-hf/llava-v1.6-mistral-7b-hf``).

Global view only (MM-Embed App. A.1, ``global_view_only=True``): each image is the base 336 px view,
576 tokens (24 x 24 patches of 14 px), not the any-resolution tiles (up to ~2,900 tokens). Two small
pieces make transformers' LLaVA-Next do that:
- the processor writes the base view's token count per image (``GlobalViewLlavaNextProcessor``
  overrides the one method transformers provides for it, ``replace_image_token``) and keeps only
  ``pixel_values[:, 0]``, the base view the image processor always puts first;
- the encoder computes that view's features (vision tower -> feature layer -> drop CLS ->
  projector) and hands them to the model through its ``mm_encoder_outputs`` argument, so the
  any-resolution packing (which expects all tiles) is skipped.
``global_view_only=False`` runs the stock any-resolution path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoProcessor, CLIPVisionConfig, LlavaNextConfig, LlavaNextProcessor, MistralConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_next import LlavaNextImageProcessorPil

from mmtrain.models.config import LlavaNextSchema
from mmtrain.models.mllm.backbone import MLLMBackbone
from mmtrain.models.mllm.prompts import ImageStyle


class GlobalViewLlavaNextProcessor(LlavaNextProcessor):
    """LLaVA-Next's processor writing only the base view's image tokens."""

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs: Any) -> str:
        height, width = image_inputs["pixel_values"][0][0].shape[-2:]
        count = (height // self.patch_size) * (width // self.patch_size) + self.num_additional_image_tokens
        if self.vision_feature_select_strategy == "default":
            count -= 1  # the CLS feature is dropped
        return self.image_token * count

    def to_dict(self) -> dict[str, Any]:
        # Saved as the stock class, so AutoProcessor loads an export; mmtrain re-wraps it.
        return {**super().to_dict(), "processor_class": LlavaNextProcessor.__name__}


def global_view_features(model: nn.Module, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """Projected features of the base view (n_images, 3, H, W) -> n_images x (tokens, d)."""
    config = model.config
    out = model.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
    layer = config.vision_feature_layer
    layers = [layer] if isinstance(layer, int) else list(layer)
    features = torch.cat([out.hidden_states[i] for i in layers], dim=-1)
    if config.vision_feature_select_strategy == "default":
        features = features[:, 1:]
    return list(model.multi_modal_projector(features))


class LlavaNextBackbone(MLLMBackbone):
    schema = LlavaNextSchema
    name = "llava_next"
    style = ImageStyle("<image>", "\n")     # MM-Embed: "<image>\n<text>"
    special_tokens = ("<image>",)
    projector = "multi_modal_projector"
    vision_tower = "vision_tower"                # frozen
    model_input_keys = ("input_ids", "attention_mask", "pixel_values", "image_sizes")
    per_image_keys = ("pixel_values", "image_sizes")

    def _pinpoints(self) -> list[list[int]]:
        s = self.tiny.image_size
        return self.image_grid_pinpoints or [[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s]]

    def tiny_config(self, tokenizer) -> LlavaNextConfig:
        t = self.tiny
        vision = CLIPVisionConfig(hidden_size=t.vision_hidden_size, intermediate_size=t.vision_intermediate_size,
                                  num_hidden_layers=t.vision_layers, num_attention_heads=t.vision_heads,
                                  image_size=t.image_size, patch_size=t.patch_size)
        text = MistralConfig(hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                             num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
                             num_key_value_heads=t.num_kv_heads, vocab_size=len(tokenizer),
                             pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        return LlavaNextConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                               image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                               image_grid_pinpoints=self._pinpoints(), vision_feature_select_strategy="default",
                               vision_feature_layer=-2)

    def hf_processor(self, tokenizer) -> LlavaNextProcessor:
        cls = GlobalViewLlavaNextProcessor if self.global_view_only else LlavaNextProcessor
        if not self.is_tiny:
            loaded = AutoProcessor.from_pretrained(self.pretrained, trust_remote_code=self.trust_remote_code)
            return cls(image_processor=loaded.image_processor, tokenizer=tokenizer, patch_size=loaded.patch_size,
                       vision_feature_select_strategy=loaded.vision_feature_select_strategy,
                       image_token=loaded.image_token,
                       num_additional_image_tokens=loaded.num_additional_image_tokens)
        s = self.tiny.image_size
        image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                                     image_grid_pinpoints=self._pinpoints())
        return cls(image_processor=image_processor, tokenizer=tokenizer, patch_size=self.tiny.patch_size,
                   vision_feature_select_strategy="default", image_token="<image>",
                   num_additional_image_tokens=1)

    def postprocess_inputs(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.global_view_only and "pixel_values" in out:
            out["pixel_values"] = out["pixel_values"][:, :1]  # the base view comes first
        return out

    def model_inputs(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        kwargs = super().model_inputs(model, batch)
        if not self.global_view_only:
            return kwargs
        pixels = kwargs.pop("pixel_values", None)
        kwargs.pop("image_sizes", None)
        if pixels is not None and pixels.shape[0] > 0:
            features = global_view_features(model, pixels[:, 0])
            kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=features)}
        return kwargs
