"""Typed schemas for the Hydra config: a misspelled key fails when the config is composed.

The values live in ``conf/`` (once); these dataclasses only name the keys and their types. Each group
YAML lists its schema first in its defaults (``defaults: [schema_<name>, _self_]``), so anything an
experiment merges into that group is checked against the schema. Groups whose entries are arbitrary
``_target_`` nodes (strategy, logger, callbacks) are checked when instantiated instead: an unknown
argument is a TypeError before training starts.

Importing this module registers the schemas in Hydra's ConfigStore (``mmtrain.conf`` imports it, so
both ``python -m mmtrain`` and the compose API see them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class PathsConfig:
    cache_dir: str = MISSING       # generated data and shards (toy world, converted datasets)
    output_dir: str = MISSING      # root of run directories
    run_dir: str = MISSING         # this run's directory (Hydra's output dir)
    pipeline_dir: str = MISSING    # where a staged pipeline's runs live: <pipeline_dir>/<stage name>


@dataclass
class ToyWorldConfig:
    """Where and how the toy world is generated; a null size keeps the generator's default
    (mmtrain/data/toy_world.py ToySizes)."""

    dir: str = MISSING
    seed: int = 0
    n_train: Optional[int] = None        # queries per (dataset, task) pair
    n_val: Optional[int] = None
    n_test: Optional[int] = None
    n_distractors: Optional[int] = None  # pool-only scenes per dataset in val/test
    captions_per_image: Optional[int] = None
    passages_per_scene: Optional[int] = None
    beir_passages: Optional[int] = None
    beir_train: Optional[int] = None
    beir_test: Optional[int] = None
    vocab_size: Optional[int] = None


@dataclass
class TextRetrievalConfig:
    """A text-retrieval set beside the multimodal data (MM-Embed §4.1.2): scored with nDCG@10 at the end
    of every run, and mixed into training with ``train_weight`` (the continual stage: M-BEIR : text = 1 : 1)."""

    convert: Any = MISSING                # {source: beir|tevatron, reader kwargs} (mmtrain/data/convert)
    shard_dir: str = MISSING              # its converted shards (made once, cached)
    train_weight: float = 0.0             # share in training relative to data.mix_self; 0 = evaluation only
    eval_split: Optional[str] = "test"    # scored after training; None = never


@dataclass
class MixPartConfig:
    """One extra training part of ``data.parts`` (mmtrain/lightning/datamodule.py): converted in
    prepare_data like ``data.shard_dir``, then mixed with it (mmE5: MMEB labelled + synthetic)."""

    shard_dir: str = MISSING              # its converted shards (an interpolation is fine here)
    weight: float = MISSING               # draw weight relative to data.mix_self (inside: sources by size)
    convert: Any = MISSING                # {source, reader kwargs} or {toy_layout, toy_options} (toy world)


@dataclass
class DataConfig:
    _target_: str = "mmtrain.lightning.datamodule.RetrievalDataModule"
    mbeir_root: str = MISSING
    shard_dir: str = MISSING
    toy_world: Optional[ToyWorldConfig] = None
    batch_size: int = 128
    composition: str = "homogeneous"      # homogeneous | mixed | share
    homogeneous_share: float = 1.0        # with composition=share: share of task-homogeneous batches
    num_negatives: int = 0
    negatives_table: Optional[Any] = None  # mined negatives (mmtrain/mining/table.py) for hard stages: a
                                           # table or a list of tables (e.g. multimodal + text)
    negative_sampling: str = "modality_aware"  # modality_aware (C1 or C2, p=1/2) | uniform | first
    negative_order: str = "random"        # a sample's own (inline) negatives: random | rotate (Tevatron:
                                          # k consecutive of a fixed per-sample shuffle, from pass x k mod len)
    instruction: str = "random"           # random | first
    shuffle_buffer: int = 1000
    num_workers: int = 1
    eval_batch_size: int = 256
    val_split: Optional[str] = "val"
    test_split: Optional[str] = "test"
    samples_per_shard: int = 1000
    min_shards_per_source: int = 8
    skip_invalid: bool = False
    # Another format than M-BEIR (mmtrain/data/convert): {source: mmeb|tevatron|beir|..., reader kwargs,
    # write options; toy_layout: mmeb|tevatron writes the toy world in that layout first}
    convert: Optional[Any] = None
    mix: Optional[Any] = None             # {other manifest dir: weight}; this shard_dir keeps weight `mix_self`
    mix_self: float = 1.0
    parts: dict[str, MixPartConfig] = field(default_factory=dict)   # named parts, converted then mixed
    skip_corrupt: bool = False            # stream: skip (and count) corrupt samples instead of failing
    allow_stream_change: bool = False     # resume although the stream differs from the checkpoint's (warns)
    text_retrieval: Optional[TextRetrievalConfig] = None




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
    kind: str = "last"                    # last (EOS / one-word) | mean | latent_attention (NV-Embed)
    num_latents: int = 512
    num_heads: int = 8
    head_dim: Optional[int] = None        # None: the LLM hidden size (NV-Embed)
    ff_mult: int = 4
    mask_instruction: bool = True


@dataclass
class LoraSchema:
    r: int = 8
    alpha: int = 64
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    use_dora: bool = False
    init_lora_weights: Any = True         # true | false | gaussian | ...


@dataclass
class LLMSwapConfig:
    source: str = MISSING
    prefix: str = ""
    pooling_prefix: Optional[str] = None
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
    min_pixels: Optional[int] = None
    max_pixels: Optional[int] = None


@dataclass
class LossConfig:
    _target_: str = "mmtrain.models.loss.ContrastiveLoss"
    temperature: float = 0.02
    learnable_temperature: bool = False
    max_logit_scale: float = 100.0
    hard_negatives: str = "shared"        # shared (MM-Embed Eq. 1) | own (mmE5)
    gather: bool = True
    mask_false_negatives: bool = True


@dataclass
class RobustTextWeights:
    """lambda per kind of swapped caption (mmtrain/data/perturb.py); 0 = not made."""

    same_concept: float = 0.0             # another synonym set of the replaced word's concept group
    diff_concept: float = 0.0             # a word of another concept group
    rand_voca: float = 0.0                # a word of the random vocabulary


@dataclass
class RobustSemanticConfig:
    """RoCOCO's semantic contrastive (SC) loss: swapped captions as negatives of image queries."""

    weights: RobustTextWeights = field(default_factory=RobustTextWeights)
    tasks: list[int] = field(default_factory=lambda: [3])   # M-BEIR tasks whose text positives are swapped
    groups: Optional[Any] = None          # {group: [word | [synonym, ...]]}; None: file or derived
    vocabulary_file: Optional[str] = None  # YAML/JSON {groups: ..., random_words: [...]}
    random_words: Optional[list[str]] = None  # None: from the file, else derived from training captions
    min_count: int = 5                    # derived vocabulary: occurrences a word needs


