"""Benchmarks on the trained encoder at the end of a training run, in the run's own report.

``eval.benchmarks: {name: <an eval-group node>}`` (mmtrain.config.EvalConfig; e.g. mmE5's MMEB and XTD,
``conf/experiment/mme5.yaml``). After the final split, every rank builds an ``EvalContext`` on the trained
encoder whose collectives go through the training run's Lightning strategy, so a benchmark's encoding
and search are sharded over the training ranks as the evaluation entry shards them over Fabric
(``mmtrain/evaluate.py``), and runs each benchmark. Rank 0 writes ``benchmarks/<name>/results.{json,md,png}``
(plus the benchmark's own files, e.g. MMEB's ``<subset>_score.json``), appends every benchmark's tables
to ``results.md`` after the split's table, prints them, and logs the headline scalars to the run's
loggers. ``summary.json`` gets ``benchmarks: {name: headline}``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mmtrain.eval.benchmarks.context import EvalContext
from mmtrain.eval.report import BenchmarkResult, write_report
from mmtrain.io import atomic_write_text

log = logging.getLogger(__name__)


class StrategyCollectives:
    """What ``EvalContext`` uses of a Fabric (ranks, device, barrier, broadcast, all_gather, autocast),
    taken from a Lightning trainer's strategy: the training run already has its process group, and a
    second Fabric would launch and initialise another."""

    def __init__(self, trainer: L.Trainer):
        self.trainer = trainer

    @property
    def world_size(self) -> int:
        return self.trainer.world_size

    @property
    def global_rank(self) -> int:
        return self.trainer.global_rank

    @property
    def device(self) -> Any:
        return self.trainer.strategy.root_device

    def barrier(self) -> None:
        self.trainer.strategy.barrier("after_training_benchmarks")

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return self.trainer.strategy.broadcast(obj, src)

    def all_gather(self, tensor: Any) -> Any:
        return self.trainer.strategy.all_gather(tensor)

    def autocast(self) -> Any:
        return self.trainer.strategy.precision_plugin.forward_context()


class CheckBenchmarks(L.Callback):
    """Fail before training, not after it, on a benchmark that cannot run: listed in an experiment's
    callbacks as ``{_target_: ...CheckBenchmarks, benchmarks: ${eval.benchmarks}}``. Hydra builds the
    benchmarks to pass them in, so a missing value (``???``) or an argument the adapter refuses (XTD
    without ``root``) fails when the run is built, which the dry run does too; at ``setup`` every
    input directory an adapter names must exist (a typo in a path, on the training machines)."""

    INPUT_ATTRIBUTES = ("root", "image_dir", "repack_root", "repack_image_dir")

    def __init__(self, benchmarks: dict[str, Any]):
        self.benchmarks = dict(benchmarks)

    def missing_inputs(self) -> list[str]:
        return [f"eval.benchmarks.{name}.{attr}={value}" for name, bench in self.benchmarks.items()
                for attr in self.INPUT_ATTRIBUTES
                if (value := getattr(bench, attr, None)) is not None and not Path(value).exists()]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        missing = self.missing_inputs()
        if missing:
            raise FileNotFoundError(f"{len(missing)} benchmark input(s) to run after training do not exist: "
                                    + "; ".join(missing))


def run_benchmarks(cfg: DictConfig, run_dir: Path, module: Any, datamodule: Any, trainer: L.Trainer
                   ) -> dict[str, dict[str, float]]:
    """Run ``cfg.eval.benchmarks`` on ``module.encoder`` (all ranks); headline metrics per benchmark."""
    nodes = {name: node for name, node in (cfg.eval.get("benchmarks") or {}).items() if node is not None}
    if not nodes:
        return {}
    collectives = StrategyCollectives(trainer)
    # trainer.test() tears the strategy down, which moves the module to the CPU: bring it back.
    encoder = module.encoder.to(collectives.device).eval()
    processor = getattr(datamodule, "processor", None) or module.backbone.build_processor()
    # No embedding cache: the weights are this run's, at this step, and are not seen again.
    ctx = EvalContext(encoder, processor, model_fp=f"{run_dir}@{trainer.global_step}", fabric=collectives,
                      cache=None, batch_size=int(cfg.data.get("eval_batch_size", 256)), run_dir=run_dir)
    results: dict[str, BenchmarkResult] = {}
    for name, node in nodes.items():
        log.info("benchmark %s after training (step %d)", name, trainer.global_step)
        results[name] = instantiate(node, _convert_="all").run(ctx)
    if trainer.is_global_zero:
        split = cfg.eval.final_split
        split_report = bool(split and cfg.eval.report and module.eval_results.get(split))
        _report(cfg, run_dir, results, trainer, append=split_report)
        for logger in trainer.loggers:
            logger.log_metrics({f"benchmarks/{name}/{k}": float(v) for name, r in results.items()
                                for k, v in r.headline.items()}, step=trainer.global_step)
    collectives.barrier()
    return {name: dict(r.headline) for name, r in results.items()}


def _report(cfg: DictConfig, run_dir: Path, results: dict[str, BenchmarkResult], trainer: L.Trainer, *,
            append: bool) -> None:
    """Each benchmark's files under ``benchmarks/<name>/``; its tables added to ``results.md`` (after the
    split's table when this run wrote one, else alone)."""
    sections = []
    for name, result in results.items():
        extra = {"name": cfg.name, "benchmark": result.benchmark, "global_step": trainer.global_step,
                 "world_size": trainer.world_size, "after_training": True,
                 "eval": OmegaConf.to_container(cfg.eval.benchmarks[name], resolve=True)}
        write_report(result, run_dir / "benchmarks" / name, extra)
        sections.append(result.to_markdown())
    md = run_dir / "results.md"
    head = md.read_text() + "\n" if append and md.is_file() else ""
    text = head + "\n".join(sections)
    atomic_write_text(md, text)
    print("\n" + "\n".join(sections))
    print(f"benchmark reports: {', '.join(str(run_dir / 'benchmarks' / n) for n in results)}; table: {md}")
