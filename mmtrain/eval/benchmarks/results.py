"""Benchmark results in one shape, and how they are written: JSON, a Markdown table, a PNG chart, wandb.

Benchmarks differ in metric shape (M-BEIR pairs, MMEB per-task accuracy, RoCOCO false rates, ...), so
an adapter returns a ``BenchmarkResult``: the raw metrics (fractions in [0, 1], JSON-ready), tables
laid out like the papers' tables with the paper's numbers beside ours, and chart series. M-BEIR-shaped
pair results additionally go through ``mmtrain.eval.report.write_report`` (same files as a training
run's report), one subdirectory per pool.
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmtrain.eval.metrics import METRICS_VERSION, PairResult
# Shared with the training report: atomic file writes and JSON conversion of numpy scalars/paths.
from mmtrain.eval.report import _atomic_write_bytes, _json_default, write_report

log = logging.getLogger(__name__)
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
    if c is None:
        return "-"
    if isinstance(c, bool):
        return str(c)
    if isinstance(c, int):
        return str(c)
    if isinstance(c, float):
        return f"{c:.1f}"
    return str(c)


@dataclass
class BenchmarkResult:
    benchmark: str
    title: str
    metrics: dict[str, Any]                      # fractions, nested, JSON-ready
    tables: list[Table]
    chart: dict[str, dict[str, float | None]]    # series name -> {label: percent}
    headline: dict[str, float]                   # flat scalars (fractions) for wandb / sweeps
    pair_reports: dict[str, list[PairResult]] = field(default_factory=dict)  # subdir -> pairs
    files: dict[str, str] = field(default_factory=dict)  # extra text files: relative name -> content

    def to_markdown(self) -> str:
        return f"## {self.title}\n\n" + "\n".join(t.to_markdown() for t in self.tables)


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


def write_result(result: BenchmarkResult, out_dir: str | os.PathLike, extra: dict[str, Any]) -> dict[str, Path]:
    """results.json / results.md / results.png in ``out_dir``, M-BEIR-shaped pair reports in
    ``out_dir/<pool>/``, and the adapter's extra files. Everything is serialised before anything is
    written, so a bad value leaves no partial report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": result.benchmark, "title": result.title, "metrics_version": METRICS_VERSION,
               "headline": result.headline, "metrics": result.metrics,
               "tables": [{"title": t.title, "columns": t.columns, "rows": t.rows, "notes": t.notes}
                          for t in result.tables],
               "extra": extra}
    blobs = {
        "results.json": (json.dumps(payload, indent=2, default=_json_default, allow_nan=False) + "\n").encode(),
        "results.md": result.to_markdown().encode(),
        "results.png": plot_chart(result.chart, result.title),
        **{name: text.encode() for name, text in result.files.items()},
    }
    paths = {}
    for name, data in blobs.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(path, data)
        paths[name] = path
    for sub, pairs in result.pair_reports.items():
        if pairs:
            written = write_report(pairs, out / sub, title=f"{result.title}: {sub}", extra=extra)
            paths |= {f"{sub}/{p.name}": p for p in written.values()}
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
