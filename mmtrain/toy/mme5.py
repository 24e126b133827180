"""mmE5's two training sets in miniature, generated from the toy world, and the toy "languages".

**Toy languages.** mmE5's synthetic data is multilingual and XTD tests seven languages; the toy world
is English only. A toy language is a deterministic *word-level re-spelling* of English text (every
run of ASCII letters is one word; punctuation, digits and spaces stay), so the same caption exists in
several "languages" with aligned meaning and no shared surface form:

    en      the text itself
    rev     every word reversed              "a red circle"  -> "a der elcric"
    vowel   vowels rotated a->e->i->o->u->a  "a red circle"  -> "e rid corcli"
    cipher  every word replaced by a pseudo-word from a fixed lexicon (consonant-vowel syllables
            derived from the word's SHA-256), one word always to the same pseudo-word, as a
            dictionary translation would

The toy tokenizer is byte-level BPE trained on the English toy texts, so the re-spelled words split
into short pieces the model has to learn from the multilingual part of the training data.

**Toy labelled set** (``mme5_hardneg``, the layout of ``intfloat/mmE5-MMEB-hardneg``, data-formats.md
§4): the toy world's MMEB-train tables (``toy/layouts.py``) with ``neg_text`` /
``neg_image_path`` filled, as list literals like the release. mmE5 mines each MMEB subset with
VLM2Vec-LoRA and keeps the 70th candidate of the ranking (App. B.2); the toy has no such model, so
each row's negative is the ``negative_rank``-th most similar *other positive of the same subset* by
content: bag of words for texts, an 8x8 colour thumbnail for images, both for image+text.
Scenes are unique in the toy world, so no mined negative is a false negative.

**Toy synthetic set** (``mme5_synthetic``, the layout of ``intfloat/mmE5-synthetic``, §5): fresh
scenes (not the toy world's), each giving a text->image (``T2I``) and an image->text (``I2T``)
retrieval row, with the hard negative written with the sample as mmE5's generator does: the scene
with one edit (a colour, shape, size, background or position changed: ``scenes.make_edit``),
its image for T2I and its caption for I2T. Instructions stay English (mmE5 App. C); the texts are in
a language drawn per row (``language_weights``; English is the largest share, as in mmE5 Fig. 3).
Only retrieval rows: the toy has no classification or VQA task.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mmtrain.io import atomic_dir, read_marker
from mmtrain.toy import scenes as ts
from mmtrain.toy.layouts import PLACEHOLDER, write_toy_layout
from mmtrain.toy.text import INSTRUCTIONS

VERSION = 1
TOY_LANGUAGES = ("en", "rev", "vowel", "cipher")
DEFAULT_LANGUAGE_WEIGHTS = {"en": 0.4, "rev": 0.2, "vowel": 0.2, "cipher": 0.2}
_WORD = re.compile(r"[A-Za-z]+")
_VOWEL_NEXT = str.maketrans("aeiouAEIOU", "eiouaEIOUA")
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"


def _cipher_word(word: str) -> str:
    """A pseudo-word for ``word``: 1-3 consonant-vowel syllables chosen by the word's SHA-256."""
    digest = hashlib.sha256(word.lower().encode()).digest()
    n = 1 + min(2, len(word) // 3)
    out = "".join(_CONSONANTS[digest[2 * i] % len(_CONSONANTS)] + _VOWELS[digest[2 * i + 1] % len(_VOWELS)]
                  for i in range(n))
    return out.capitalize() if word[0].isupper() else out


def _reverse_word(word: str) -> str:
    out = word[::-1].lower()
    return out.capitalize() if word[0].isupper() else out


RESPELL: dict[str, Callable[[str], str]] = {
    "en": lambda w: w,
    "rev": _reverse_word,
    "vowel": lambda w: w.translate(_VOWEL_NEXT),
    "cipher": _cipher_word,
}


def respell(text: str, language: str) -> str:
    """``text`` in toy ``language`` (module docstring): every ASCII word re-spelled, the rest kept."""
    if language not in RESPELL:
        raise ValueError(f"unknown toy language {language!r}; one of {sorted(RESPELL)}")
    return _WORD.sub(lambda m: RESPELL[language](m.group(0)), text)


# ---------------------------------------------------------------- content similarity (the toy "miner")
def _words(text: str) -> list[str]:
    return _WORD.findall(text.replace(PLACEHOLDER, "").lower())


def _image_vector(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        thumb = np.asarray(im.convert("RGB").resize((8, 8), Image.BILINEAR), dtype=np.float64).ravel() / 255.0
    return thumb - thumb.mean()


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def content_vectors(items: list[tuple[str, str]], image_root: Path) -> np.ndarray:
    """(n, d) unit vectors of (text, image path) items: the text's bag of words over the items'
    vocabulary and the image's 8x8 colour thumbnail (mean removed), each made unit, then joined."""
    vocab = {w: j for j, w in enumerate(sorted({w for text, _ in items for w in _words(text)}))}
    rows = []
    for text, image in items:
        bag = np.zeros(len(vocab))
        for w in _words(text):
            bag[vocab[w]] += 1.0
        thumb = _image_vector(image_root / image) if image else np.zeros(192)
        rows.append(_unit(np.concatenate([_unit(bag), _unit(thumb)])))
    return np.stack(rows)


def kth_most_similar(vectors: np.ndarray, k: int) -> np.ndarray:
    """For each row, the index of the k-th most similar *other* row (1-based k; cosine; ties to the
    lower index)."""
    n = len(vectors)
    if not 1 <= k < n:
        raise ValueError(f"negative rank {k} needs 1 <= k < {n} items")
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(n), (n, n)), -sims), axis=1)
    return order[:, k - 1]


