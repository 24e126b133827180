"""``train(cfg)``: compose the pieces named by the config, fit, evaluate, report.

A plain function of a composed config (``python -m mmtrain`` is a thin Hydra main over it; tests
call it with the compose API). Returns the final summary metrics.

Launched again with the same ``paths.run_dir`` (Hydra's run dir), it continues the same run: the
last complete checkpoint, the same wandb run, the data stream at the restored step
(mmtrain/run_dir.py). A stop on a signal or a time budget raises ``RunInterrupted`` after saving;
``dry_run=true`` only checks (mmtrain/preflight.py).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mmtrain.eval.metrics import summarize
from mmtrain.eval.report import pair_report, write_report
from mmtrain.lightning.callbacks import AtomicCheckpointIO, RunInterrupted
from mmtrain.lightning.module import RetrievalModule
from mmtrain.preflight import dry_run, preflight
from mmtrain.io import atomic_write_text
from mmtrain.run_dir import RunDir

log = logging.getLogger(__name__)

def _named(nodes: DictConfig | None) -> list[Any]:
    """Instantiate a dict of named ``_target_`` nodes; a null entry is switched off."""
    return [instantiate(node) for node in (nodes or {}).values() if node is not None]


def _loggers(nodes: DictConfig | None, wandb_id: str | None) -> list[Any]:
    """Like ``_named``; a wandb logger gets the run directory's wandb id so a relaunch resumes it."""
    loggers = []
    for node in (nodes or {}).values():
        if node is None:
            continue
        is_wandb = "wandb" in str(node.get("_target_", "")).lower()
        extra = {"id": wandb_id, "resume": "allow"} if is_wandb and wandb_id and "id" not in node else {}
        loggers.append(instantiate(node, **extra))
    return loggers


def cpu_threads(cfg: DictConfig) -> int | None:
    """Intra-op threads for a CPU run: the cores of this process's share minus its DataLoader workers.
    torch's default (every core) plus busy workers oversubscribes the cores, and OpenMP's spinning
    threads then slow each step many times over (measured: 0.3 vs 4.2 steps/s for the toy hard stage on
    2 cores). None (leave torch alone) off CPU or when OMP_NUM_THREADS says what the user wants."""
    if cfg.trainer.get("accelerator") != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return None
    devices = cfg.trainer.get("devices", 1)
    processes = devices if isinstance(devices, int) and devices > 0 else 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // processes - int(cfg.data.get("num_workers", 0) or 0))


def build(cfg: DictConfig, wandb_id: str | None = None) -> tuple[RetrievalModule, L.LightningDataModule, L.Trainer]:
    threads = cpu_threads(cfg)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    backbone = instantiate(cfg.model)
    # The robust group (RoCOCO SC / VC, mmtrain/data/perturb.py) drives both the collator and the loss.
    # Off (the default), neither gets the argument: everything is built exactly as without the group.
    robust = {"robust": cfg.robust} if cfg.get("robust") is not None and cfg.robust.enabled else {}
    datamodule = instantiate(cfg.data, backbone=backbone, seed=cfg.seed, **robust)
    # cfg.module picks the class (RetrievalModule, or GradCacheRetrievalModule with its chunk size).
    module_node = cfg.get("module") or {"_target_": "mmtrain.lightning.module.RetrievalModule"}
    module = instantiate(
        module_node, backbone=backbone, loss=instantiate(cfg.loss), optimizer=instantiate(cfg.optim.optimizer),
        lr_schedule=cfg.optim.lr_schedule, warmup_ratio=cfg.optim.warmup_ratio,
        init_from=cfg.stage.init_from, **robust)
    strategy = instantiate(cfg.strategy) if OmegaConf.is_dict(cfg.strategy) else cfg.strategy
    # Atomic checkpoint files (see AtomicCheckpointIO); DeepSpeed writes its own directories.
    plugins = [] if "deepspeed" in str(cfg.strategy).lower() else [AtomicCheckpointIO()]
    trainer = instantiate(cfg.trainer, strategy=strategy, logger=_loggers(cfg.logger, wandb_id) or False,
                          callbacks=_named(cfg.callbacks), plugins=plugins)
    return module, datamodule, trainer


def train(cfg: DictConfig) -> dict[str, Any]:
    if cfg.get("dry_run"):
        return dry_run(cfg)
    preflight(cfg)  # errors raise here, before anything is built
    run = RunDir(cfg.paths.run_dir)
    run.acquire()  # rank 0 owns the directory for this launch (RunDirBusy if another launch has it)
    trainer: L.Trainer | None = None
    summary: dict[str, Any] | None = None
    status, error = "failed", None
    try:
        L.seed_everything(cfg.seed, workers=True)
        module, datamodule, trainer = build(cfg, wandb_id=run.wandb_id())
        if trainer.is_global_zero:
            atomic_write_text(run.config_file, OmegaConf.to_yaml(cfg, resolve=True))
        ckpt = run.resume_checkpoint() if cfg.run.resume else None
        if ckpt is not None:
            log.info("resuming from %s", ckpt)
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)
        summary = _finished_summary(run, cfg, trainer.global_step)
        if summary is None:
            summary = _evaluate(cfg, run.path, module, datamodule, trainer)
        status = "completed"
        return summary | {"status": status, "global_step": trainer.global_step}
    except (RunInterrupted, SystemExit) as e:  # SystemExit: Lightning's SIGTERMException, submitit's requeue
        status, error = "interrupted", str(e) or type(e).__name__
        _quietly(_mark_wandb_preempting)
        raise
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        if trainer is not None:
            if trainer.is_global_zero:
                _write_summary(run, cfg, status, trainer.global_step, trainer.world_size, error,
                               summary if status == "completed" else None)
            for logger in trainer.loggers:
                finalize = getattr(logger, "finalize", None)
                if finalize is not None:
                    _quietly(finalize, "success" if status == "completed" else "failed")
        # One failed job of a multirun sweep must not leave a wandb run or a process group behind.
        _quietly(_finish_wandb, 0 if status == "completed" else 1)
        _destroy_process_group()
        run.release()


