"""Results report: table text, JSON round trip, a real PNG, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from mmtrain.eval.metrics import METRICS_VERSION, PairResult
from mmtrain.eval.report import format_table, pair_report, write_report


@pytest.fixture()
def results() -> list[PairResult]:
    return [
        PairResult(pair="mscoco_task0", dataset="mscoco", task_id=0, task="t->i", num_queries=3,
                   pool_size=5_600_000, recall={1: 0.4567, 5: 0.712, 10: 0.8}, modality_acc=0.926,
                   chance_r5=8.9e-7, headline_k=5, headline=0.712),
        PairResult(pair="fashioniq_task7", dataset="fashioniq", task_id=7, task="(i,t)->i",
                   num_queries=5, pool_size=5_600_000, recall={1: 0.1, 5: 0.2, 10: 0.262},
                   modality_acc=1.0, chance_r5=0.0042, headline_k=10, headline=0.262),
    ]


def _table_rows(md: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in md.splitlines() if line.startswith("|")]


def test_format_table_rows_and_percentages(results):
    md = format_table(results, title="demo run")
    assert md.startswith("## demo run")
    header, rule, coco, fiq, mean = _table_rows(md)
    assert header == ["Task", "Dataset", "Queries", "R@1", "R@5", "R@10", "M.A.@1", "chance R@5"]
    assert set("".join(rule)) <= {"-", ":"}
    assert coco == ["t->i [0]", "mscoco", "3", "45.7", "71.2", "80.0", "92.6", "0.000089"]
    assert fiq == ["(i,t)->i [7]", "fashioniq", "5", "10.0", "20.0", "26.2", "100.0", "0.42"]
    # mean row: unweighted over the two pairs; queries summed
    assert mean[:7] == ["mean", "2 pairs", "8", "27.8", "45.6", "53.1", "96.3"]
    assert float(mean[7]) == pytest.approx(100 * (8.9e-7 + 0.0042) / 2, rel=0.01)
    # headline average mixes R@5 (mscoco) and R@10 (fashioniq): (71.2 + 26.2) / 2 = 48.7
    assert "Avg. All 48.7" in md and "Single-modal Qry 71.2" in md and "Multi-modal Qry 26.2" in md
    # every table line has the same width, so it reads as plain text in a terminal
    assert len({len(line) for line in md.splitlines() if line.startswith("|")}) == 1


def test_write_report_files(results, tmp_path):
    backend_before = dict.__getitem__(matplotlib.rcParams, "backend")
    out = tmp_path / "report"
    extra = {"model": "tiny-clip", "steps": np.int64(1000), "pool": Path("/data/pool")}
    paths = write_report(pair_report(results, "demo run"), out, extra=extra)

    assert set(paths) == {"results.json", "results.md", "results.png"}
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "results.png"]

    data = json.loads(paths["results.json"].read_text())
    assert data["title"] == "demo run" and data["metrics_version"] == METRICS_VERSION
    assert [PairResult.from_dict(d) for d in data["pairs"]] == results
    assert data["extra"] == {"model": "tiny-clip", "steps": 1000, "pool": "/data/pool"}
    assert data["summary"]["num_pairs"] == 2
    assert data["summary"]["headline"] == pytest.approx((0.712 + 0.262) / 2)
    assert data["summary"]["recall"]["5"] == pytest.approx((0.712 + 0.2) / 2)

    md = paths["results.md"].read_text()
    assert md == format_table(results, title="demo run")
    assert "| t->i [0]" in md and "fashioniq" in md and "| mean" in md

    png = paths["results.png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    with Image.open(paths["results.png"]) as im:
        im.verify()
    with Image.open(paths["results.png"]) as im:
        assert im.width >= 600 and im.height >= 400
        # not a blank canvas: many distinct colours (bars, text, legend)
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20

    assert dict.__getitem__(matplotlib.rcParams, "backend") == backend_before

    # a second write replaces the files in place and leaves no temporary files behind
    write_report(pair_report(results[:1], "again"), out)
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "results.png"]
    assert json.loads(paths["results.json"].read_text())["title"] == "again"


def test_write_report_bad_extra_leaves_no_partial_report(results, tmp_path):
    with pytest.raises(TypeError):
        write_report(pair_report(results, "x"), tmp_path, extra={"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_write_report_rejects_empty(tmp_path):
    with pytest.raises(ValueError):
        pair_report([], "x")


def test_every_results_json_has_the_same_keys(results, tmp_path):
    """One schema: a benchmark's tables, a training split's pairs and a pool's pair report (subdirectory)."""
    from mmtrain.eval.report import BenchmarkResult, Table

    keys = {"benchmark", "title", "metrics_version", "headline", "metrics", "tables", "pairs", "summary", "extra"}
    bench = BenchmarkResult("demo", "Demo", {"acc": 0.5}, [Table("t", ["a", "b"], [["x", 50.0]])],
                            {"ours": {"x": 50.0}}, {"acc": 0.5}, pair_reports={"global": results})
    paths = write_report(bench, tmp_path / "bench", {"run": 1})
    written = json.loads(paths["results.json"].read_text())
    pool = json.loads(paths["global/results.json"].read_text())
    split = json.loads(write_report(pair_report(results, "split"), tmp_path / "split")["results.json"].read_text())
    assert set(written) == set(pool) == set(split) == keys
    assert written["pairs"] == [] and written["summary"] is None and written["tables"][0]["rows"] == [["x", 50.0]]
    assert pool["extra"] == {"run": 1} and len(pool["pairs"]) == 2 and pool["summary"]["num_pairs"] == 2
    assert split["headline"]["headline"] == pytest.approx((0.712 + 0.262) / 2)
    assert (tmp_path / "bench" / "results.md").read_text().startswith("## Demo")
    assert (tmp_path / "bench" / "global" / "results.md").read_text() == format_table(results, title="Demo: global")
