"""RoCOCO-style training perturbations: one-word-swapped captions and mixed images as extra negatives.

RoCOCO (robustness.md §1) adds two losses to the base contrastive loss: the semantic contrastive (SC)
loss gives an image query its caption with one word replaced as an extra negative, the visual
contrastive (VC) loss gives a text query a mix of its image with another image of the batch. This
module makes those negatives at training time, in the collator (``TrainCollator(perturber=...)``);
the loss terms are in ``mmtrain.models.loss`` (``ExtraNegatives``).

Kinds and their generators (each kind has its own loss weight; a kind with weight 0 is not made):

  same_concept  a word of the caption -> another synonym set of the same concept group
  diff_concept  a word of the caption -> a word of another concept group
  rand_voca     a word of the caption -> a word of the random vocabulary
  mix           x = lam * a + (1 - lam) * b            (b: another row's positive image, resized to a)
  patch         a with a box of area ~(1 - lam) pasted from b at the same place (CutMix, mix_images.py)

Like RoCOCO, all text kinds replace the same word position of a caption, and one lam (U[lam_min,
lam_max]), one partner permutation and one patch box serve a whole batch. Substitutes avoid the
replaced word's synonyms and, for same_concept, words whose synonym set the caption already names.

Vocabulary and caption swaps: ``mmtrain/data/swap_vocabulary.py``. Settings: ``RobustConfig`` (mmtrain/data/robust.py), the
``robust`` config group's schema (mmtrain/config.py registers it).

Determinism: a batch's draws come from ``random.Random`` seeded by (seed, the batch's example keys
and positive ids), so a resumed stream makes the same negatives, and no global RNG is touched.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmtrain.data.schema import Item, TrainExample
from mmtrain.data.shards import iter_samples, read_manifest
from mmtrain.data.robust import RobustConfig
from mmtrain.data.swap_vocabulary import CaptionSwapper, SwapVocabulary



# ---------------------------------------------------------------- images

def decode_rgb(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8; resized (bicubic) to ``size`` = (width, height) when given."""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        if size is not None and im.size != size:
            im = im.resize(size, Image.Resampling.BICUBIC)
        return np.asarray(im, dtype=np.uint8)


def mix_pixels(a: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    """lam * a + (1 - lam) * b on uint8 pixels, rounded to the nearest integer."""
    return np.rint(lam * a.astype(np.float64) + (1.0 - lam) * b.astype(np.float64)).clip(0, 255).astype(np.uint8)


def patch_box(height: int, width: int, lam: float, centre: tuple[float, float]) -> tuple[int, int, int, int]:
    """CutMix box (y1, y2, x1, x2) as mix_images.py's ``rand_bbox``: sides sqrt(1 - lam) of the image's,
    centred at ``centre`` (fractions of height and width, drawn once per batch), clipped to the image,
    so its area is at most (1 - lam) of the image."""
    ratio = (1.0 - lam) ** 0.5
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(centre[0] * height), int(centre[1] * width)
    return (max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height),
            max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width))


