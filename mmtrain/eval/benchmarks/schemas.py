"""Typed schemas of the evaluation entry (``conf/evaluate.yaml``) and its ``eval`` group
(``conf/eval/*.yaml``, one benchmark each). Registered in Hydra's ConfigStore by ``register()``, which
``mmtrain.config`` calls, so a misspelled key fails when the config is composed.

The evaluation config is its own primary config: its ``eval`` node (the benchmark) is unrelated to
the training config's ``eval`` node (final split, report), which ``mmtrain.config.EvalConfig`` types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class FabricConfig:
    """``lightning.fabric.Fabric`` arguments: devices > 1 runs one process per device (CPU: gloo)."""

    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: Any = "auto"
    precision: Any = "32-true"


@dataclass
class EncodeConfig:
    batch_size: int = 256
    num_workers: int = 0


@dataclass
class CacheConfig:
    enabled: bool = True
    dir: str = MISSING
    dtype: str = "float32"     # float16 halves disk and memory (the 5.6M x 4096 pool: 45.9 GB)


@dataclass
class SearchConfig:
    backend: str = "auto"      # auto | torch | faiss (mmtrain.eval.search.exact_topk)
    block_size: int = 4096


@dataclass
class RerankConfig:
    """Zero-shot MLLM reranker (mmtrain.eval.reranker); ``model: null`` switches it off."""

    model: Optional[str] = None
    prompt_template: str = "{prompt}"
    true_token: str = "True"
    false_token: str = "False"
    batch_size: int = 8
    top_k: int = 10
    tasks: list[int] = field(default_factory=lambda: [6, 7, 8])
    torch_dtype: str = "float32"
    trust_remote_code: bool = False


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "mmtrain"
    mode: str = "auto"         # online | offline | disabled | auto (online with credentials)


@dataclass
class EvaluateConfig:
    name: str = "eval"
    seed: int = 0
    paths: Any = MISSING       # the shared `paths` group (typed by the training schema's PathsConfig)
    data: Any = MISSING        # the training data node: where the toy world (and its tokenizer) lives
    model: Any = MISSING       # backbone spec (a `model` group entry)
    ckpt: Optional[str] = None           # training checkpoint (Lightning .ckpt) or an encoder state dict
    model_from_run_config: bool = True   # take `model` from <run>/config.yaml beside the checkpoint
    fabric: FabricConfig = field(default_factory=FabricConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    eval: Any = MISSING        # the benchmark: +eval=<name>


# ---------------------------------------------------------------- the `eval` group, one per benchmark
_PKG = "mmtrain.eval.benchmarks"


@dataclass
class MBeirEval:
    _target_: str = f"{_PKG}.mbeir.MBeirBenchmark"
    root: str = MISSING
    split: str = "test"
    pools: list[str] = field(default_factory=lambda: ["local", "global"])
    pairs: Optional[list[str]] = None
    instruction: str = "first"           # first | seeded (instruction_seed, recorded)
    instruction_seed: int = 0
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    missing_qrels: str = "error"         # error | keep (UniIR: misses) | drop
    write_run_files: bool = False
    run_file_depth: int = 50
    title: Optional[str] = None


@dataclass
class ToyEval(MBeirEval):
    _target_: str = f"{_PKG}.mbeir.ToyBenchmark"
    toy_world: Any = None


@dataclass
class MMEBEval:
    _target_: str = f"{_PKG}.mmeb.MMEBBenchmark"
    root: str = MISSING                  # HF TIGER-Lab/MMEB-eval: <root>/<Subset>/*.parquet
    image_dir: str = MISSING             # images.zip extracted
    subsets: Optional[list[str]] = None  # null: the 36 tasks
    title: Optional[str] = None


@dataclass
class MtebEval:
    _target_: str = f"{_PKG}.mteb_eval.MtebBenchmark"
    tasks: list[str] = field(default_factory=lambda: ["SciFact"])
    data_root: Optional[str] = None      # local HF-layout copies: <data_root>/<task name>/
    eval_splits: Optional[list[str]] = None
    batch_size: int = 64
    title: Optional[str] = None


@dataclass
class XtdEval:
    _target_: str = f"{_PKG}.xtd.XtdBenchmark"
    root: Optional[str] = None           # the XTD10 repository (XTD10/test_image_names.txt, ...)
    image_dir: Optional[str] = None      # COCO train2014 images
    repack_root: Optional[str] = None    # HF Haon-Chen/XTD-10: <repack_root>/<lang>/*.parquet
    repack_image_dir: Optional[str] = None
    languages: list[str] = field(default_factory=lambda: ["it", "es", "ru", "zh", "pl", "tr", "ko"])
    instruction: Optional[str] = "Find me an everyday image that matches the given caption."
    title: Optional[str] = None


@dataclass
class CircoEval:
    _target_: str = f"{_PKG}.circo.CircoBenchmark"
    root: str = MISSING                  # CIRCO repository: annotations/{val,test}.json
    image_dir: str = MISSING             # COCO unlabeled2017 images
    image_info: Optional[str] = None     # annotations/image_info_unlabeled2017.json (default under root)
    split: str = "val"
    use_shared_concept: bool = False
    instruction: Optional[str] = ("Retrieve a day-to-day image that aligns with the modification "
                                  "instructions of the provided image.")
    title: Optional[str] = None


@dataclass
class RococoEval:
    _target_: str = f"{_PKG}.rococo.RococoBenchmark"
    ann_dir: str = MISSING               # RoCOCO annotations: coco_karpathy_test.json + perturbation files
    image_root: str = MISSING            # COCO images root ("val2014/..." paths are relative to it)
    mix_dir: Optional[str] = None        # where mixed images are generated (default: cache)
    perturbations: list[str] = field(default_factory=lambda: ["same_concept", "diff_concept", "rand_voca", "danger"])
    methods: list[str] = field(default_factory=lambda: ["mix", "patch"])
    lam: float = 0.9
    seeds: list[int] = field(default_factory=lambda: [1, 10, 100])
    instruction_t2i: Optional[str] = None
    instruction_i2t: Optional[str] = None
    title: Optional[str] = None


@dataclass
class FgEval:
    _target_: str = f"{_PKG}.fg.FgBenchmark"
    root: str = MISSING                  # MSCOCO-Flikcr30K_FG repository (Annotations/, Images/)
    which: str = "MSCOCO"                # MSCOCO | Flickr30K
    original_image_dir: str = MISSING    # COCO val2014 / flickr30k-images
    distractor_image_dir: str = MISSING  # COCO unlabeled2017
    original_ann: Optional[str] = None   # BLIP-format test json of the original 5K / 1K benchmark
    original_image_root: Optional[str] = None
    instruction_t2i: Optional[str] = None
    instruction_i2t: Optional[str] = None
    title: Optional[str] = None


@dataclass
class ToyVariantEval:
    """A RoCOCO-style or FG-style toy world, generated, then run through that benchmark's adapter."""

    _target_: str = f"{_PKG}.toy_variants.ToyVariantBenchmark"
    kind: str = MISSING                  # rococo | fg
    out_dir: str = MISSING
    n_images: int = 200
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)   # passed to the adapter
    title: Optional[str] = None


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema_evaluate", node=EvaluateConfig)
    for name, node in (("mbeir", MBeirEval), ("toy", ToyEval), ("mmeb", MMEBEval), ("mteb", MtebEval),
                       ("xtd", XtdEval), ("circo", CircoEval), ("rococo", RococoEval), ("fg", FgEval),
                       ("toy_variant", ToyVariantEval)):
        cs.store(group="eval", name=f"schema_{name}", node=node)
