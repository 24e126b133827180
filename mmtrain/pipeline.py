"""A staged recipe in one invocation: each stage is an experiment, run one after another.

``cfg.pipeline`` lists experiment names (e.g. the toy world's rand -> hard -> continual). Each stage is
composed exactly as ``python -m mmtrain +experiment=<stage> <the user's overrides>`` would compose it,
and runs in ``<paths.pipeline_dir>/<stage.name>``; stages find each other's checkpoints and negatives
tables through the run layout (``${stage_output:hard,checkpoint}`` in conf/stage/*.yaml,
mmtrain/run_dir.py), so a stage can also be rerun on its own. A stage that already reached its
max_steps resumes from its last checkpoint and is not trained again. ``dry_run_pipeline`` checks every
stage without training (mmtrain/preflight.py).

At the end: one table per metric with a column per stage (MM-Embed Tables 1 and 2: R@5 and the modality
accuracy of the top-1, M.A.@1, per task; the text set's nDCG@10 when the data has one, Table 6), written as
pipeline.{md,json} into ``pipeline_dir``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra import compose
from omegaconf import DictConfig

from mmtrain.dist import is_global_zero
from mmtrain.io import atomic_write_json, atomic_write_text
from mmtrain.preflight import dry_run
from mmtrain.run_dir import PIPELINE_REPORT, RunDir, mined_table, stage_dir
from mmtrain.train import train


def stage_config(experiment: str, overrides: list[str]) -> DictConfig:
    """The composed config of one stage (needs an initialised Hydra, as inside ``hydra.main``)."""
    cfg = compose("config", overrides=[*overrides, f"+experiment={experiment}"])
    cfg.paths.run_dir = str(stage_dir(cfg.paths.pipeline_dir, cfg.stage.name))
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
        results = json.loads(RunDir(cfg.paths.run_dir).results_file.read_text())
        stages.append({"stage": cfg.stage.name, "experiment": experiment, "run_dir": cfg.paths.run_dir,
                       "results": results, "pipeline_dir": cfg.paths.pipeline_dir})
    if stages and is_global_zero():
        table = format_stage_table(stages)
        report = Path(stages[0]["pipeline_dir"]) / PIPELINE_REPORT
        atomic_write_text(report.with_suffix(".md"), table + "\n")
        atomic_write_json(report.with_suffix(".json"),
                          [{k: s[k] for k in ("stage", "experiment", "run_dir")} | {"summary": s["results"]["summary"]}
                           for s in stages], indent=1)
        print("\n" + table + f"\n\npipeline report: {report.with_suffix('.md')}")
    return stages


def dry_run_pipeline(experiments: list[str], overrides: list[str], out: Any = print) -> dict[str, Any]:
    """Each stage of a pipeline in turn; what an earlier stage will write (its checkpoint, its mined
    table) counts as present for the later ones."""
    will_exist: list[str] = []
    reports = []
    for experiment in experiments:
        cfg = stage_config(experiment, overrides)
        out(f"=== stage {cfg.stage.name} ({experiment})")
        reports.append(dry_run(cfg, will_exist, out))
        will_exist.append(str(RunDir(cfg.paths.run_dir).last_checkpoint))
        for callback in (cfg.get("callbacks") or {}).values():  # every miner (mining, mining_text, ...)
            if callback is not None and "Mining" in str(callback.get("_target_", "")) and callback.get("work_dir"):
                will_exist.append(str(mined_table(callback.work_dir)))
    return {"status": "dry_run", "ok": all(r["ok"] for r in reports),
            "problems": [p for r in reports for p in r["problems"]]}


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
