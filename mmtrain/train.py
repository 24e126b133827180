"""``train(cfg)``: compose the pieces named by the config, fit, evaluate, report.

A plain function of a composed config (``python -m mmtrain`` is a thin Hydra main over it; tests
call it with the compose API). Returns the final summary metrics.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mmtrain.eval.metrics import summarize
from mmtrain.eval.report import format_table, write_report
from mmtrain.lightning.module import RetrievalModule

log = logging.getLogger(__name__)


def _named(nodes: DictConfig | None) -> list[Any]:
    """Instantiate a dict of named ``_target_`` nodes; a null entry is switched off."""
    return [instantiate(node) for node in (nodes or {}).values() if node is not None]


def build(cfg: DictConfig) -> tuple[RetrievalModule, L.LightningDataModule, L.Trainer]:
    backbone = instantiate(cfg.model)
    datamodule = instantiate(cfg.data, backbone=backbone, seed=cfg.seed)
    module = RetrievalModule(
        backbone=backbone, loss=instantiate(cfg.loss), optimizer=instantiate(cfg.optim.optimizer),
        lr_schedule=cfg.optim.lr_schedule, warmup_ratio=cfg.optim.warmup_ratio,
        init_from=cfg.stage.init_from)
    strategy = instantiate(cfg.strategy) if OmegaConf.is_dict(cfg.strategy) else cfg.strategy
    trainer = instantiate(cfg.trainer, strategy=strategy, logger=_named(cfg.logger) or False,
                          callbacks=_named(cfg.callbacks))
    return module, datamodule, trainer


def train(cfg: DictConfig) -> dict[str, Any]:
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    module, datamodule, trainer = build(cfg)
    if trainer.is_global_zero:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=_resume_checkpoint(run_dir))
        summary: dict[str, Any] = {}
        split = cfg.eval.final_split
        if split:
            datamodule.test_split = split
            trainer.test(module, datamodule=datamodule)
            results = module.eval_results.get(split, [])
            summary = summarize(results)
            if trainer.is_global_zero and cfg.eval.report and results:
                title = f"{cfg.name}: {split} split, global pool ({results[0].pool_size} candidates)"
                paths = write_report(results, run_dir, title=title,
                                     extra={"name": cfg.name, "split": split, "seed": cfg.seed,
                                            "global_step": trainer.global_step,
                                            "world_size": trainer.world_size})
                print("\n" + format_table(results, title=title))
                print(f"\nreport: {', '.join(str(p) for p in paths.values())}")
        return summary
    finally:
        for logger in trainer.loggers:
            finalize = getattr(logger, "finalize", None)
            if finalize is not None:
                finalize("success")
        _finish_wandb()


def _resume_checkpoint(run_dir: Path) -> str | None:
    """Relaunched in the same run directory: continue from its last checkpoint."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("resuming from %s", last)
        return str(last)
    return None


def _finish_wandb() -> None:
    # One failed run in a multirun sweep must not leave a wandb run open for the next job.
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish()


def summary_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, sort_keys=True, default=str)