# ---------------------------------------------------------------- writers
def _build_atomically(out: Path, stamp: dict[str, Any], build: Callable[[Path], None]) -> None:
    """Build into a sibling temporary directory, then rename it over ``out`` (a reader never sees a
    half-written set; a finished one with the same stamp is kept)."""
    if read_marker(out) == stamp:
        return
    with atomic_dir(out, overwrite=True, marker=stamp) as tmp:
        build(tmp)


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_toy_hardneg(toy_world: str | Path, out: str | Path, *, negative_rank: int = 3) -> dict[str, Any]:
    """The toy labelled set with one mined negative per row (module docstring) in ``out``; returns the
    converter and its arguments (``mme5-hardneg``)."""
    import pyarrow.parquet as pq

    world, out = Path(toy_world), Path(out).absolute()
    mbeir_root = world / "mbeir"
    mmeb = write_toy_layout("mmeb", world, world / "mmeb")
    stamp = {"version": VERSION, "kind": "mme5_hardneg", "negative_rank": negative_rank}

    def build(tmp: Path) -> None:
        for table in sorted(Path(mmeb["train_root"]).glob("*/*.parquet")):
            rows = pq.read_table(table).to_pylist()
            positives = list(dict.fromkeys((r["pos_text"], r["pos_image_path"]) for r in rows))
            index = {p: i for i, p in enumerate(positives)}
            negative = kth_most_similar(content_vectors(positives, mbeir_root), negative_rank)
            for r in rows:
                text, image = positives[negative[index[(r["pos_text"], r["pos_image_path"])]]]
                # The release stores list literals as strings (data-formats.md §4).
                r["neg_text"], r["neg_image_path"] = repr([text]), repr([image])
            _write_parquet(tmp / table.parent.name / "train-00000-of-00001.parquet", rows)

    _build_atomically(out, stamp, build)
    return {"source": "mme5-hardneg", "root": str(out), "image_root": str(mbeir_root)}


def _instructions(query_modality: str, candidate_modality: str) -> tuple[str, ...]:
    return next(ins for _, ds, q, c, ins in INSTRUCTIONS if ds == "toycap" and (q, c) == (query_modality,
                                                                                         candidate_modality))


def write_toy_synthetic(toy_world: str | Path, out: str | Path, *, n_scenes: int = 1200, seed: int = 0,
                        language_weights: dict[str, float] | None = None) -> dict[str, Any]:
    """The toy synthetic set (module docstring) in ``out``: ``Retrieval/Retrieval.parquet`` and
    ``images/``; returns the converter and its arguments (``mme5-synthetic``). ``toy_world`` is
    unused: the set draws its own scenes (kept for the toy-layout call signature)."""
    weights = dict(language_weights or DEFAULT_LANGUAGE_WEIGHTS)
    unknown = sorted(set(weights) - set(RESPELL))
    if unknown or not weights or min(weights.values()) < 0 or sum(weights.values()) <= 0:
        raise ValueError(f"language_weights must be non-negative weights over {sorted(RESPELL)}, got {weights}")
    out = Path(out).absolute()
    stamp = {"version": VERSION, "kind": "mme5_synthetic", "n_scenes": n_scenes, "seed": seed,
             "language_weights": weights}
    t2i, i2t = _instructions("text", "image"), _instructions("image", "text")

    def build(tmp: Path) -> None:
        rng, book = random.Random(f"toy-mme5-synthetic-{seed}"), ts.SceneBook()
        languages, probs = list(weights), list(weights.values())
        rows = []
        (tmp / "images").mkdir()
        for k in range(n_scenes):
            scene = book.fresh(rng)
            negative, _, _ = ts.make_edit(scene, rng, book)  # one attribute changed: a hard negative
            img, neg_img = f"images/s{k:05d}.jpg", f"images/s{k:05d}_neg.jpg"
            (tmp / img).write_bytes(ts.render(scene))
            (tmp / neg_img).write_bytes(ts.render(negative))
            query_caption, template = ts.caption(scene, rng)
            positive_caption, _ = ts.caption(scene, rng, avoid={template})
            negative_caption, _ = ts.caption(negative, rng)
            for modality in ("T2I", "I2T"):
                lang = rng.choices(languages, probs)[0]
                if modality == "T2I":
                    row = {"qry": f"{rng.choice(t2i)}\n{respell(query_caption, lang)}", "qry_image_path": "",
                           "pos_text": "", "pos_image_path": img, "neg_text": "", "neg_image_path": neg_img}
                else:
                    row = {"qry": PLACEHOLDER + rng.choice(i2t), "qry_image_path": img,
                           "pos_text": respell(positive_caption, lang), "pos_image_path": "",
                           "neg_text": respell(negative_caption, lang), "neg_image_path": ""}
                rows.append(row | {"modality": modality, "language": lang})
        _write_parquet(tmp / "Retrieval" / "Retrieval.parquet", rows)

    _build_atomically(out, stamp, build)
    return {"source": "mme5-synthetic", "root": str(out), "image_root": str(out)}


# Toy layouts of mmE5's sets: name -> writer(toy_world, out, **options) -> converter kwargs.
TOY_MME5_LAYOUTS: dict[str, Callable[..., dict[str, Any]]] = {
    "mme5_hardneg": write_toy_hardneg,
    "mme5_synthetic": write_toy_synthetic,
}

