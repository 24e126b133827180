"""The results report of an evaluation: a Markdown table, a JSON file and a bar chart.

``write_report`` writes, into one directory, ``results.json`` (pair rows, summary, metadata),
``results.md`` (the table of ``format_table``) and ``results.png``. Each file is written to a
temporary name and renamed into place, so a reader never sees a half-written report.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmtrain.eval.metrics import METRICS_VERSION, PairResult, summarize


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


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(obj: object) -> object:
    # numpy scalars and paths show up in run metadata; anything else is a caller error.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _plot_png(results: Sequence[PairResult], title: str) -> bytes:
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


def write_report(results: Sequence[PairResult], out_dir: str | os.PathLike, *, title: str,
                 extra: dict | None = None) -> dict[str, Path]:
    """Write results.json, results.md and results.png into ``out_dir`` (created if missing).

    ``extra`` is run metadata stored verbatim in the JSON (model revision, instruction template,
    pool hashes... evaluation.md §0); it must be JSON-serialisable (numpy scalars and paths are
    converted). Returns {"json": path, "md": path, "png": path}.
    """
    if not results:
        raise ValueError("no results to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    payload = {
        "title": title,
        "metrics_version": METRICS_VERSION,
        "pairs": [r.to_dict() for r in results],
        "summary": {**summary, "recall": {str(k): v for k, v in summary["recall"].items()}},
        "extra": extra or {},
    }
    paths = {"json": out / "results.json", "md": out / "results.md", "png": out / "results.png"}
    # Serialise everything before writing anything, so a bad ``extra`` leaves no partial report.
    json_bytes = (json.dumps(payload, indent=2, default=_json_default, allow_nan=False) + "\n").encode()
    md_bytes = format_table(results, title=title).encode()
    png_bytes = _plot_png(results, title)
    _atomic_write_bytes(paths["json"], json_bytes)
    _atomic_write_bytes(paths["md"], md_bytes)
    _atomic_write_bytes(paths["png"], png_bytes)
    return paths
