"""MLLM bi-encoders (MM-Embed's LLaVA-Next, mmE5's Llama-3.2-Vision, Qwen2-VL) behind the encoder
contract of mmtrain/models/encoder.py. Select one by its spec class (Hydra ``_target_``)."""

from mmtrain.models.mllm.backbone import MLLMBackbone, TinyMLLM
from mmtrain.models.mllm.llava_next import LlavaNextBackbone
from mmtrain.models.mllm.mllama import MllamaBackbone
from mmtrain.models.mllm.qwen2_vl import Qwen2VLBackbone

__all__ = ["LlavaNextBackbone", "MLLMBackbone", "MllamaBackbone", "Qwen2VLBackbone", "TinyMLLM"]
