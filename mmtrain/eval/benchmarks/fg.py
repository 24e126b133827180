"""MSCOCO-FG / Flickr30K-FG (``cwj1412/MSCOCO-Flikcr30K_FG``; data-formats.md §8, robustness.md §3).

``Annotations/<X>_FG_ann.json`` maps each target image id (no extension) to its 5 renovated captions;
``Images/<X>_FG_img_filenames.npy`` lists the enlarged image pool: the targets plus near-duplicate COCO
unlabeled2017 distractors (only names are shipped; a name that is a target id + ``.jpg`` is read from
``original_image_dir``, any other from ``distractor_image_dir``).

T2I: each FG caption searches the enlarged pool for its image. I2T: each target image searches the FG
captions for any of its own. R@1/5/10 (hit rates) per direction and RSUM, with the original
5K / 1K benchmark (a BLIP-format test json: ``[{"image", "caption": [...]}]``) beside it, so the drop
shows. Captions are normalised with BLIP's ``pre_caption``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from mmtrain.eval.benchmarks import paper
from mmtrain.eval.benchmarks.context import EvalContext, LazyItems
from mmtrain.eval.benchmarks.rococo import pre_caption
from mmtrain.eval.metrics import hit_rate_at_k
from mmtrain.eval.report import BenchmarkResult, Table, pct

KS = (1, 5, 10)


class _StringArrayUnpickler(pickle.Unpickler):
    """Unpickles only what ``np.save`` writes for an object array: the array's reconstruction from
    numpy's own classes; the elements (str) need no class at all. Any other class (``os.system``, ...)
    is refused, so a crafted file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}")
        return super().find_class(module, name)