def _quietly(fn: Any, *args: Any) -> None:
    """Clean-up after a stop must not replace the run's own outcome: on SLURM's SIGTERM the wandb
    service process is signalled too and its connection may already be gone."""
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001
        log.warning("clean-up %s failed: %s: %s", getattr(fn, "__name__", fn), type(e).__name__, e)


def _evaluate(cfg: DictConfig, run_dir: Path, module: RetrievalModule, datamodule: L.LightningDataModule,
              trainer: L.Trainer) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    split = cfg.eval.final_split
    if split:
        datamodule.test_split = split
        trainer.test(module, datamodule=datamodule)
        sets = module.eval_results.get(split, {})
        results = sets[datamodule.POOL].pairs if datamodule.POOL in sets else []
        summary = summarize(results)
        text = sets[datamodule.TEXT].summary if datamodule.TEXT in sets else None
        if text is not None:  # the text set (data.text_retrieval): MTEB's nDCG@10
            summary["text"] = text
        if trainer.is_global_zero and cfg.eval.report and results:
            report = pair_report(results, f"{cfg.name}: {split} split, global pool ({results[0].pool_size} candidates)")
            extra = {"name": cfg.name, "split": split, "seed": cfg.seed, "global_step": trainer.global_step,
                     "world_size": trainer.world_size}
            if text is not None:
                extra |= {"text_retrieval": text, "text_ndcg10": text["ndcg@10"]}
            paths = write_report(report, run_dir, extra)
            print("\n" + report.to_markdown())
            if text is not None:
                print(f"\ntext retrieval ({text['name']}, {text['num_queries']} queries, {text['corpus_size']} "
                      f"documents): nDCG@10 {100 * text['ndcg@10']:.1f}")
            print(f"\nreport: {', '.join(str(p) for p in paths.values())}")
    if cfg.eval.get("benchmarks"):  # e.g. mmE5's MMEB + XTD on the trained encoder, in the same report
        from mmtrain.eval.benchmarks.after_training import run_benchmarks

        summary["benchmarks"] = run_benchmarks(cfg, run_dir, module, datamodule, trainer)
    return summary


def _finished_summary(run: RunDir, cfg: DictConfig, global_step: int) -> dict[str, Any] | None:
    """A relaunch of a run that already finished and evaluated at this step reuses that evaluation
    (every rank reads the same file, so all skip or none do)."""
    try:
        saved = json.loads(run.summary_file.read_text())
    except (OSError, ValueError):
        return None
    same = (saved.get("status") == "completed" and saved.get("global_step") == global_step
            and saved.get("split") == cfg.eval.final_split and saved.get("summary") is not None)
    if not same or (cfg.eval.final_split and cfg.eval.report and not run.results_file.is_file()):
        return None
    log.info("run already finished and evaluated at step %d: reusing %s", global_step, run.summary_file)
    summary = saved["summary"]
    if isinstance(summary.get("recall"), dict):  # JSON made the k of R@k a string
        summary["recall"] = {int(k) if str(k).isdigit() else k: v for k, v in summary["recall"].items()}
    return summary


def _write_summary(run: RunDir, cfg: DictConfig, status: str, global_step: int, world_size: int,
                   error: str | None, summary: dict[str, Any] | None) -> None:
    """``summary.json``: what this launch ended with (sweeps tabulate it; relaunches reuse it)."""
    if summary is not None:
        summary = {k: v for k, v in summary.items() if k not in ("status", "global_step")}
    payload = {"name": cfg.name, "status": status, "global_step": global_step, "world_size": world_size,
               "split": cfg.eval.final_split, "error": error, "summary": summary,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        atomic_write_text(run.summary_file, json.dumps(payload, indent=1, default=str) + "\n")
    except OSError as e:  # never hide the run's own exception behind a failed summary write
        log.warning("could not write %s: %s", run.summary_file, e)


def _mark_wandb_preempting() -> None:
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.run.mark_preempting()


def _finish_wandb(exit_code: int = 0) -> None:
    # One failed run in a multirun sweep must not leave a wandb run open for the next job.
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as e:  # noqa: BLE001 (teardown after a failure: report, do not mask it)
            log.warning("destroy_process_group failed: %s", e)


def summary_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, sort_keys=True, default=str)
