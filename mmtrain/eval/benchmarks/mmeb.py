"""MMEB v1 (HF ``TIGER-Lab/MMEB-eval``, data-formats.md §3; protocol evaluation.md §2).

Each subset is parquet (``<root>/<Subset>/*.parquet``) with ``qry_text``, ``qry_img_path``, ``tgt_text``
(list) and ``tgt_img_path`` (list); index 0 of the candidate lists is the positive. As mmE5 / VLM2Vec
``eval.py`` do: unique (text, image path) pairs are embedded once per side, each query is scored
against its own row's candidates, and it is correct iff the argmax is 0 (ties go to the first
candidate, as ``np.argmax``). Task score = n_correct / rows, written as ``<subset>_score.json``
(``{"acc", "num_correct", "num_pred"}``). Aggregates: per meta-task, IND (20), OOD (16), overall (36).

Texts carry Phi-3.5-V's ``<|image_1|>`` placeholder; it is stored neutral
(``mmtrain.data.placeholders.neutralize``) and each backbone's processor renders its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mmtrain.data.placeholders import neutralize
from mmtrain.data.schema import modality_of
from mmtrain.eval.benchmarks import paper
from mmtrain.eval.benchmarks.context import EvalContext, LazyItems
from mmtrain.eval.report import BenchmarkResult, Table, pct

MMEB_TASKS = tuple(paper.MMEB_APP_E)  # the 36 subsets, in the paper's order
COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")


def read_rows(path_or_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of one subset (every parquet file under a directory, in name order)."""
    import pyarrow.parquet as pq

    p = Path(path_or_dir)
    files = sorted(p.glob("*.parquet")) if p.is_dir() else [p]
    if not files:
        raise FileNotFoundError(f"no parquet files in {p}")
    rows = []
    for f in files:
        table = pq.read_table(f)
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"{f}: missing MMEB columns {missing}")
        rows += table.select(list(COLUMNS)).to_pylist()
    for i, r in enumerate(rows):
        if len(r["tgt_text"]) != len(r["tgt_img_path"]) or not r["tgt_text"]:
            raise ValueError(f"{p} row {i}: tgt_text and tgt_img_path must be equally long, non-empty lists")
    return rows


def _key(text: str | None, path: str | None) -> tuple[str, str]:
    return (text or "", path or "")


def row_ranks(ctx: EvalContext, rows: list[dict[str, Any]], image_dir: str | Path, name: str,
              instruction: str | None = None) -> np.ndarray:
    """Per row, the rank of candidate 0 among the row's candidates (0 = the argmax), with unique
    (text, image) pairs embedded once per side."""
    def items(pairs: list[tuple[str, str]], with_instruction: bool) -> LazyItems:
        out = []
        for i, (text, path) in enumerate(pairs):
            neutral, _ = neutralize(text, bool(path))
            out.append((neutral or None, path or None, modality_of(neutral or None, path or None),
                        instruction if with_instruction else None, i))
        return LazyItems(out, image_dir)

    q_pairs = list(dict.fromkeys(_key(r["qry_text"], r["qry_img_path"]) for r in rows))
    t_pairs = list(dict.fromkeys(_key(t, p) for r in rows for t, p in zip(r["tgt_text"], r["tgt_img_path"])))
    q_index = {k: i for i, k in enumerate(q_pairs)}
    t_index = {k: i for i, k in enumerate(t_pairs)}
    q_emb = ctx.encode(items(q_pairs, True), "query", f"{name}/queries")
    t_emb = ctx.encode(items(t_pairs, False), "candidate", f"{name}/targets")
    per_row_q = q_emb[[q_index[_key(r["qry_text"], r["qry_img_path"])] for r in rows]]
    cands = [np.array([t_index[_key(t, p)] for t, p in zip(r["tgt_text"], r["tgt_img_path"])]) for r in rows]
    return ctx.row_ranks(per_row_q, t_emb, cands)