def patch_pixels(a: np.ndarray, b: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    y1, y2, x1, x2 = box
    out = a.copy()
    out[y1:y2, x1:x2] = b[y1:y2, x1:x2]
    return out


def png_bytes(pixels: np.ndarray) -> bytes:
    """Lossless, so the encoder sees exactly the mixed pixels (every processor decodes with PIL)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- the batch hook

class BatchPerturber:
    """The collator hook: ``examples -> {kind: (items, rows)}``, the extra negative of each row that has
    one (SC kinds for rows of ``sc.tasks`` with a text positive, VC kinds for rows of ``vc.tasks`` with
    an image positive)."""

    def __init__(self, settings: RobustConfig, vocabulary: SwapVocabulary | None, seed: int = 0):
        if settings.text_kinds and vocabulary is None:
            raise ValueError(f"text perturbations {settings.text_kinds} need a swap vocabulary")
        self.settings, self.seed = settings, seed
        self.swapper = CaptionSwapper(vocabulary, settings.text_kinds) if settings.text_kinds else None

    def _rng(self, examples: Sequence[TrainExample]) -> random.Random:
        h = hashlib.blake2b(digest_size=8)
        h.update(str(self.seed).encode())
        for e in examples:
            h.update(f"|{e.key}:{e.positive.id}".encode())
        return random.Random(int.from_bytes(h.digest(), "little"))

    def __call__(self, examples: Sequence[TrainExample]) -> dict[str, tuple[list[Item], list[int]]]:
        rng, s = self._rng(examples), self.settings
        out: dict[str, tuple[list[Item], list[int]]] = {}
        if self.swapper is not None:
            for i, e in enumerate(examples):
                if e.task_id not in s.sc.tasks or not e.positive.text:
                    continue
                swapped = self.swapper.swap(e.positive.text, rng)
                for kind, text in (swapped or {}).items():
                    items, rows = out.setdefault(kind, ([], []))
                    items.append(Item(text, e.positive.image, e.positive.modality))
                    rows.append(i)
        if s.image_kinds:
            out |= self._mixed(examples, rng)
        return out

    def _mixed(self, examples: Sequence[TrainExample], rng: random.Random) -> dict[str, tuple[list[Item], list[int]]]:
        s = self.settings
        with_image = [i for i, e in enumerate(examples) if e.positive.image is not None]
        anchors = [i for i in with_image if examples[i].task_id in s.vc.tasks]
        if not anchors or len(with_image) < 2:
            return {}
        # A random cyclic order of the image rows: every row's partner is another row (no fixed point).
        order = rng.sample(with_image, len(with_image))
        partner = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}
        lam = rng.uniform(*s.lam_range)
        centre = (rng.random(), rng.random())  # one patch place per batch, as mix_images.py
        out: dict[str, tuple[list[Item], list[int]]] = {k: ([], []) for k in s.image_kinds}
        for i in anchors:
            a = decode_rgb(examples[i].positive.image)
            b = decode_rgb(examples[partner[i]].positive.image, size=(a.shape[1], a.shape[0]))
            for kind in s.image_kinds:
                if kind == "mix":
                    pixels = mix_pixels(a, b, lam)
                else:
                    pixels = patch_pixels(a, b, patch_box(a.shape[0], a.shape[1], lam, centre))
                p = examples[i].positive
                out[kind][0].append(Item(p.text, png_bytes(pixels), p.modality))
                out[kind][1].append(i)
        return out


def training_texts(shard_dir: str | Path, tasks: Iterable[int], max_texts: int = 200_000) -> list[str]:
    """Positive texts of the train sources of ``tasks`` (the captions SC swaps), for a derived vocabulary."""
    manifest, tasks = read_manifest(shard_dir), set(tasks)
    texts: list[str] = []
    for entry in manifest["sources"].values():
        if entry["split"] != "train" or entry["task_id"] not in tasks:
            continue
        for sample in iter_samples(Path(shard_dir) / p for p in entry["shards"]):
            texts += [p["text"] for p in sample["json"]["positives"] if p.get("text")]
            if len(texts) >= max_texts:
                return texts[:max_texts]
    return texts


def build_perturber(robust: Any, shard_dir: str | Path, seed: int) -> BatchPerturber | None:
    """The datamodule's entry (``robust``: as :meth:`RobustConfig.from_config`): None when robust training is off."""
    settings = RobustConfig.from_config(robust)
    if settings is None:
        return None
    vocab = None
    if settings.text_kinds:
        vocab = settings.build_vocabulary(_LazyTexts(shard_dir, settings.sc.tasks))
    return BatchPerturber(settings, vocab, seed)


class _LazyTexts:
    """Reads the training captions only when a vocabulary is actually derived."""

    def __init__(self, shard_dir: str | Path, tasks: Iterable[int]):
        self.shard_dir, self.tasks = shard_dir, tuple(tasks)

    def __iter__(self):
        texts = training_texts(self.shard_dir, self.tasks)
        if not texts:
            raise ValueError(f"{self.shard_dir}: no training captions for tasks {list(self.tasks)} "
                             "to derive a swap vocabulary from; give robust.sc.groups")
        return iter(texts)


__all__ = ["BatchPerturber", "build_perturber", "mix_pixels", "patch_box", "patch_pixels",
           "training_texts"]
