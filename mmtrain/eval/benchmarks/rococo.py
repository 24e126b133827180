"""RoCOCO (``pseulki/rococo``; data-formats.md §7, robustness.md §2, evaluation.md §6).

I2T: the Karpathy test images search a text pool of one perturbation file (``same_concept``,
``diff_concept``, ``rand_voca``, ``danger``): each entry lists the image's original captions and then
one-word-replaced copies (10 captions: 5 + 5; 11: 6 + 5; otherwise all are originals, as the
repository's loader decides). R@k = an original caption of the image in the top k; ``false_rate`` =
share of images whose top-1 text is an altered caption. Captions are normalised with BLIP's
``pre_caption``.

T2I: the original captions search the originals plus one mixed image per original (pool index >= N);
``false_rate`` = share of captions whose top-1 image is a mixed one. Mixed images are regenerated as
``mix_images.py`` makes them: 384x384 bicubic, [0, 1] pixels, a shuffled loader of batches of 64 and a
``randperm`` partner inside each batch, ``mix`` = lam*x + (1-lam)*x_partner or ``patch`` = a CutMix box
of area 1-lam from the partner, seeds 1, 10, 100 (torch and numpy seeded, same draw order), saved as
``save_image`` saves them. Results per seed and mean +- std; the clean baselines run alongside.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmtrain.eval.benchmarks import paper
from mmtrain.eval.benchmarks.context import EvalContext, LazyItems
from mmtrain.eval.embed_cache import fingerprint_items
from mmtrain.eval.report import BenchmarkResult, Table, pct
from mmtrain.io import atomic_dir, is_complete

PERTURBATIONS = ("same_concept", "diff_concept", "rand_voca", "danger")
KS = (1, 5, 10)


def pre_caption(caption: str, max_words: int = 50) -> str:
    """BLIP's ``pre_caption`` (the RoCOCO loaders apply it to every caption)."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


def split_captions(captions: list[str]) -> tuple[list[str], list[str]]:
    """(originals, altered) of one entry, by the repository's count rule (10 -> 5+5, 11 -> 6+5)."""
    n_orig = {10: 5, 11: 6}.get(len(captions), len(captions))
    return captions[:n_orig], captions[n_orig:]


def i2t_metrics(ranked: np.ndarray, img2txt: list[list[int]], altered: set[int]) -> dict[str, float]:
    """``ranked`` (images, K) text indices, best first. Fractions (the repository prints percent)."""
    gts = [set(gt) for gt in img2txt]
    first_hit = np.array([next((r for r, t in enumerate(row) if t in gt), np.inf)
                          for row, gt in zip(ranked.tolist(), gts)])
    out = {f"txt_r{k}": float(np.mean(first_hit < k)) for k in KS}
    out["txt_r_mean"] = float(np.mean([out[f"txt_r{k}"] for k in KS]))
    out["false_rate"] = float(np.mean([row[0] in altered for row in ranked.tolist()]))
    return out


def t2i_metrics(ranked: np.ndarray, txt2img: list[int], n_original: int) -> dict[str, float]:
    """``ranked`` (captions, K) image indices; indices >= ``n_original`` are mixed images."""
    hit_rank = np.array([next((r for r, i in enumerate(row) if i == gt), np.inf)
                         for row, gt in zip(ranked.tolist(), txt2img)])
    out = {f"img_r{k}": float(np.mean(hit_rank < k)) for k in KS}
    out["img_r_mean"] = float(np.mean([out[f"img_r{k}"] for k in KS]))
    out["false_rate"] = float(np.mean(ranked[:, 0] >= n_original))
    return out


