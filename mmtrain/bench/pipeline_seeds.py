"""Run the toy rand -> hard -> continual pipeline on several seeds and check MM-Embed's claims.

    python -m mmtrain.bench.pipeline_seeds --seeds 0 1 2 [--output-dir outputs/seeds] [override ...]

Each seed is one ``python -m mmtrain +experiment=toy_clip_sf_pipeline seed=S data.toy_world.seed=S``
(a new toy world and new initial weights). Afterwards every figure below is read back from the stages'
``results.json`` and the mining tables' statistics, and printed with its threshold:

- stage 1: mean R@5 >= 0.35, and t->i M.A.@1 <= 0.30 (the modality bias is there);
- mining: >= 90 % of the training t->i queries get at least one C1 negative;
- stage 2: t->i M.A.@1 >= 0.70 and >= 0.50 above stage 1; mean M.A.@1 >= 0.85; mean R@5 >= 0.75 and
  >= 0.20 above stage 1; every task's R@5 >= 0.40;
- stage 3: multimodal mean R@5 within 0.02 of stage 2's (and the text score, when the stage has one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from mmtrain.run_dir import output_path, stage_dir


def stage_results(pipeline_dir: Path, stage: str) -> dict:
    return json.loads(output_path(stage_dir(pipeline_dir, stage), "results").read_text())


def t2i(results: dict, metric: str) -> float:
    return next(p[metric] for p in results["pairs"] if p["task_id"] == 0)


def checks(pipeline_dir: Path) -> list[tuple[str, float, str, bool]]:
    s1, s2 = stage_results(pipeline_dir, "rand"), stage_results(pipeline_dir, "hard")
    mining = json.loads((output_path(stage_dir(pipeline_dir, "rand"), "negatives") / "meta.json").read_text())["stats"]
    r1, r2 = s1["summary"]["headline"], s2["summary"]["headline"]
    m1, m2 = t2i(s1, "modality_acc"), t2i(s2, "modality_acc")
    worst = min(p["headline"] for p in s2["pairs"])
    rows = [
        ("stage 1 mean R@5", r1, ">= 0.35", r1 >= 0.35),
        ("stage 1 t->i M.A.@1", m1, "<= 0.30", m1 <= 0.30),
        ("mining: t->i queries with C1", mining["t->i"]["share_with_c1"], ">= 0.90", mining["t->i"]["share_with_c1"] >= 0.90),
        ("stage 2 t->i M.A.@1", m2, ">= 0.70", m2 >= 0.70),
        ("stage 2 t->i M.A.@1 - stage 1", m2 - m1, ">= 0.50", m2 - m1 >= 0.50),
        ("stage 2 mean M.A.@1", s2["summary"]["modality_acc"], ">= 0.85", s2["summary"]["modality_acc"] >= 0.85),
        ("stage 2 mean R@5", r2, ">= 0.75", r2 >= 0.75),
        ("stage 2 mean R@5 - stage 1", r2 - r1, ">= 0.20", r2 - r1 >= 0.20),
        ("stage 2 worst task R@5", worst, ">= 0.40", worst >= 0.40),
    ]
    if output_path(stage_dir(pipeline_dir, "continual"), "results").is_file():
        s3 = stage_results(pipeline_dir, "continual")
        r3 = s3["summary"]["headline"]
        rows.append(("stage 3 mean R@5 - stage 2", r3 - r2, "within 0.02", abs(r3 - r2) <= 0.02 or r3 > r2))
        text2, text3 = s2["extra"].get("text_ndcg10"), s3["extra"].get("text_ndcg10")
        if text2 is not None and text3 is not None:
            rows.append(("stage 3 text nDCG@10 - stage 2", text3 - text2, "> 0", text3 > text2))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--output-dir", default="outputs/pipeline_seeds")
    ap.add_argument("--skip-run", action="store_true", help="only read the results of earlier runs")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides passed to every run")
    args = ap.parse_args()
    table = []
    for seed in args.seeds:
        if not args.skip_run:
            subprocess.run([sys.executable, "-m", "mmtrain", "+experiment=toy_clip_sf_pipeline", f"seed={seed}",
                            f"data.toy_world.seed={seed}", f"paths.output_dir={args.output_dir}", "logger=csv",
                            *args.overrides], check=True)
        table.append((seed, checks(Path(args.output_dir) / "toy_clip_sf" / f"seed{seed}")))
    print("\n| check | threshold | " + " | ".join(f"seed {s}" for s, _ in table) + " |")
    print("|---|---|" + "---:|" * len(table))
    for i, (name, _, threshold, _) in enumerate(table[0][1]):
        cells = [f"{rows[i][1]:.3f} {'pass' if rows[i][3] else 'FAIL'}" for _, rows in table]
        print(f"| {name} | {threshold} | " + " | ".join(cells) + " |")
    failed = sum(not r[3] for _, rows in table for r in rows)
    print(f"\n{failed} failed checks over {len(table)} seeds")


if __name__ == "__main__":
    main()
