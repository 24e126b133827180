"""Typed schemas of the ``model`` config group (conf/model/*.yaml): the backbone specs' keys and types.

Registered by ``mmtrain.config`` (which re-exports these classes); kept import-light (no torch), since
the config is composed before anything heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


def as_schema(cls: type, value: Any) -> Any:
    """``cls`` (a schema dataclass, nested ones included) from a dict or DictConfig, checked against it:
    the one place Hydra's nodes and keyword arguments become the runtime classes' typed settings. An
    instance or None passes through."""
    if value is None or isinstance(value, cls):
        return value
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), value))


@dataclass
class TinyClipConfig:
    """Shape of a from-scratch CLIP (mmtrain.models.clip_sf.TinyClip)."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    image_size: int = 32
    patch_size: int = 8
    projection_dim: int = 64
    max_position_embeddings: int = 64


@dataclass
class ClipSFConfig:
    _target_: str = "mmtrain.models.clip_sf.ClipSFBackbone"
    pretrained: Optional[str] = None
    tokenizer: Optional[str] = None
    tiny: Optional[TinyClipConfig] = None
    max_text_length: int = 77
    trust_remote_code: bool = False


@dataclass
class TinyMLLMConfig:
    """Shape of a from-config MLLM (mmtrain.models.mllm.backbone.TinyMLLM)."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    image_size: int = 32
    patch_size: int = 8


@dataclass
class PoolingConfig:
    """Pooling head (mmtrain/models/pooling.py) and the latent-attention shape (NV-Embed-v1)."""

    kind: str = "last"                    # last (EOS / one-word) | mean | latent_attention (NV-Embed)
    num_latents: int = 512
    num_heads: int = 8
    head_dim: Optional[int] = None        # None: the LLM hidden size (NV-Embed: cross_dim_head = 4096)
    ff_mult: int = 4
    mask_instruction: bool = True         # exclude instruction tokens from mean / latent pooling


@dataclass
class LoraSchema:
    """LoRA on the language model (mmtrain/models/lora.py)."""

    r: int = 8                            # MM-Embed §5.1, mmE5 §4.1
    alpha: int = 64                       # MM-Embed §5.1 (mmE5 script too)
    dropout: float = 0.1                  # mmE5 script; MM-Embed does not say (unconfirmed)
    target_modules: list[str] = field(default_factory=lambda: [  # every LLM linear (Tevatron's default)
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    use_dora: bool = False                # mmE5's script trains DoRA
    init_lora_weights: Any = True         # true: B = 0 (peft default) | gaussian (mmE5) | false: random B


@dataclass
class LLMSwapConfig:
    """Replace the language model's weights (MM-Embed's NV-Embed-v1 variant, mmtrain/models/mllm/swap.py)."""

    source: str = MISSING                 # hub id or local dir, e.g. nvidia/NV-Embed-v1
    prefix: str = ""                      # NV-Embed-v1: "embedding_model."
    pooling_prefix: Optional[str] = None  # NV-Embed-v1: "latent_attention_model." (latent pooling)
    revision: Optional[str] = None


@dataclass
class MLLMConfig:
    """Keys shared by the MLLM backbone specs (mmtrain/models/mllm/backbone.py)."""

    _target_: str = MISSING
    pretrained: Optional[str] = None
    tokenizer: Optional[str] = None
    tiny: Optional[TinyMLLMConfig] = None
    template: str = "mm_embed"            # mm_embed | mme5 | llava_p
    instruction_prefix: str = ""
    query_prefix: str = "Query: "
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    lora: Optional[LoraSchema] = field(default_factory=LoraSchema)
    bidirectional: bool = False
    gradient_checkpointing: bool = False
    dtype: str = "float32"                # float32 | bfloat16 | float16 (weights as loaded)
    attn_implementation: str = "sdpa"
    max_query_length: int = 128
    max_candidate_length: int = 128
    padding_side: str = "right"
    llm_swap: Optional[LLMSwapConfig] = None
    trust_remote_code: bool = False
    seed: int = 0


@dataclass
class LlavaNextSchema(MLLMConfig):
    _target_: str = "mmtrain.models.mllm.LlavaNextBackbone"
    global_view_only: bool = True
    image_grid_pinpoints: Optional[list[list[int]]] = None


@dataclass
class MllamaSchema(MLLMConfig):
    _target_: str = "mmtrain.models.mllm.MllamaBackbone"
    template: str = "mme5"
    max_image_tiles: int = 4


@dataclass
class Qwen2VLSchema(MLLMConfig):
    _target_: str = "mmtrain.models.mllm.Qwen2VLBackbone"
    min_pixels: Optional[int] = None      # VLM2Vec: 256*28*28
    max_pixels: Optional[int] = None      # VLM2Vec: 1280*28*28


def register(cs: ConfigStore) -> None:
    cs.store(group="model", name="schema_clip_sf", node=ClipSFConfig)
    cs.store(group="model", name="schema_llava_next", node=LlavaNextSchema)
    cs.store(group="model", name="schema_mllama", node=MllamaSchema)
    cs.store(group="model", name="schema_qwen2_vl", node=Qwen2VLSchema)