@dataclass
class RobustImageWeights:
    mix: float = 0.0                      # lam * a + (1 - lam) * b
    patch: float = 0.0                    # a box of b pasted into a (CutMix)


@dataclass
class RobustVisualConfig:
    """RoCOCO's visual contrastive (VC) loss: mixed images as negatives of text queries."""

    weights: RobustImageWeights = field(default_factory=RobustImageWeights)
    tasks: list[int] = field(default_factory=lambda: [0])   # M-BEIR tasks whose image positives are mixed
    lam_min: float = 0.5                  # lam ~ U[lam_min, lam_max], one per batch
    lam_max: float = 0.9


@dataclass
class RobustConfig:
    """Robustness-aware training (RoCOCO SC / VC; robustness.md §1.2, docs/robustness.md)."""

    enabled: bool = False
    form: str = "softmax"                 # softmax (extra logit column) | hinge (margin on cosines)
    margin: float = 0.2                   # hinge form only
    sc: RobustSemanticConfig = field(default_factory=RobustSemanticConfig)
    vc: RobustVisualConfig = field(default_factory=RobustVisualConfig)


@dataclass
class OptimConfig:
    optimizer: Any = MISSING              # a `_partial_` optimizer node, e.g. torch.optim.AdamW
    lr_schedule: str = "cosine"           # cosine | linear | constant
    warmup_ratio: float = 0.0


@dataclass
class TrainerConfig:
    _target_: str = "lightning.pytorch.Trainer"
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    precision: Any = "32-true"
    max_steps: int = MISSING
    val_check_interval: Any = None
    check_val_every_n_epoch: Optional[int] = None
    limit_val_batches: Any = None
    num_sanity_val_steps: int = 0
    log_every_n_steps: int = 50
    gradient_clip_val: Optional[float] = None
    accumulate_grad_batches: int = 1
    deterministic: Any = False
    benchmark: Optional[bool] = None
    enable_progress_bar: bool = True
    enable_model_summary: bool = True
    enable_checkpointing: bool = True
    default_root_dir: Optional[str] = None
    max_time: Optional[str] = None