def aggregate(scores: dict[str, float]) -> dict[str, float | None]:
    """Means per meta-task, IND, OOD and overall over the evaluated tasks (None where none)."""
    def mean(names: list[str]) -> float | None:
        vals = [scores[n] for n in names if n in scores]
        return float(np.mean(vals)) if vals else None

    out = {meta: mean([t for t, v in paper.MMEB_APP_E.items() if v[0] == meta]) for meta in paper.META_TASKS}
    out["IND"] = mean([t for t, v in paper.MMEB_APP_E.items() if v[1] == "IND"])
    out["OOD"] = mean([t for t, v in paper.MMEB_APP_E.items() if v[1] == "OOD"])
    out["Overall"] = mean(list(scores))
    return out


class MMEBBenchmark:
    name = "mmeb"

    def __init__(self, root: str, image_dir: str, subsets: list[str] | None = None, title: str | None = None):
        self.root, self.image_dir = Path(root), Path(image_dir)
        self.subsets = list(subsets) if subsets else list(MMEB_TASKS)
        self.title = title or "MMEB (36 tasks, Precision@1)"

    def run(self, ctx: EvalContext) -> BenchmarkResult:
        scores, counts, files = {}, {}, {}
        for subset in self.subsets:
            rows = read_rows(self.root / subset)
            ranks = row_ranks(ctx, rows, self.image_dir, f"mmeb/{subset}")
            correct = int(np.count_nonzero(ranks == 0))
            scores[subset] = correct / len(rows)
            counts[subset] = {"acc": scores[subset], "num_correct": correct, "num_pred": len(rows)}
            files[f"{subset}_score.json"] = json.dumps(counts[subset], indent=2) + "\n"
        agg = aggregate(scores)
        return BenchmarkResult(self.name, self.title, {"tasks": counts, "aggregates": agg},
                               mmeb_tables(scores, agg), _chart(scores),
                               {f"acc/{k}": v for k, v in agg.items() if v is not None}, files=files)


def mmeb_tables(scores: dict[str, float], agg: dict[str, float | None]) -> list[Table]:
    rows: list[list[Any]] = []
    for task in [*[t for t in MMEB_TASKS if t in scores], *[t for t in scores if t not in MMEB_TASKS]]:
        meta, split, values = paper.MMEB_APP_E.get(task, ("?", "?", (None,) * len(paper.MMEB_MODELS)))
        rows.append([meta, task, split, pct(scores[task]), *values])
    per_task = Table("MMEB per task (mmE5 App. E layout)", ["Meta-task", "Task", "IND/OOD", "ours",
                     *paper.MMEB_MODELS], rows,
                     ["Precision@1 (= hit@1, first candidate is the positive), %. mmE5's MSCOCO grounding "
                      "cell prints 53.7; its own aggregates only reproduce with about 84.6."])
    cols = ["Model", *paper.META_TASKS, "IND", "OOD", "Overall"]
    agg_rows: list[list[Any]] = [["ours", *[pct(agg[k]) for k in cols[1:]]]]
    agg_rows += [[m, *v] for m, v in paper.MMEB_TABLE2.items()]
    recomputed = aggregate({t: v[2][paper.MMEB_MODELS.index("mmE5")] for t, v in paper.MMEB_APP_E.items()})
    agg_rows.append(["mmE5 (recomputed from App. E cells)", *[recomputed[k] for k in cols[1:]]])
    notes = [f"ours: means over the {len(scores)} evaluated task(s). Paper rows: mmE5 Table 2 as printed."]
    return [per_task, Table("MMEB aggregates (mmE5 Table 2 layout)", cols, agg_rows, notes)]


def _chart(scores: dict[str, float]) -> dict[str, dict[str, float | None]]:
    chart: dict[str, dict[str, float | None]] = {"ours": {t: pct(s) for t, s in scores.items()}}
    for j, model in enumerate(paper.MMEB_MODELS):
        if model in ("VLM2Vec", "mmE5"):
            chart[f"{model} (paper)"] = {t: paper.MMEB_APP_E[t][2][j] for t in scores if t in paper.MMEB_APP_E}
    return chart
