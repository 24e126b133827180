"""Qwen2-VL (GME / LamRA / VLM2Vec-Qwen style backbones).

Images are written ``<|vision_start|><|image_pad|><|vision_end|>`` and ``<|image_pad|>`` expands to
one token per merged 2x2 patch group. Pixels come as patch rows (sum over images of t*h*w, C*T*P*P)
with ``image_grid_thw`` per image, so a GradCache chunk takes the patch rows of its images
(``fix_chunk``). Positions are M-RoPE, computed by the model from ``mm_token_type_ids`` and the
attention mask (``position_ids_from_mask = False``). The projector is ``visual.merger``.

transformers' ``Qwen2VLProcessor`` insists on a video processor, which needs torchvision
(environment.md §2); ``ImageOnlyQwen2VLProcessor`` is the same processor without it.
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen2VLConfig, Qwen2VLProcessor
from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig
from transformers.processing_utils import ProcessorMixin

from mmtrain.models.config import Qwen2VLSchema
from mmtrain.models.mllm.backbone import MLLMBackbone
from mmtrain.models.mllm.prompts import ImageStyle

SPECIALS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
            "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor without the (torchvision-only) video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs: Any):
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "processor_class": Qwen2VLProcessor.__name__}


class Qwen2VLBackbone(MLLMBackbone):
    schema = Qwen2VLSchema
    name = "qwen2_vl"
    style = ImageStyle("<|vision_start|><|image_pad|><|vision_end|>", "")
    special_tokens = tuple(SPECIALS.values())
    projector = "visual.merger"
    vision_tower = "visual"                # frozen
    model_input_keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
    per_image_keys = ("image_grid_thw",)
    position_ids_from_mask = False

    def tiny_config(self, tokenizer) -> Qwen2VLConfig:
        t = self.tiny
        head_dim = t.hidden_size // t.num_heads
        third = head_dim // 2 // 3  # mrope_section must sum to head_dim / 2
        section = [head_dim // 2 - 2 * third, third, third]
        vision = Qwen2VLVisionConfig(depth=t.vision_layers, embed_dim=t.vision_hidden_size,
                                     hidden_size=t.hidden_size, num_heads=t.vision_heads, mlp_ratio=2,
                                     patch_size=t.patch_size, spatial_merge_size=2, temporal_patch_size=2)
        text = Qwen2VLTextConfig(vocab_size=len(tokenizer), hidden_size=t.hidden_size,
                                 intermediate_size=t.intermediate_size, num_hidden_layers=t.num_layers,
                                 num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
                                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id,
                                 rope_parameters={"rope_type": "default", "mrope_section": section,
                                                  "rope_theta": 10000.0})
        ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in SPECIALS.items()}
        return Qwen2VLConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), **ids)

    def hf_processor(self, tokenizer) -> ImageOnlyQwen2VLProcessor:
        size = {}
        if self.min_pixels is not None:
            size["shortest_edge"] = self.min_pixels
        if self.max_pixels is not None:
            size["longest_edge"] = self.max_pixels
        if not self.is_tiny:
            image_processor = Qwen2VLImageProcessorPil.from_pretrained(self.pretrained, **({"size": size} if size else {}))
        else:
            p = self.tiny.patch_size
            s = self.tiny.image_size
            image_processor = Qwen2VLImageProcessorPil(
                patch_size=p, temporal_patch_size=2, merge_size=2,
                size={"shortest_edge": size.get("shortest_edge", s * s),
                      "longest_edge": size.get("longest_edge", 4 * s * s)})
        return ImageOnlyQwen2VLProcessor(image_processor, tokenizer)

    def fix_chunk(self, chunk: dict[str, Any], batch: dict[str, Any], first: int, last: int) -> dict:
        if first == last:
            chunk.pop("pixel_values", None)
        elif "image_grid_thw" in batch:
            rows = batch["image_grid_thw"].prod(dim=1).tolist()  # patch rows per image
            chunk["pixel_values"] = batch["pixel_values"][sum(rows[:first]): sum(rows[:last])]
        return chunk
