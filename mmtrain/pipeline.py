"""A staged recipe in one invocation: each stage is an experiment, run one after another.

``cfg.pipeline`` lists experiment names (e.g. the toy world's rand -> hard -> continual). Each stage is
composed exactly as ``python -m mmtrain +experiment=<stage> <the user's overrides>`` would compose it,
and runs in ``<paths.pipeline_dir>/<stage.name>``; stages find each other's checkpoints and negatives
tables by that convention (conf/stage/*.yaml), so a stage can also be rerun on its own. A stage
that already reached its max_steps resumes from its last checkpoint and is not trained again.

At the end: one table per metric with a column per stage (MM-Embed Tables 1 and 2: R@5 and the modality
accuracy of the top-1, M.A.@1, per task; the text set's nDCG@10 when the data has one, Table 6), written as
pipeline.{md,json} into ``pipeline_dir``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hydra import compose
from omegaconf import DictConfig

from mmtrain.train import train


def stage_config(experiment: str, overrides: list[str]) -> DictConfig:
    """The composed config of one stage (needs an initialised Hydra, as inside ``hydra.main``)."""
    cfg = compose("config", overrides=[*overrides, f"+experiment={experiment}"])
    run_dir = Path(cfg.paths.pipeline_dir) / cfg.stage.name
    cfg.paths.run_dir = str(run_dir)
    cfg.pipeline = []
    return cfg


def run_pipeline(experiments: list[str], overrides: list[str]) -> list[dict[str, Any]]:
    """Run the stages in order; returns one ``{"stage", "run_dir", "results"}`` per stage."""
    overrides = [o for o in overrides if not o.lstrip("+~").startswith(("experiment=", "pipeline="))]
    stages = []
    for experiment in experiments:
        cfg = stage_config(experiment, overrides)
        print(f"\n=== stage {cfg.stage.name} ({experiment}) -> {cfg.paths.run_dir}", flush=True)
        train(cfg)
        results = json.loads((Path(cfg.paths.run_dir) / "results.json").read_text())
        stages.append({"stage": cfg.stage.name, "experiment": experiment, "run_dir": cfg.paths.run_dir,
                       "results": results, "pipeline_dir": cfg.paths.pipeline_dir})
    if stages and _is_global_zero():
        table = format_stage_table(stages)
        out = Path(stages[0]["pipeline_dir"])
        (out / "pipeline.md").write_text(table + "\n")
        (out / "pipeline.json").write_text(json.dumps(
            [{k: s[k] for k in ("stage", "experiment", "run_dir")} | {"summary": s["results"]["summary"]}
             for s in stages], indent=1))
        print("\n" + table + f"\n\npipeline report: {out / 'pipeline.md'}")
    return stages


def _is_global_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) == 0


def format_stage_table(stages: list[dict]) -> str:
    """R@5 (headline) and M.A.@1 per task, a column per stage, plus the means."""
    names = [s["stage"] for s in stages]
    first = stages[0]["results"]["pairs"]
    lines = []
    for metric, label in (("headline", "R@5 (R@10 for fashion datasets)"), ("modality_acc", "M.A.@1")):
        lines += [f"### {label}, %", "",
                  "| Task | Dataset | " + " | ".join(names) + " |",
                  "|---|---|" + "---:|" * len(names)]
        for i, p in enumerate(first):
            cells = [f"{100 * s['results']['pairs'][i][metric]:.1f}" for s in stages]
            lines.append(f"| {p['task']} [{p['task_id']}] | {p['dataset']} | " + " | ".join(cells) + " |")
        means = [f"**{100 * s['results']['summary'][metric]:.1f}**" for s in stages]
        lines += ["| mean | | " + " | ".join(means) + " |", ""]
    texts = [s["results"].get("extra", {}).get("text_retrieval") for s in stages]
    if any(texts):
        name = next(t for t in texts if t)["name"]
        cells = [f"{100 * t['ndcg@10']:.1f}" if t else "—" for t in texts]
        lines += ["### Text retrieval, nDCG@10 ×100", "", "| Set | " + " | ".join(names) + " |",
                  "|---|" + "---:|" * len(names), f"| {name} | " + " | ".join(cells) + " |", ""]
    return "\n".join(lines).rstrip()


def pipeline_overrides() -> list[str]:
    """The overrides the user gave on the command line (inside ``hydra.main``)."""
    from hydra.core.hydra_config import HydraConfig
    return list(HydraConfig.get().overrides.task)
