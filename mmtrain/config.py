"""Typed schemas for the Hydra config: a misspelled key fails when the config is composed.

These dataclasses name the keys and their types. Each group YAML lists its schema first in its
defaults (``defaults: [schema_<name>, _self_]``), so anything an experiment merges into that group is
checked against the schema. Groups whose entries are arbitrary ``_target_`` nodes (strategy, logger,
callbacks) are checked when instantiated instead: an unknown argument is a TypeError before training.

Each value is set once. A group with one option (loss, optim) and the primary config keep their values
in the YAML, and the schema says ``MISSING``; a group with several options (data, model, trainer, ...)
has its common default here, and an option's YAML sets only what differs.

Importing this module registers the schemas in Hydra's ConfigStore and the run-layout resolvers
(``${run_output:...}``, ``${stage_output:...}``, mmtrain/run_dir.py); ``mmtrain.conf`` imports it, so
both ``python -m mmtrain`` and the compose API see them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from mmtrain.data.robust import RobustConfig  # the robust group's schema, next to its runtime

# The model group's schemas live beside the models (re-exported: ``from mmtrain.config import TinyClipConfig``).
from mmtrain.models.config import (ClipSFConfig, LlavaNextSchema, LLMSwapConfig, LoraSchema,  # noqa: F401
                                   MllamaSchema, MLLMConfig, PoolingConfig, Qwen2VLSchema, TinyClipConfig,
                                   TinyMLLMConfig)
from mmtrain.models.config import register as register_models
from mmtrain.run_dir import register_resolvers


@dataclass
class PathsConfig:
    cache_dir: str = MISSING       # generated data and shards (toy world, converted datasets)
    output_dir: str = MISSING      # root of run directories
    run_dir: str = MISSING         # this run's directory (Hydra's output dir)
    pipeline_dir: str = MISSING    # where a staged pipeline's runs live: <pipeline_dir>/<stage name>


@dataclass
class ToyWorldConfig:
    """Where and how the toy world is generated; a null size keeps the generator's default
    (mmtrain/toy/world.py ToySizes)."""

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
    negatives_table: Optional[Any] = None  # mined negatives (mmtrain/data/negatives.py) for hard stages: a
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
class LossConfig:
    """conf/loss/infonce.yaml holds the values (the only loss option; mmtrain/models/loss.py)."""

    _target_: str = "mmtrain.models.loss.ContrastiveLoss"
    temperature: float = MISSING
    learnable_temperature: bool = MISSING
    max_logit_scale: float = MISSING
    hard_negatives: str = MISSING         # shared (MM-Embed Eq. 1) | own (mmE5)
    gather: bool = MISSING
    mask_false_negatives: bool = MISSING


@dataclass
class OptimConfig:
    """conf/optim/adamw.yaml holds the values (the only optim option)."""

    optimizer: Any = MISSING              # a `_partial_` optimizer node, e.g. torch.optim.AdamW
    lr_schedule: str = MISSING            # cosine | linear | constant
    warmup_ratio: float = MISSING


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

    name: str = MISSING                  # single (a plain run) | rand | hard | continual (conf/stage/)
    init_from: Optional[str] = MISSING   # checkpoint whose weights start the stage; None = the
                                         # backbone's own weights (MM-Embed's hard stage: pretrained)


@dataclass
class Config:
    """The primary config's keys; conf/config.yaml and its groups hold the values."""

    name: str = MISSING
    seed: int = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: Any = MISSING
    model: Any = MISSING
    loss: Any = MISSING
    optim: Any = MISSING
    trainer: Any = MISSING
    strategy: Any = MISSING
    logger: Any = field(default_factory=dict)
    callbacks: Any = field(default_factory=dict)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)
    pipeline: list[str] = field(default_factory=list)   # experiment names run one after another
    # What `python -m mmtrain` runs when no experiment is selected (mmtrain/__main__.py): the toy recipe.
    default_pipeline: list[str] = MISSING
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
    register_models(cs)
    cs.store(group="loss", name="schema_contrastive", node=LossConfig)
    cs.store(group="optim", name="schema_optim", node=OptimConfig)
    cs.store(group="trainer", name="schema_trainer", node=TrainerConfig)
    cs.store(group="robust", name="schema_robust", node=RobustConfig)


register()
register_resolvers()  # ${run_output:...} / ${stage_output:...} (the run layout, mmtrain/run_dir.py)

# The evaluation entry's schemas (conf/evaluate.yaml, conf/eval/*) live beside the benchmarks.
from mmtrain.eval.benchmarks.schemas import register as _register_evaluation  # noqa: E402

_register_evaluation()

# The synthesis entry's schemas (conf/synth.yaml, conf/synth/*) live beside it.
from mmtrain.synth.config import register as _register_synthesis  # noqa: E402

_register_synthesis()