def load_filenames(path: Path) -> list[str]:
    """The pool's file names: a plain string array (no pickle), or an object array of str read with
    an unpickler that admits only numpy's array classes (numpy's own pickle loading is never used)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        _, _, dtype = read_header(f)
        if dtype != object:
            f.seek(0)
            arr = np.load(f, allow_pickle=False)
        else:
            try:
                arr = _StringArrayUnpickler(f).load()
            except (pickle.UnpicklingError, AttributeError, EOFError) as e:
                raise ValueError(f"{path}: not an array of file names ({e})") from None
    if not isinstance(arr, np.ndarray) or not all(isinstance(x, str) for x in arr.tolist()):
        raise ValueError(f"{path}: expected an array of file names")
    return [str(x) for x in arr.tolist()]


def bidirectional(ctx: EvalContext, images: LazyItems, captions: list[str], cap_to_img: list[int],
                  targets: list[int], name: str, instr_t2i: str | None, instr_i2t: str | None) -> dict[str, float]:
    """R@k both ways: captions -> ``images`` (positive = ``cap_to_img``), and the ``targets`` images ->
    captions (positives = the captions of that image)."""
    cap_q = ctx.encode(LazyItems([(c, None, "text", instr_t2i, i) for i, c in enumerate(captions)]),
                       "query", f"{name}/captions")
    img_c = ctx.encode(images, "candidate", f"{name}/images")
    _, idx = ctx.search(cap_q, img_c, max(KS))
    out = {f"t2i_r{k}": float(hit_rate_at_k(idx, [[g] for g in cap_to_img], min(k, idx.shape[1])).mean()) for k in KS}
    cap_c = ctx.encode(LazyItems([(c, None, "text", None, i) for i, c in enumerate(captions)]),
                       "candidate", f"{name}/captions")
    img_q = ctx.encode(LazyItems([(None, *images.rows[t][1:3], instr_i2t, t) for t in targets], images.image_root),
                       "query", f"{name}/targets")
    _, idx = ctx.search(img_q, cap_c, max(KS))
    owned: dict[int, list[int]] = {}
    for c, img in enumerate(cap_to_img):
        owned.setdefault(img, []).append(c)
    out |= {f"i2t_r{k}": float(hit_rate_at_k(idx, [owned[t] for t in targets], min(k, idx.shape[1])).mean()) for k in KS}
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in KS)
    return out


class FgBenchmark:
    name = "fg"

    def __init__(self, root: str, original_image_dir: str, distractor_image_dir: str, which: str = "MSCOCO",
                 original_ann: str | None = None, original_image_root: str | None = None,
                 instruction_t2i: str | None = None, instruction_i2t: str | None = None, title: str | None = None):
        if which not in ("MSCOCO", "Flickr30K"):
            raise ValueError(f"which must be MSCOCO or Flickr30K, got {which!r}")
        self.root, self.which = Path(root), which
        self.original_image_dir, self.distractor_image_dir = Path(original_image_dir), Path(distractor_image_dir)
        self.original_ann = Path(original_ann) if original_ann else None
        self.original_image_root = Path(original_image_root) if original_image_root else self.original_image_dir
        self.instr_t2i, self.instr_i2t = instruction_t2i, instruction_i2t
        self.title = title or f"{which}-FG"

    def run(self, ctx: EvalContext) -> BenchmarkResult:
        ann: dict[str, list[str]] = json.loads((self.root / "Annotations" / f"{self.which}_FG_ann.json").read_text())
        names = load_filenames(self.root / "Images" / f"{self.which}_FG_img_filenames.npy")
        row = {n: i for i, n in enumerate(names)}
        missing = [k for k in ann if f"{k}.jpg" not in row]
        if missing:
            raise ValueError(f"{len(missing)} target images are not in the FG pool, e.g. {missing[:3]}")
        images = LazyItems([(None, str((self.original_image_dir if Path(n).stem in ann else self.distractor_image_dir) / n),
                             "image", None, i) for i, n in enumerate(names)])
        captions, cap_to_img = [], []
        for key, caps in ann.items():
            captions += [pre_caption(c) for c in caps]
            cap_to_img += [row[f"{key}.jpg"]] * len(caps)
        targets = [row[f"{k}.jpg"] for k in ann]
        results = {f"{self.which}-FG": bidirectional(ctx, images, captions, cap_to_img, targets,
                                                     f"fg/{self.which}", self.instr_t2i, self.instr_i2t)}
        sizes = {f"{self.which}-FG": (len(targets), len(names), len(captions))}
        if self.original_ann is not None:
            entries = json.loads(self.original_ann.read_text())
            orig = LazyItems([(None, e["image"], "image", None, i) for i, e in enumerate(entries)],
                             self.original_image_root)
            caps, c2i = [], []
            for i, e in enumerate(entries):
                caps += [pre_caption(c) for c in e["caption"]]
                c2i += [i] * len(e["caption"])
            label = f"{self.which} original test ({len(entries)} images)"
            results = {label: bidirectional(ctx, orig, caps, c2i, list(range(len(entries))), f"fg/{self.which}/original",
                                            self.instr_t2i, self.instr_i2t)} | results
            sizes[label] = (len(entries), len(entries), len(caps))
        return self._result(results, sizes)

    def _result(self, results: dict[str, dict[str, float]], sizes: dict[str, tuple[int, int, int]]) -> BenchmarkResult:
        cols = ["Benchmark", "images / pool / captions", *[f"I2T R@{k}" for k in KS], *[f"T2I R@{k}" for k in KS], "RSUM"]
        rows: list[list[Any]] = [[name, "%d / %d / %d" % sizes[name], *[pct(m[f"i2t_r{k}"]) for k in KS],
                                  *[pct(m[f"t2i_r{k}"]) for k in KS], pct(m["rsum"])] for name, m in results.items()]
        if len(results) == 2:
            (a, ma), (b, mb) = results.items()
            rows.append(["drop (FG - original)", "", *[pct(mb[f"i2t_r{k}"] - ma[f"i2t_r{k}"]) for k in KS],
                         *[pct(mb[f"t2i_r{k}"] - ma[f"t2i_r{k}"]) for k in KS], pct(mb["rsum"] - ma["rsum"])])
        for model, bench, metric, i2t, t2i in paper.FG_REFERENCE:
            rows.append([f"{model} (paper): {bench}", "", None, None, i2t if metric == "R@10" else None,
                         None, None, t2i if metric == "R@10" else None, None])
        notes = ["Recall = hit rate (%); RSUM = sum of the six recalls (%). Per-model FG numbers of the paper "
                 "are not captured (robustness.md §3.3); X-VLM's original 5K R@10 is the only anchor."]
        headline = {f"{name}/{k}": v for name, m in results.items() for k, v in m.items()}
        chart = {name: {f"{d.upper()} R@{k}": pct(m[f"{d}_r{k}"]) for d in ("i2t", "t2i") for k in KS}
                 for name, m in results.items()}
        return BenchmarkResult(self.name, self.title, {"results": results, "sizes": sizes},
                               [Table(f"{self.which}-FG vs the original benchmark", cols, rows, notes)], chart, headline)