def _rand_bbox(size: torch.Size, lam: float) -> tuple[int, int, int, int]:
    # mix_images.py's rand_bbox, including its W/H naming (size[2] is the height): same numbers.
    w, h = size[2], size[3]
    cut_rat = np.sqrt(1.0 - lam)
    cut_w, cut_h = int(w * cut_rat), int(h * cut_rat)
    cx, cy = np.random.randint(w), np.random.randint(h)
    return (int(np.clip(cx - cut_w // 2, 0, w)), int(np.clip(cy - cut_h // 2, 0, h)),
            int(np.clip(cx + cut_w // 2, 0, w)), int(np.clip(cy + cut_h // 2, 0, h)))


def _load_384(path: Path) -> torch.Tensor:
    img = Image.open(path).convert("RGB").resize((384, 384), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255.0)  # ToTensor


def _save_like_save_image(x: torch.Tensor, path: Path) -> None:
    arr = x.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    Image.fromarray(arr).save(path, format="JPEG")  # PIL's default quality, as save_image(*.jpg)


def generate_mixed(paths: list[Path], out_dir: Path, method: str, lam: float, seed: int,
                   batch_size: int = 64) -> list[Path]:
    """Mixed copies of ``paths`` in ``out_dir`` (same file names), made as ``mix_images.py`` makes them.
    The global torch / numpy RNG states are restored afterwards. Built in a temporary directory and
    renamed into place; an existing complete directory is reused."""
    if method not in ("mix", "patch"):
        raise ValueError(f"method must be mix or patch, got {method!r}")
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise ValueError("mixed images are saved by file name: names must be unique")
    if is_complete(out_dir):
        return [out_dir / n for n in names]
    np_state = np.random.get_state()
    marker = {"method": method, "lam": lam, "seed": seed, "n": len(paths)}
    try:
        with atomic_dir(out_dir, marker=marker) as tmp, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed)
            # The same loader as the reference (shuffle=True, batch 64): the same global-RNG draws, in order.
            loader = torch.utils.data.DataLoader(range(len(paths)), batch_size=batch_size, shuffle=True)
            for batch in loader:
                x = torch.stack([_load_384(paths[int(i)]) for i in batch])
                rand_index = torch.randperm(x.size(0))
                if method == "patch":
                    x1, y1, x2, y2 = _rand_bbox(x.size(), lam)
                    x[:, :, x1:x2, y1:y2] = x[rand_index, :, x1:x2, y1:y2]
                else:
                    x = lam * x + (1 - lam) * x[rand_index, :]
                for j, i in enumerate(batch.tolist()):
                    _save_like_save_image(x[j], tmp / names[i])
    except FileExistsError:  # another process finished first: use its copy
        pass
    finally:
        np.random.set_state(np_state)
    return [out_dir / n for n in names]


class RococoBenchmark:
    name = "rococo"

    def __init__(self, ann_dir: str, image_root: str, mix_dir: str | None = None,
                 perturbations: list[str] | tuple[str, ...] = PERTURBATIONS,
                 methods: list[str] | tuple[str, ...] = ("mix", "patch"), lam: float = 0.9,
                 seeds: list[int] | tuple[int, ...] = (1, 10, 100), instruction_t2i: str | None = None,
                 instruction_i2t: str | None = None, clean_file: str = "coco_karpathy_test.json",
                 title: str | None = None):
        self.ann_dir, self.image_root = Path(ann_dir), Path(image_root)
        self.mix_dir = Path(mix_dir) if mix_dir else self.image_root / "rococo_mixed"
        self.perturbations, self.methods = list(perturbations), list(methods)
        self.lam, self.seeds = lam, list(seeds)
        self.instruction_t2i, self.instruction_i2t = instruction_t2i, instruction_i2t
        self.clean_file = clean_file
        self.title = title or "RoCOCO"

    def _images(self, entries: list[dict]) -> LazyItems:
        return LazyItems([(None, e["image"], "image", None, i) for i, e in enumerate(entries)], self.image_root)

    def _i2t(self, ctx: EvalContext, entries: list[dict], name: str, img_q: np.ndarray) -> dict[str, float]:
        texts, img2txt, altered = [], [], set()
        for e in entries:
            orig, alt = split_captions(e["caption"])
            img2txt.append(list(range(len(texts), len(texts) + len(orig))))
            texts += orig
            altered |= set(range(len(texts), len(texts) + len(alt)))
            texts += alt
        pool = LazyItems([(pre_caption(t), None, "text", None, i) for i, t in enumerate(texts)])
        t_emb = ctx.encode(pool, "candidate", f"rococo/{name}/texts")
        _, idx = ctx.search(img_q, t_emb, max(KS))
        return i2t_metrics(idx, img2txt, altered)

    def run(self, ctx: EvalContext) -> BenchmarkResult:
        clean = json.loads((self.ann_dir / self.clean_file).read_text())
        images = self._images(clean)
        # Images as I2T queries (instruction_i2t) and as T2I candidates (no instruction): two encodings.
        img_q = ctx.encode(LazyItems([(None, e["image"], "image", self.instruction_i2t, i)
                                      for i, e in enumerate(clean)], self.image_root), "query", "rococo/images")
        img_c = ctx.encode(images, "candidate", "rococo/images")
        i2t = {"clean": self._i2t(ctx, clean, "clean", img_q)}
        for pert in self.perturbations:
            entries = json.loads((self.ann_dir / f"{pert}.json").read_text())
            if [e["image"] for e in entries] != [e["image"] for e in clean]:
                raise ValueError(f"{pert}.json lists other images (or another order) than {self.clean_file}")
            i2t[pert] = self._i2t(ctx, entries, pert, img_q)

        captions, txt2img = [], []
        for i, e in enumerate(clean):
            captions += [pre_caption(c) for c in e["caption"]]
            txt2img += [i] * len(e["caption"])
        cap_q = ctx.encode(LazyItems([(c, None, "text", self.instruction_t2i, i) for i, c in enumerate(captions)]),
                           "query", "rococo/captions")
        n = len(clean)
        _, idx = ctx.search(cap_q, img_c, max(KS))
        t2i: dict[str, Any] = {"clean": t2i_metrics(idx, txt2img, n)}
        paths = [images.path(i) for i in range(n)]
        tag = fingerprint_items(images)[:16]
        for method in self.methods:
            per_seed = {}
            for seed in self.seeds:
                out = self.mix_dir / tag / f"{method}_{self.lam}" / f"seed{seed}"
                if ctx.is_global_zero:
                    generate_mixed(paths, out, method, self.lam, seed)
                ctx.barrier()
                mixed = LazyItems([(None, str(p), "image", None, n + i)
                                   for i, p in enumerate(generate_mixed(paths, out, method, self.lam, seed))])
                m_emb = ctx.encode(mixed, "candidate", f"rococo/{method}_{self.lam}/seed{seed}")
                _, idx = ctx.search(cap_q, np.concatenate([img_c, m_emb]), max(KS))
                per_seed[seed] = t2i_metrics(idx, txt2img, n)
            t2i[f"{method}_{self.lam}"] = {"seeds": per_seed, "mean": _mean(per_seed), "std": _std(per_seed)}
        return self._result(i2t, t2i, n, len(captions))

    def _result(self, i2t: dict, t2i: dict, n_images: int, n_captions: int) -> BenchmarkResult:
        i2t_rows = [[name, *[pct(m[f"txt_r{k}"]) for k in KS], pct(m["false_rate"])] for name, m in i2t.items()]
        t2i_rows = []
        for name, m in t2i.items():
            if "seeds" not in m:
                t2i_rows.append([name, *[pct(m[f"img_r{k}"]) for k in KS], pct(m["false_rate"])])
                continue
            t2i_rows.append([f"{name} (mean ± std, seeds {list(m['seeds'])})",
                             *[_pm(m, f"img_r{k}") for k in KS], _pm(m, "false_rate")])
        tables = [
            Table(f"RoCOCO I2T ({n_images} images; pool = originals + altered captions)",
                  ["Text set", "R@1", "R@5", "R@10", "false_rate"], i2t_rows,
                  ["false_rate: % of image queries whose top-1 text is an altered caption."]),
            Table(f"RoCOCO T2I ({n_captions} captions; pool = originals + mixed images)",
                  ["Image set", "R@1", "R@5", "R@10", "false_rate"], t2i_rows,
                  ["false_rate: % of caption queries whose top-1 image is a mixed image."]),
            Table("RoCOCO reference numbers (paper abstract, repository CLIP log)",
                  ["Model", "Metric", "clean", "perturbed"], [list(r) for r in paper.ROCOCO_REFERENCE]),
        ]
        headline = {f"i2t/{k}/{m}": v for k, d in i2t.items() for m, v in d.items()}
        headline |= {f"t2i/{k}/{m}": v for k, d in t2i.items() for m, v in (d["mean"] if "mean" in d else d).items()}
        chart = {"I2T R@1": {k: pct(d["txt_r1"]) for k, d in i2t.items()},
                 "I2T false_rate": {k: pct(d["false_rate"]) for k, d in i2t.items()},
                 "T2I R@1": {k: pct((d.get("mean") or d)["img_r1"]) for k, d in t2i.items()},
                 "T2I false_rate": {k: pct((d.get("mean") or d)["false_rate"]) for k, d in t2i.items()}}
        metrics = {"i2t": i2t, "t2i": t2i, "num_images": n_images, "num_captions": n_captions}
        return BenchmarkResult(self.name, self.title, metrics, tables, chart, headline)


def _mean(per_seed: dict[int, dict[str, float]]) -> dict[str, float]:
    keys = next(iter(per_seed.values()))
    return {k: float(np.mean([m[k] for m in per_seed.values()])) for k in keys}


def _std(per_seed: dict[int, dict[str, float]]) -> dict[str, float]:
    keys = next(iter(per_seed.values()))
    return {k: float(np.std([m[k] for m in per_seed.values()])) for k in keys}


def _pm(m: dict, key: str) -> str:
    return f"{100 * m['mean'][key]:.1f} ± {100 * m['std'][key]:.1f}"

