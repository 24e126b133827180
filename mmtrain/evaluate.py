"""``python -m mmtrain.evaluate +eval=<benchmark> [ckpt=...] [model=...] [overrides]``: one entry for
every benchmark (conf/evaluate.yaml, conf/eval/*.yaml).

The model is a backbone spec (the ``model`` group, as in training) with weights from a training
checkpoint (``ckpt``: a Lightning ``.ckpt``, a Lightning DeepSpeed checkpoint directory or a plain
encoder state dict, read by mmtrain/checkpoint.py). When the checkpoint sits in a training run
directory, the run's ``config.yaml`` supplies the backbone spec (``model_from_run_config``), so
``ckpt=`` alone is enough.
``ckpt`` may also be an ``mmtrain.export`` directory, which carries its own spec and weights.

All ranks (``fabric.devices``) encode, search and rerank their shard; rank 0 writes
``results.{json,md,png}`` (plus per-benchmark files) into the run directory and logs to wandb when
``wandb.enabled``. Embeddings are cached under ``cache.dir`` (keyed by model and data).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

import mmtrain.config  # noqa: F401  (registers the config schemas)
from mmtrain.checkpoint import EXPORT_FILE, is_export, load_encoder, load_export
from mmtrain.run_dir import output_path

log = logging.getLogger(__name__)
BENCHMARKS = ("toy", "mbeir", "mmeb", "mteb", "xtd", "circo", "rococo", "fg", "toy_rococo", "toy_fg")


def model_config(cfg: DictConfig) -> DictConfig:
    """The backbone spec: from the checkpoint's run directory when asked and present, else ``cfg.model``."""
    if cfg.ckpt and cfg.model_from_run_config:
        run_cfg = output_path(Path(cfg.ckpt).resolve().parent.parent, "config")  # <run>/checkpoints/<ckpt>
        if run_cfg.is_file():
            node = OmegaConf.load(run_cfg).get("model")
            if node is not None:
                log.info("model spec from %s", run_cfg)
                return node
    return cfg.model


def _reranker(cfg: DictConfig, device: Any) -> Any:
    if not cfg.rerank.model:
        return None
    from mmtrain.eval.reranker import MLLMReranker

    r = cfg.rerank
    return MLLMReranker(r.model, prompt_template=r.prompt_template, true_token=r.true_token,
                        false_token=r.false_token, batch_size=r.batch_size, top_k=r.top_k, tasks=list(r.tasks),
                        torch_dtype=r.torch_dtype, device=device, trust_remote_code=r.trust_remote_code)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Run the configured benchmark; returns its headline metrics (fractions)."""
    from hydra.utils import instantiate
    from lightning.fabric import Fabric

    from mmtrain.eval.benchmarks.context import EvalContext
    from mmtrain.eval.benchmarks.mbeir import ensure_toy
    from mmtrain.eval.report import log_wandb, write_report
    from mmtrain.eval.embed_cache import EmbeddingCache, fingerprint_model

    if OmegaConf.is_missing(cfg, "eval"):
        raise ValueError(f"choose a benchmark: python -m mmtrain.evaluate +eval=NAME (NAME in {BENCHMARKS})")
    fabric = Fabric(**OmegaConf.to_container(cfg.fabric, resolve=True))
    fabric.launch()
    fabric.seed_everything(cfg.seed)  # a from-scratch backbone (no ckpt) is then the same on every rank
    run_dir = Path(cfg.paths.run_dir)
    if fabric.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if is_export(cfg.ckpt):  # an export: spec and weights inside
        with fabric.init_module():
            encoder = load_export(cfg.ckpt)
        backbone, spec_dict = encoder.backbone, json.loads((Path(cfg.ckpt) / EXPORT_FILE).read_text())["backbone"]
    else:
        spec = model_config(cfg)
        toy = cfg.data.get("toy_world") if OmegaConf.is_dict(cfg.data) else None
        if toy is not None and str(spec.get("tokenizer") or "").startswith(str(toy.dir)):
            # The tiny backbones' tokenizer lives in the toy world: generate it first when missing.
            ensure_toy(fabric, OmegaConf.to_container(toy, resolve=True))
        backbone = instantiate(spec)
        with fabric.init_module():
            encoder = load_encoder(backbone, cfg.ckpt, what="ckpt").eval()
        spec_dict = OmegaConf.to_container(spec, resolve=True)
    encoder = encoder.to(fabric.device)
    model_fp = fingerprint_model({"spec": spec_dict, "seed": None if cfg.ckpt else cfg.seed,
                                  "precision": str(cfg.fabric.precision)}, cfg.ckpt)
    cache = EmbeddingCache(cfg.cache.dir, cfg.cache.dtype) if cfg.cache.enabled else None
    ctx = EvalContext(encoder, backbone.build_processor(), model_fp=model_fp, fabric=fabric, cache=cache,
                      batch_size=cfg.encode.batch_size, num_workers=cfg.encode.num_workers,
                      search_backend=cfg.search.backend, search_block_size=cfg.search.block_size,
                      run_dir=run_dir, reranker=_reranker(cfg, fabric.device))
    benchmark = instantiate(cfg.eval, _convert_="all")
    result = benchmark.run(ctx)

    if fabric.is_global_zero:
        extra = {"name": cfg.name, "benchmark": result.benchmark, "model": spec_dict, "ckpt": cfg.ckpt,
                 "model_fingerprint": model_fp, "world_size": fabric.world_size, "stats": ctx.stats,
                 "reranker": ctx.reranker.config() if ctx.reranker is not None else None,
                 "eval": OmegaConf.to_container(cfg.eval, resolve=True)}
        paths = write_report(result, run_dir, extra)
        print("\n" + result.to_markdown())
        print(f"report: {run_dir}/results.{{json,md,png}}  (encoded {ctx.stats['encoded_items']} items, "
              f"{ctx.stats['cache_hits']} cache hits)")
        if cfg.wandb.enabled:
            log_wandb(result, paths, project=cfg.wandb.project, name=cfg.name, mode=cfg.wandb.mode,
                      run_dir=run_dir, config=OmegaConf.to_container(cfg, resolve=True))
    fabric.barrier()
    return result.headline


@hydra.main(config_path="pkg://mmtrain.conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    headline = evaluate(cfg)
    # A float lets Hydra sweepers optimise the first headline metric.
    return next(iter(headline.values()), None)


if __name__ == "__main__":
    main()
