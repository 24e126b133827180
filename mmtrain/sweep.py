"""A results table for Hydra multirun sweeps: one row per job, failed jobs included.

Registered as a Hydra callback in conf/config.yaml (``hydra.callbacks.sweep_summary``), so any
``python -m mmtrain -m ...`` writes, under the sweep directory::

    summary/job-<N>.json    one row per job, written by the job itself when it ends
    summary.csv, summary.md the table of every row so far, rewritten after each job

Rows are separate files because launchers run jobs concurrently (submitit) and in other processes;
the table is rebuilt from them by whoever finishes (and once more at the end of the sweep, in the
launching process). A row holds the job's overrides, its status (completed | failed | interrupted),
its step and its metrics from the run's ``summary.json`` (mmtrain/train.py), or the error.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from mmtrain.io import atomic_write_text
from mmtrain.run_dir import output_path

log = logging.getLogger(__name__)

ROWS_DIR = "summary"


def job_row(job_num: int, overrides: list[str], job_status: str, run_dir: Path, error: str | None,
            metrics: list[str]) -> dict[str, Any]:
    """A table row: the job, what it swept, how it ended and its metrics."""
    row: dict[str, Any] = {"job": job_num, "overrides": " ".join(overrides), "status": job_status,
                           "global_step": None}
    try:
        saved = json.loads(output_path(run_dir, "summary").read_text())
    except (OSError, ValueError):
        saved = {}
    if saved.get("status") == "interrupted":  # stopped with a checkpoint: rerun the sweep point to finish it
        row["status"] = "interrupted"
    row["global_step"] = saved.get("global_step")
    summary = saved.get("summary") or {}
    for name in metrics:
        value = summary.get(name)
        row[name] = round(value, 4) if isinstance(value, float) else value
    row["error"] = (error or saved.get("error") or "")[:300] if row["status"] != "completed" else ""
    row["run_dir"] = str(run_dir)
    return row


def read_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((sweep_dir / ROWS_DIR).glob("job-*.json")):
        try:
            rows.append(json.loads(path.read_text()))
        except ValueError:
            continue
    return sorted(rows, key=lambda r: r["job"])


def write_table(sweep_dir: Path) -> Path | None:
    """summary.csv and summary.md from every row written so far."""
    rows = read_rows(sweep_dir)
    if not rows:
        return None
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(sweep_dir / "summary.csv", buf.getvalue())
    # The markdown table shows the swept keys (those whose value differs between jobs) as columns
    # instead of every job's full override list (kept in the CSV).
    parsed = [dict(o.split("=", 1) for o in r["overrides"].split() if "=" in o) for r in rows]
    swept = [k for k in dict.fromkeys(k for p in parsed for k in p) if len({p.get(k) for p in parsed}) > 1]
    shown = ["job", *swept, *(c for c in columns if c not in ("job", "overrides", "run_dir", "error")), "error"]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for r, p in zip(rows, parsed):
        cells = [p.get(c, "") if c in swept else r.get(c) for c in shown]
        cells = ["" if v is None else str(v).replace("|", "/")[:120] for v in cells]
        lines.append("| " + " | ".join(cells) + " |")
    counts = Counter(r["status"] for r in rows)
    head = f"{len(rows)} jobs: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    atomic_write_text(sweep_dir / "summary.md", head + "\n\n" + "\n".join(lines) + "\n")
    return sweep_dir / "summary.md"


class SweepSummary(Callback):
    """Hydra callback: a row per multirun job, the table after every job (see the module docstring).

    ``metrics``: keys of the run summary to tabulate (mmtrain.eval.metrics.summarize).
    """

    def __init__(self, metrics: list[str] | tuple[str, ...] = ("headline", "modality_acc")) -> None:
        self.metrics = list(metrics)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            return
        try:
            sweep_dir = Path(config.hydra.sweep.dir).absolute()
            run_dir = Path(config.hydra.runtime.output_dir)
            failed = job_return.status != JobStatus.COMPLETED
            error = f"{type(job_return._return_value).__name__}: {job_return._return_value}" if failed else None
            status = "failed" if failed else "dry_run" if config.get("dry_run") else "completed"
            row = job_row(int(config.hydra.job.num), list(job_return.overrides or []), status, run_dir, error,
                          self.metrics)
            (sweep_dir / ROWS_DIR).mkdir(parents=True, exist_ok=True)
            atomic_write_text(sweep_dir / ROWS_DIR / f"job-{row['job']}.json", json.dumps(row, default=str) + "\n")
            write_table(sweep_dir)
        except Exception as e:  # noqa: BLE001 (a table problem must not fail the job or the sweep)
            log.warning("sweep summary: %s", e)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        table = write_table(Path(config.hydra.sweep.dir).absolute())
        if table is not None:
            print(f"\nsweep summary: {table}\n{table.read_text()}")