@dataclass
class EvalConfig:
    final_split: Optional[str] = "test"   # evaluated after training; None skips it
    report: bool = True                   # table + results.{json,md,png} in the run directory
    # Benchmarks run on the trained encoder after the final split, into the same report: {name: an
    # `eval` group node (conf/eval/*.yaml, e.g. `- /eval@eval.benchmarks.xtd: xtd` in an experiment)}
    # (mmtrain/eval/benchmarks/after_training.py).
    benchmarks: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """Launch-level settings: the run directory's resume and the pre-launch checks (mmtrain/run_dir.py,
    mmtrain/preflight.py)."""

    resume: bool = True                   # continue from <run_dir>/checkpoints/last.ckpt when present
    min_free_disk_gb: float = 1.0         # preflight: free space needed under run_dir and cache_dir


@dataclass
class StageConfig:
    """Which stage of a staged recipe this run is (MM-Embed: rand -> hard -> continual)."""

    name: str = "single"                 # single (a plain run) | rand | hard | continual
    init_from: Optional[str] = None      # checkpoint whose weights start the stage; None = the
                                         # backbone's own weights (MM-Embed's hard stage: pretrained)


@dataclass
class Config:
    name: str = "mmtrain"
    seed: int = 0
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: Any = MISSING
    model: Any = MISSING
    loss: Any = MISSING
    optim: Any = MISSING
    trainer: Any = MISSING
    strategy: Any = "auto"
    logger: Any = field(default_factory=dict)
    callbacks: Any = field(default_factory=dict)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)
    pipeline: list[str] = field(default_factory=list)   # experiment names run one after another
    # What `python -m mmtrain` runs when no experiment is selected (mmtrain/__main__.py): the toy recipe.
    default_pipeline: list[str] = field(default_factory=list)
    run: RunConfig = field(default_factory=RunConfig)
    dry_run: bool = False                 # check the run (mmtrain/preflight.py), print, exit: no training
    global_batch_size: Optional[int] = None  # declared; must equal batch_size x devices x nodes x accumulation
    # The LightningModule: RetrievalModule, or GradCacheRetrievalModule with `chunk_size` (a layout
    # picks it; mmtrain/lightning/gradcache.py). Its extra keys are checked when it is instantiated.
    module: Any = field(default_factory=lambda: {"_target_": "mmtrain.lightning.module.RetrievalModule"})


@dataclass
class ToyMMEBEval:
    """``conf/eval/toy_mmeb.yaml``: the toy world's MMEB-eval tables through MMEB's per-row protocol
    (mmtrain/eval/benchmarks/toy_variants.py). Stored in the evaluation entry's ``eval`` group."""

    _target_: str = "mmtrain.eval.benchmarks.toy_variants.ToyMMEBBenchmark"
    toy_world: Any = MISSING              # the data.toy_world node (dir, seed, sizes)
    split: str = "test"
    subsets: Optional[list[str]] = None   # null: every subset the layout has
    title: Optional[str] = None


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    cs.store(group="data", name="schema_retrieval", node=DataConfig)
    cs.store(group="eval", name="schema_toy_mmeb", node=ToyMMEBEval)
    cs.store(group="model", name="schema_clip_sf", node=ClipSFConfig)
    cs.store(group="model", name="schema_llava_next", node=LlavaNextSchema)
    cs.store(group="model", name="schema_mllama", node=MllamaSchema)
    cs.store(group="model", name="schema_qwen2_vl", node=Qwen2VLSchema)
    cs.store(group="loss", name="schema_contrastive", node=LossConfig)
    cs.store(group="optim", name="schema_optim", node=OptimConfig)
    cs.store(group="trainer", name="schema_trainer", node=TrainerConfig)
    cs.store(group="robust", name="schema_robust", node=RobustConfig)


register()

# The evaluation entry's schemas (conf/evaluate.yaml, conf/eval/*) live beside the benchmarks.
from mmtrain.eval.benchmarks.schemas import register as _register_evaluation  # noqa: E402

_register_evaluation()

# The synthesis entry's schemas (conf/synth.yaml, conf/synth/*) live beside it.
from mmtrain.synth.config import register as _register_synthesis  # noqa: E402

_register_synthesis()
