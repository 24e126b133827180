"""Typed schemas of the synthesis entry (``conf/synth.yaml``, ``conf/synth/{generator,embedder}/*.yaml``),
registered in Hydra's ConfigStore by ``register()`` (``mmtrain.config`` calls it), so a misspelled key
fails when the config is composed. Kept import-light: no torch, no openai."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from mmtrain.synth.configure import CLARITY, DIFFICULTY, TABLE6
from mmtrain.synth.languages import DEFAULT_HIGH_RESOURCE


@dataclass
class CorpusConfig:
    images: str = MISSING                 # a directory of images, or a text file listing them


@dataclass
class LanguageConfig:
    english_share: float = 0.5
    high_resource_share: float = 0.3      # split evenly over `high_resource`; the rest evenly over the others
    high_resource: list[str] = field(default_factory=lambda: list(DEFAULT_HIGH_RESOURCE))
    languages: Optional[list[str]] = None  # None: all 93 of XLM-R (languages.py)


@dataclass
class SamplingConfig:
    # task -> modality tag -> weight; default mmE5 Table 6 (560K samples)
    task_modality: dict[str, dict[str, float]] = field(
        default_factory=lambda: {t: {m: float(n) for m, n in rows.items()} for t, rows in TABLE6.items()})
    languages: LanguageConfig = field(default_factory=LanguageConfig)
    clarity: list[str] = field(default_factory=lambda: list(CLARITY))
    difficulty: list[str] = field(default_factory=lambda: list(DIFFICULTY))


@dataclass
class RetrieverConfig:
    embedder: Any = MISSING               # conf/synth/embedder/*.yaml
    positive_rank: int = 1                # the positive image: the anchor's n-th nearest other image
    hard_negative_rank: int = 3           # the hard-negative image (mmtrain's choice; the paper gives none)
    max_similarity: float = 0.999         # closer neighbours are near-duplicates: skipped
    batch_size: int = 256                 # images per embedder call


@dataclass
class ValidationConfig:
    max_attempts: int = 3                 # requests per sample (timeouts included) before it is rejected
    backoff_seconds: float = 2.0          # wait before retrying a timeout / API error: x 2 per attempt
    excerpt_chars: int = 500              # of the last raw answer, kept with a rejection
    abort_after_consecutive_rejections: int = 50   # stop a run that rejects everything (0: never)


@dataclass
class OutputConfig:
    flush_every: int = 32                 # samples per part file
    flush_seconds: float = 30.0           # ... or write what is there after this long
    retry_rejected: bool = False          # a resumed run generates earlier rejected samples again
    write_shards: bool = True             # canonical shards under <out_dir>/shards at the end
    samples_per_shard: int = 1000
    min_shards_per_source: int = 8
    max_short_side: Optional[int] = 256   # images re-encoded into the shards (null: as they are)
    workers: int = 2
    check_images: bool = True


@dataclass
class SynthConfig:
    out_dir: str = MISSING
    num_samples: int = MISSING
    seed: int = 0
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    generator: Any = MISSING              # conf/synth/generator/*.yaml
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


@dataclass
class OpenAIGeneratorConfig:
    _target_: str = "mmtrain.synth.generators.OpenAIChatGenerator"
    model: str = MISSING                  # e.g. gpt-4o-2024-08-06 (the paper's), or the name vLLM serves
    base_url: Optional[str] = None        # e.g. http://localhost:8000/v1; null: $OPENAI_BASE_URL or OpenAI
    api_key_env: str = "OPENAI_API_KEY"   # the variable holding the key, never the key itself
    timeout: float = 120.0                # seconds per request; a timeout counts as a failed attempt
    max_concurrency: int = 8
    requests_per_minute: Optional[float] = None
    temperature: float = 1.0              # mmE5 App. B.1: temperature and top-p 1.0
    top_p: float = 1.0
    max_tokens: int = 4096
    json_mode: bool = True                # response_format json_object
    send_seed: bool = True
    image_short_side: int = 512
    extra_body: dict[str, Any] = field(default_factory=dict)


@dataclass
class TransformersGeneratorConfig:
    _target_: str = "mmtrain.synth.generators.TransformersGenerator"
    model: str = MISSING                  # hub id or local directory of an image-text-to-text model
    device: str = "auto"
    dtype: str = "auto"                   # auto | bfloat16 | float16 | float32
    max_new_tokens: int = 2048
    temperature: float = 1.0
    top_p: float = 1.0
    do_sample: bool = True
    trust_remote_code: bool = False
    image_short_side: int = 512


@dataclass
class PixelEmbedderConfig:
    _target_: str = "mmtrain.synth.retrieval.PixelEmbedder"
    size: int = 8


@dataclass
class EncoderEmbedderConfig:
    _target_: str = "mmtrain.synth.retrieval.EncoderEmbedder"
    _recursive_: bool = False             # the backbone spec is built (and fingerprinted) by the embedder
    model: Any = None                     # a backbone spec (conf/model), or null with an export `ckpt`
    ckpt: Optional[str] = None
    batch_size: int = 32
    device: str = "auto"
    seed: int = 0


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema_synth", node=SynthConfig)
    cs.store(group="synth/generator", name="schema_openai", node=OpenAIGeneratorConfig)
    cs.store(group="synth/generator", name="schema_transformers", node=TransformersGeneratorConfig)
    cs.store(group="synth/embedder", name="schema_pixel", node=PixelEmbedderConfig)
    cs.store(group="synth/embedder", name="schema_encoder", node=EncoderEmbedderConfig)
