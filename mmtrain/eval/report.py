"""Evaluation results in one shape, and the one writer of reports: JSON, Markdown, PNG, wandb.

Benchmarks differ in metric shape (M-BEIR pairs, MMEB per-task accuracy, RoCOCO false rates, ...), so
a result is a ``BenchmarkResult``: the raw metrics (fractions in [0, 1], JSON-ready), headline scalars,
tables laid out like the papers' tables with the paper's numbers beside ours, chart series and, for an
M-BEIR-shaped result (a training run's final split, ``pair_report``), the per-pair rows.

``write_report`` writes ``results.json``, ``results.md`` and ``results.png`` into one directory (pair
reports per pool in subdirectories, the same files). Every ``results.json`` has the same keys:
benchmark, title, metrics_version, headline, metrics, tables, pairs (``PairResult.to_dict`` rows, empty
when the result has none), summary (``summarize(pairs)``, null without pairs) and extra (run metadata).
A pair result's Markdown is ``format_table``'s table and its chart the per-pair bars (``_plot_pairs``).
Everything is serialised before anything is written (a bad value leaves no partial report) and each
file is renamed into place (``mmtrain.io``).
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmtrain.eval.metrics import METRICS_VERSION, PairResult, summarize
from mmtrain.io import atomic_write_bytes

Cell = str | int | float | None


def pct(x: float | None) -> float | None:
    """A fraction as a percentage (tables show percent, like the papers)."""
    return None if x is None else 100.0 * float(x)


@dataclass
class Table:
    """A table as the paper lays it out. Float cells are percentages (one decimal), None is "-"."""

    title: str
    columns: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        cells = [[_cell(c) for c in row] for row in self.rows]
        widths = [max(len(r[i]) for r in [self.columns, *cells]) for i in range(len(self.columns))]
        numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in self.rows)
                   for i in range(len(self.columns))]

        def line(values: list[str]) -> str:
            return "| " + " | ".join(v.rjust(w) if num else v.ljust(w)
                                     for v, w, num in zip(values, widths, numeric)) + " |"

        rule = "| " + " | ".join(("-" * (w - 1) + ":") if num else "-" * w
                                 for w, num in zip(widths, numeric)) + " |"
        out = [f"### {self.title}", "", line(self.columns), rule, *[line(r) for r in cells]]
        if self.notes:
            out += ["", *self.notes]
        return "\n".join(out) + "\n"


def _cell(c: Cell) -> str:
    return "-" if c is None else f"{c:.1f}" if isinstance(c, float) else str(c)


@dataclass
class BenchmarkResult:
    """What an evaluation reports (a benchmark adapter's ``run``, a training run's final split)."""

    benchmark: str
    title: str
    metrics: dict[str, Any]                      # fractions, nested, JSON-ready
    tables: list[Table]
    chart: dict[str, dict[str, float | None]]    # series name -> {label: percent}
    headline: dict[str, float]                   # flat scalars (fractions) for wandb / sweeps
    pair_reports: dict[str, list[PairResult]] = field(default_factory=dict)  # subdir -> pairs
    files: dict[str, str] = field(default_factory=dict)  # extra text files: relative name -> content
    pairs: list[PairResult] = field(default_factory=list)  # M-BEIR-shaped rows (``pair_report``)

    def to_markdown(self) -> str:
        if self.pairs and not self.tables:
            return format_table(self.pairs, title=self.title)
        return f"## {self.title}\n\n" + "\n".join(t.to_markdown() for t in self.tables)

    def to_json(self, extra: dict[str, Any]) -> dict[str, Any]:
        summary = summarize(self.pairs) if self.pairs else None
        if summary is not None:
            summary["recall"] = {str(k): v for k, v in summary["recall"].items()}
        return {"benchmark": self.benchmark, "title": self.title, "metrics_version": METRICS_VERSION,
                "headline": self.headline, "metrics": self.metrics,
                "tables": [{"title": t.title, "columns": t.columns, "rows": t.rows, "notes": t.notes}
                           for t in self.tables],
                "pairs": [r.to_dict() for r in self.pairs], "summary": summary, "extra": extra}


def pair_report(pairs: Sequence[PairResult], title: str, benchmark: str = "mbeir") -> BenchmarkResult:
    """A result made of M-BEIR pair rows (a training run's split, one pool of the M-BEIR benchmark)."""
    if not pairs:
        raise ValueError("no results to report")
    summary = summarize(pairs)
    headline = {k: summary[k] for k in ("headline", "single_modal_query", "multi_modal_query", "modality_acc")
                if summary[k] is not None}
    return BenchmarkResult(benchmark, title, {}, [], {}, headline, pairs=list(pairs))


def _pct(x: float | None) -> str:
    """A rate as a percentage with one decimal, like the papers' tables."""
    return "-" if x is None else f"{100.0 * x:.1f}"


def _pct_small(x: float | None) -> str:
    """A percentage with two significant digits, so a chance level of 1e-5 % does not print 0.0."""
    if x is None:
        return "-"
    pct = 100.0 * x
    if pct == 0.0:
        return "0"
    if pct >= 1.0:
        return f"{pct:.1f}"
    decimals = min(12, 1 - math.floor(math.log10(pct)))
    return f"{pct:.{decimals}f}"


def _recall_ks(results: Sequence[PairResult]) -> list[int]:
    return sorted({k for r in results for k in r.recall})


def format_table(results: Sequence[PairResult], title: str | None = None) -> str:
    """A Markdown table of the results, columns padded so it also reads as plain text.

    One row per pair (Task | Dataset | Queries | R@k... | M.A.@1 | chance R@5, in %), a "mean" row
    (unweighted over pairs), then notes with the M-BEIR headline averages.
    """
    ks = _recall_ks(results)
    header = ["Task", "Dataset", "Queries", *[f"R@{k}" for k in ks], "M.A.@1", "chance R@5"]
    rows = [[f"{r.task} [{r.task_id}]", r.dataset, str(r.num_queries),
             *[_pct(r.recall.get(k)) for k in ks], _pct(r.modality_acc), _pct_small(r.chance_r5)]
            for r in results]
    summary = summarize(results)
    if results:
        rows.append(["mean", f"{len(results)} pairs", str(summary["num_queries"]),
                     *[_pct(summary["recall"].get(k)) for k in ks],
                     _pct(summary["modality_acc"]), _pct_small(summary["chance_r5"])])

    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    left = {0, 1}  # text columns left-aligned, numbers right-aligned

    def fmt(cells: list[str]) -> str:
        padded = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join("-" * w if i in left else "-" * (w - 1) + ":"
                             for i, w in enumerate(widths)) + " |"
    lines = [f"## {title}", ""] if title else []
    lines += [fmt(header), rule, *[fmt(r) for r in rows], ""]
    lines.append("Rates in %; headline = R@5 (R@10 for Fashion200K and FashionIQ); means are "
                 "unweighted over pairs.")
    lines.append(f"Headline: Avg. All {_pct(summary['headline'])} | Single-modal Qry "
                 f"{_pct(summary['single_modal_query'])} | Multi-modal Qry "
                 f"{_pct(summary['multi_modal_query'])}")
    return "\n".join(lines) + "\n"


def _json_default(obj: object) -> object:
    # numpy scalars and paths show up in run metadata; anything else is a caller error.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def plot_chart(chart: dict[str, dict[str, float | None]], title: str) -> bytes:
    """Grouped bars (one group per label, one bar per series, values in %) as PNG bytes; object API
    with an explicit Agg canvas, like report.py (no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(dict.fromkeys(label for series in chart.values() for label in series))
    n, m = len(labels), max(1, len(chart))
    fig = Figure(figsize=(min(20.0, max(7.0, 0.55 * n * max(1, m / 2) + 3.0)), 5.0))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = np.arange(n)
    width = 0.8 / m
    for j, (name, series) in enumerate(chart.items()):
        vals = [series.get(label) for label in labels]
        ax.bar(x + (j - (m - 1) / 2) * width, [np.nan if v is None else v for v in vals], width,
               label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8, rotation=35 if n > 6 else 0, ha="right" if n > 6 else "center",
                       rotation_mode="anchor")
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(title, fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _plot_pairs(results: Sequence[PairResult], title: str) -> bytes:
    """The grouped bar chart as PNG bytes.

    Uses the object-oriented API with an explicit Agg canvas instead of pyplot: no global backend
    switch, no figure registry, nothing left open.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ks = _recall_ks(results)
    summary = summarize(results)
    n = len(results)
    x = np.arange(n)
    width = 0.8 / max(1, len(ks))
    fig = Figure(figsize=(min(18.0, max(7.0, 0.8 * n + 3.0)), 6.5))
    FigureCanvasAgg(fig)
    ax, ax_ma = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})

    colors = ["#9ecae1", "#4292c6", "#08519c", "#08306b"]
    for j, k in enumerate(ks):
        vals = [100.0 * r.recall.get(k, np.nan) for r in results]
        ax.bar(x + (j - (len(ks) - 1) / 2) * width, vals, width, label=f"R@{k}",
               color=colors[j % len(colors)], edgecolor="white", linewidth=0.5)
    # The headline cutoff differs by dataset (R@10 for the fashion sets): mark its bar.
    marked = [(i, r) for i, r in enumerate(results) if r.headline_k in ks]
    head_x = [i + (ks.index(r.headline_k) - (len(ks) - 1) / 2) * width for i, r in marked]
    head_v = [100.0 * r.headline for _, r in marked]
    ax.scatter(head_x, [v + 4.5 for v in head_v], marker="v", s=22, color="black", zorder=3,
               label="headline (value)")
    for hx, v in zip(head_x, head_v):
        ax.text(hx, v + 6.5, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    # Chance differs per pair (pool size, number of relevant): one short segment per pair group.
    mean_chance = _pct_small(summary["chance_r5"])
    for i, r in enumerate(results):
        ax.hlines(100.0 * r.chance_r5, i - 0.45, i + 0.45, colors="#d62728", linestyles="--",
                  linewidth=1.5, label=f"chance R@5\n(mean {mean_chance} %)" if i == 0 else None)
    ax.set_ylim(0, 118)
    ax.set_ylabel("Recall (hit rate, %)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: not labels[i].startswith("R@"))  # bars first
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper left",
              bbox_to_anchor=(1.005, 1.0), fontsize=9, frameon=False)

    ma = [100.0 * r.modality_acc for r in results]
    ax_ma.bar(x, ma, 0.5, color="#31a354", label="M.A.@1")
    for i, v in enumerate(ma):
        ax_ma.text(i, v + 2, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    ax_ma.set_ylim(0, 118)
    ax_ma.set_ylabel("M.A.@1 (%)")
    ax_ma.grid(axis="y", alpha=0.3)
    ax_ma.set_axisbelow(True)
    ax_ma.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=9, frameon=False)
    ax_ma.set_xticks(x)
    ax_ma.set_xticklabels([f"{r.dataset}\n{r.task} [{r.task_id}]" for r in results],
                          fontsize=8, rotation=30 if n > 8 else 0, ha="right" if n > 8 else "center",
                          rotation_mode="anchor")
    ax.set_title(f"{title}\nAvg. All (headline) {_pct(summary['headline'])} %, "
                 f"mean M.A.@1 {_pct(summary['modality_acc'])} %", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def write_report(result: BenchmarkResult, out_dir: str | os.PathLike, extra: dict[str, Any] | None = None
                 ) -> dict[str, Path]:
    """results.json / results.md / results.png in ``out_dir`` (created if missing), each pair report in
    ``out_dir/<pool>/`` (the same files), and the result's extra files. ``extra``: run metadata stored
    verbatim (model, checkpoint, pool hashes... evaluation.md §0; numpy scalars and paths are converted).
    Returns {relative file name: path}."""
    extra = extra or {}
    blobs = {
        "results.json": (json.dumps(result.to_json(extra), indent=2, default=_json_default, allow_nan=False)
                         + "\n").encode(),
        "results.md": result.to_markdown().encode(),
        "results.png": (_plot_pairs(result.pairs, result.title) if result.pairs and not result.chart
                        else plot_chart(result.chart, result.title)),
        **{name: text.encode() for name, text in result.files.items()},
    }
    out = Path(out_dir)
    paths = {}
    for name, data in blobs.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        paths[name] = atomic_write_bytes(path, data)
    for sub, pairs in result.pair_reports.items():
        if pairs:
            written = write_report(pair_report(pairs, f"{result.title}: {sub}", result.benchmark), out / sub, extra)
            paths |= {f"{sub}/{name}": p for name, p in written.items()}
    return paths


def log_wandb(result: BenchmarkResult, paths: dict[str, Path], *, project: str, name: str, mode: str,
              run_dir: str | os.PathLike, config: dict[str, Any]) -> None:
    """Headline scalars, every table and the chart to a wandb run (``mode``: online / offline /
    disabled / auto = online with credentials, else offline; ``WANDB_MODE`` wins)."""
    import wandb

    from mmtrain.lightning.loggers import wandb_has_credentials

    mode = os.environ.get("WANDB_MODE", mode)
    if mode == "auto":
        mode = "online" if wandb_has_credentials() else "offline"
    run = wandb.init(project=project, name=name, dir=str(run_dir), mode=mode, config=config,
                     job_type="evaluation", reinit="finish_previous")
    try:
        run.log({f"{result.benchmark}/{k}": v for k, v in result.headline.items()})
        for t in result.tables:
            run.log({f"{result.benchmark}/{t.title}": wandb.Table(
                columns=t.columns, data=[[_cell(c) for c in row] for row in t.rows])})
        if "results.png" in paths:
            run.log({f"{result.benchmark}/chart": wandb.Image(str(paths["results.png"]))})
    finally:
        run.finish()
