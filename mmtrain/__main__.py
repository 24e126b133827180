"""``python -m mmtrain [+experiment=NAME] [overrides]``: a thin Hydra main over ``mmtrain.train.train``.

Without ``+experiment`` it runs ``default_pipeline`` (conf/config.yaml: the toy world's staged MM-Embed
recipe, mmtrain/pipeline.py); an experiment runs its ``pipeline`` when it has one, else one training run.

Exit status: 0 finished (or a clean dry run), 1 failed (or a dry run that found problems),
75 (EX_TEMPFAIL) stopped early on a signal or the time budget with a checkpoint: run the same
command again to continue. Inside a multirun sweep a failed job, or one that ran out of its time
budget, does not exit: Hydra records it and goes on; a signal still stops the whole process.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

import mmtrain.config  # noqa: F401  (registers the config schemas)

EXIT_INTERRUPTED = 75


def stages_to_run(cfg: DictConfig) -> list[str]:
    """The experiments of a staged run, or [] for a single run."""
    from hydra.core.hydra_config import HydraConfig

    if cfg.pipeline:
        return list(cfg.pipeline)
    chose_experiment = HydraConfig.initialized() and HydraConfig.get().runtime.choices.get("experiment")
    return [] if chose_experiment else list(cfg.default_pipeline)


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(config_path="pkg://mmtrain.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from mmtrain.lightning.callbacks import RunInterrupted
    from mmtrain.train import train  # heavy imports only once the config composed

    stages = stages_to_run(cfg)
    if cfg.dry_run:
        from mmtrain.preflight import PreflightError, Problem, dry_run
        if stages:
            from mmtrain.pipeline import dry_run_pipeline, pipeline_overrides
            report = dry_run_pipeline(stages, pipeline_overrides())
        else:
            report = dry_run(cfg)
        if not report["ok"]:
            if _multirun():
                raise PreflightError([Problem(**p) for p in report["problems"]])
            sys.exit(1)
        return None
    try:
        if stages:  # a staged recipe: each stage composed from its experiment, run in turn
            from mmtrain.pipeline import pipeline_overrides, run_pipeline
            ran = run_pipeline(stages, pipeline_overrides())
            summary = ran[-1]["results"]["summary"] if ran else {}
        else:
            summary = train(cfg)
    except RunInterrupted as e:
        print(f"\n{e}\nrelaunch the same command (same run directory) to continue", flush=True)
        if _multirun() and e.reason == "time_limit":
            raise  # this job's own budget: the sweep goes on with the next job
        sys.exit(EXIT_INTERRUPTED)  # a signal stops the whole process, a sweep included
    # A float return value lets Hydra sweepers optimise the headline metric.
    value = summary.get("headline")
    return float(value) if isinstance(value, (int, float)) else None


if __name__ == "__main__":
    main()
