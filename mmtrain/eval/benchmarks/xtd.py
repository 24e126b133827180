"""XTD10 multilingual text -> image retrieval (data-formats.md §9, evaluation.md §4).

Raw release (``adobe-research/Cross-lingual-Test-Dataset-XTD10``): ``XTD10/test_image_names.txt`` (1000
COCO train2014 names) and ``XTD10/test_1kcaptions_<lang>.txt``, line i captioning image i. Each caption
searches the 1000-image pool; Recall@10 (one positive, so recall = hit rate) per language and the mean,
as mmE5 Table 3 (following MURAL). The mmE5 repack (HF ``Haon-Chen/XTD-10``, MMEB fields, one parquet
config per language) is scored with the MMEB protocol (candidate 0 is the positive): Precision@1 and
R@10 within each row's candidate list. Both are reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mmtrain.eval.benchmarks import paper
from mmtrain.eval.benchmarks.context import EvalContext, LazyItems
from mmtrain.eval.benchmarks.mmeb import read_rows, row_ranks
from mmtrain.eval.metrics import hit_rate_at_k
from mmtrain.eval.report import BenchmarkResult, Table, pct

KS = (1, 5, 10)


def _lines(path: Path) -> list[str]:
    # Captions may contain any script; strip only the line end (a caption can start with a space).
    return [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]


class XtdBenchmark:
    name = "xtd"

    def __init__(self, root: str | None = None, image_dir: str | None = None, repack_root: str | None = None,
                 repack_image_dir: str | None = None, languages: list[str] | tuple[str, ...] = paper.XTD_LANGS,
                 instruction: str | None = None, title: str | None = None):
        if root is None and repack_root is None:
            raise ValueError("XTD needs `root` (raw release), `repack_root` (mmE5 repack), or both")
        if root is not None and image_dir is None:
            raise ValueError("the raw XTD release needs `image_dir` (COCO train2014 images)")
        self.root = Path(root) if root else None
        self.image_dir = Path(image_dir) if image_dir else None
        self.repack_root = Path(repack_root) if repack_root else None
        self.repack_image_dir = Path(repack_image_dir) if repack_image_dir else self.repack_root
        self.languages = list(languages)
        self.instruction = instruction
        self.title = title or "XTD10 text -> image (R@10)"

    def run_raw(self, ctx: EvalContext) -> dict[str, dict[int, float]]:
        base = self.root / "XTD10"
        names = [n.strip() for n in _lines(base / "test_image_names.txt") if n.strip()]
        pool = LazyItems([(None, n, "image", None, i) for i, n in enumerate(names)], self.image_dir)
        c_emb = ctx.encode(pool, "candidate", "xtd/images")
        out = {}
        for lang in self.languages:
            caps = _lines(base / f"test_1kcaptions_{lang}.txt")[: len(names)]
            if len(caps) != len(names):
                raise ValueError(f"{lang}: {len(caps)} captions for {len(names)} images")
            queries = LazyItems([(c, None, "text", self.instruction, i) for i, c in enumerate(caps)])
            q_emb = ctx.encode(queries, "query", f"xtd/{lang}")
            _, idx = ctx.search(q_emb, c_emb, max(KS))
            relevant = [[i] for i in range(len(names))]
            out[lang] = {k: float(hit_rate_at_k(idx, relevant, min(k, idx.shape[1])).mean()) for k in KS}
        return out

    def run_repack(self, ctx: EvalContext) -> dict[str, dict[str, float]]:
        out = {}
        for lang in self.languages:
            ranks = row_ranks(ctx, read_rows(self.repack_root / lang), self.repack_image_dir, f"xtd_repack/{lang}")
            out[lang] = {"P@1": float(np.mean(ranks == 0)), "R@10": float(np.mean(ranks < 10))}
        return out

    def run(self, ctx: EvalContext) -> BenchmarkResult:
        raw = self.run_raw(ctx) if self.root else {}
        repack = self.run_repack(ctx) if self.repack_root else {}
        metrics: dict[str, Any] = {"raw": {lang: {f"R@{k}": v for k, v in r.items()} for lang, r in raw.items()},
                                   "repack": repack}
        headline = {}
        if raw:
            metrics["raw_mean_r10"] = headline["raw/R@10"] = float(np.mean([r[10] for r in raw.values()]))
        if repack:
            headline["repack/P@1"] = float(np.mean([r["P@1"] for r in repack.values()]))
            headline["repack/R@10"] = float(np.mean([r["R@10"] for r in repack.values()]))
        langs = list(paper.XTD_LANGS) + [lang for lang in self.languages if lang not in paper.XTD_LANGS]
        cols = ["Model", *langs, "Avg"]

        def row(name: str, values: dict[str, float | None]) -> list[Any]:
            got = [values.get(lang) for lang in langs]
            present = [v for v in got if v is not None]
            return [name, *got, float(np.mean(present)) if present else None]

        rows = []
        if raw:
            rows.append(row("ours (raw release, R@10)", {lang: pct(r[10]) for lang, r in raw.items()}))
        if repack:
            rows.append(row("ours (mmE5 repack, R@10 in row)", {lang: pct(r["R@10"]) for lang, r in repack.items()}))
            rows.append(row("ours (mmE5 repack, P@1)", {lang: pct(r["P@1"]) for lang, r in repack.items()}))
        rows += [row(m, dict(zip(paper.XTD_LANGS, v))) for m, v in paper.XTD_TABLE3.items()]
        notes = ["Paper rows: mmE5 Table 3, Recall@10 on the raw 1000-image pool. Avg over the columns shown."]
        shown = [r for r in rows if r[0].startswith("ours")] + [row("mmE5 (full) (paper)", dict(
            zip(paper.XTD_LANGS, paper.XTD_TABLE3["mmE5 (full)"])))]
        chart = {r[0]: dict(zip(langs, r[1:-1])) for r in shown}
        return BenchmarkResult(self.name, self.title, metrics, [Table("XTD10 (mmE5 Table 3 layout)", cols, rows, notes)],
                               chart, headline)
