"""Benchmarks on the toy world's variants (``mmtrain/toy/variants.py``: RoCOCO-, FG- and XTD-style)
and on its MMEB-eval tables (``mmtrain/toy/layouts.py``), run through the real adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mmtrain.eval.benchmarks.context import EvalContext
from mmtrain.eval.benchmarks.fg import FgBenchmark
from mmtrain.eval.benchmarks.mmeb import read_rows, row_ranks
from mmtrain.eval.benchmarks.rococo import RococoBenchmark
from mmtrain.eval.benchmarks.xtd import KS as XTD_KS
from mmtrain.eval.benchmarks.xtd import XtdBenchmark
from mmtrain.eval.report import BenchmarkResult, Table, pct
from mmtrain.toy.layouts import write_toy_layout
from mmtrain.toy.mme5 import TOY_LANGUAGES
from mmtrain.toy.variants import TOY_I2T, TOY_T2I, ensure_variant
from mmtrain.toy.world import ensure_toy_world


class ToyVariantBenchmark:
    """Generate a toy variant (rank 0), then run the RoCOCO or FG adapter on it."""

    def __init__(self, kind: str, out_dir: str, n_images: int = 200, seed: int = 0,
                 options: dict[str, Any] | None = None, title: str | None = None):
        self.kind, self.out_dir, self.n_images, self.seed = kind, Path(out_dir), n_images, seed
        self.options = dict(options or {})
        self.options.setdefault("instruction_t2i", TOY_T2I)
        self.options.setdefault("instruction_i2t", TOY_I2T)
        names = {"rococo": "RoCOCO", "fg": "MSCOCO-FG", "xtd": "XTD (toy languages, text -> image)"}
        self.title = title or f"Toy {names.get(kind, kind)} ({n_images} images, seed {seed})"

    def run(self, ctx: EvalContext) -> BenchmarkResult:
        if ctx.is_global_zero:
            ensure_variant(self.kind, self.out_dir, self.n_images, self.seed)
        ctx.barrier()
        out = ensure_variant(self.kind, self.out_dir, self.n_images, self.seed)
        if self.kind == "xtd":
            return self._run_xtd(ctx, out)
        if self.kind == "rococo":
            bench: Any = RococoBenchmark(ann_dir=str(out / "annotations"), image_root=str(out / "coco"),
                                         mix_dir=str(out / "mixed"), title=self.title, **self.options)
        else:
            bench = FgBenchmark(root=str(out / "fg"), which="MSCOCO", original_image_dir=str(out / "coco" / "val2014"),
                                distractor_image_dir=str(out / "coco" / "unlabeled2017"),
                                original_ann=str(out / "annotations" / "coco_karpathy_test.json"),
                                original_image_root=str(out / "coco"), title=self.title, **self.options)
        result = bench.run(ctx)
        result.benchmark = f"toy_{self.kind}"
        return result

    def _run_xtd(self, ctx: EvalContext, out: Path) -> BenchmarkResult:
        """XTD's raw protocol (caption -> every image, R@k per language) on the toy set; a table of its
        own, as the paper's rows (real languages) do not compare with toy languages."""
        languages = list(self.options.get("languages", TOY_LANGUAGES))
        bench = XtdBenchmark(root=str(out), image_dir=str(out / "images"), languages=languages,
                             instruction=self.options["instruction_t2i"])
        raw = bench.run_raw(ctx)
        mean = {k: float(np.mean([raw[lang][k] for lang in languages])) for k in XTD_KS}
        rows = [[f"R@{k}", *[pct(raw[lang][k]) for lang in languages], pct(mean[k]), pct(min(1.0, k / self.n_images))]
                for k in XTD_KS]
        notes = [f"Caption -> {self.n_images} images, one relevant each (XTD's protocol, R@10 headline). "
                 "en = the toy captions; rev / vowel / cipher = the same captions re-spelled word by word "
                 "(mmtrain/toy/mme5.py). Rates in %."]
        table = Table("Recall@k per toy language", ["Metric", *languages, "Avg", "chance"], rows, notes)
        headline = {f"R@10/{lang}": raw[lang][10] for lang in languages} | {"R@10/mean": mean[10]}
        metrics = {"languages": {lang: {f"R@{k}": v for k, v in r.items()} for lang, r in raw.items()},
                   "mean": {f"R@{k}": v for k, v in mean.items()}, "n_images": self.n_images}
        chart = {"R@10": {lang: pct(raw[lang][10]) for lang in languages}}
        return BenchmarkResult("toy_xtd", self.title, metrics, [table], chart, headline)


class ToyMMEBBenchmark:
    """The toy world's MMEB-eval tables (``mmtrain/toy/layouts.py``, what ``data=toy_mmeb`` and
    ``toy_mme5`` evaluate) of one split through MMEB's protocol (``mmeb.row_ranks``: each query against
    its own row's candidates, candidate 0 is the positive, Precision@1). The world is generated and the
    layout written when missing (rank 0)."""

    def __init__(self, toy_world: dict[str, Any], split: str = "test", subsets: list[str] | None = None,
                 title: str | None = None):
        self.toy_world = {k: v for k, v in dict(toy_world).items() if v is not None}
        self.split, self.subsets = split, list(subsets) if subsets else None
        self.title = title or f"Toy MMEB ({split} split, per-row candidates, Precision@1)"

    def run(self, ctx: EvalContext) -> BenchmarkResult:
        world = Path(self.toy_world["dir"])
        if ctx.is_global_zero:
            sizes = {k: v for k, v in self.toy_world.items() if k != "dir"}
            ensure_toy_world(world, **sizes)
            write_toy_layout("mmeb", world, world / "mmeb")
        ctx.barrier()
        eval_root = world / "mmeb" / "eval"
        subsets = self.subsets or sorted(p.name for p in eval_root.iterdir() if p.is_dir())
        scores, rows_out = {}, []
        for subset in subsets:
            files = sorted((eval_root / subset).glob(f"{self.split}-*.parquet"))
            if not files:
                raise FileNotFoundError(f"no {self.split} table for toy MMEB subset {subset} in {eval_root / subset}")
            rows = [r for f in files for r in read_rows(f)]
            ranks = row_ranks(ctx, rows, world / "mbeir", f"toy_mmeb/{self.split}/{subset}")
            scores[subset] = float(np.mean(ranks == 0))
            chance = float(np.mean([1.0 / len(r["tgt_text"]) for r in rows]))
            rows_out.append([subset, len(rows), float(np.mean([len(r["tgt_text"]) for r in rows])),
                             pct(scores[subset]), pct(chance)])
        mean = float(np.mean(list(scores.values())))
        rows_out.append(["mean", sum(r[1] for r in rows_out), None, pct(mean),
                         float(np.mean([r[4] for r in rows_out]))])
        table = Table("Precision@1 per task", ["Task", "Queries", "Candidates / query", "P@1", "chance P@1"], rows_out,
                      ["Precision@1 (%): the argmax over the query's own candidate list is candidate 0 (the "
                       "positive), as MMEB scores. Candidates: the positive and every other candidate of its "
                       "modality in the split's pool."])
        return BenchmarkResult("toy_mmeb", self.title, {"tasks": scores, "mean": mean}, [table],
                               {"P@1": {t: pct(v) for t, v in scores.items()}},
                               {"P@1/mean": mean} | {f"P@1/{t}": v for t, v in scores.items()})
