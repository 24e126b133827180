"""RoCOCO-style, FG-style and XTD-style variants of the toy world, written in those benchmarks' released
layouts (data-formats.md §7, §8, §9), so the RoCOCO, FG and XTD adapters run end to end on CPU
(``mmtrain/eval/benchmarks/toy_variants.py`` runs them).

Scenes, drawings and captions come from ``mmtrain.toy.scenes`` (the toy world's own generator),
so a model trained on the toy world reads them. Each variant draws its own scenes from its seed.

RoCOCO-style (``out_dir``)::

    coco/val2014/COCO_val2014_<id:012>.jpg
    annotations/coco_karpathy_test.json                    [{"image": "val2014/...", "caption": [5 (or 6)]}]
    annotations/{same_concept,diff_concept,rand_voca,danger}.json   originals, then 5 altered copies

An altered caption replaces one shape noun, at the same word position in every set: by another shape
(same concept), by a toy word of another group (different concept), by a general-vocabulary word
(random vocabulary) or by "weapon" (danger). Like the release, same/diff/rand are lower case without
a final period and danger keeps case with a spaced " ."; every 25th image has 6 captions.

FG-style: targets with *coarse* captions (colours, shapes and background; no sizes or positions) as
the "original" benchmark; 5 near-duplicate distractors per target (sizes and positions changed) as
unlabeled2017-named files; *fine-grained* captions (every attribute) as the renovated FG annotations::

    coco/val2014/COCO_val2014_<id:012>.jpg, coco/unlabeled2017/<id:012>.jpg
    annotations/coco_karpathy_test.json                    coarse captions (the original benchmark)
    fg/Annotations/MSCOCO_FG_ann.json, fg/Images/MSCOCO_FG_img_filenames.npy

XTD-style (multilingual text -> image): one caption per image in every toy *language*, i.e. the same
English caption re-spelled word by word (``en``, ``rev``, ``vowel``, ``cipher``: reversed words, rotated
vowels, a pseudo-word lexicon; mmtrain/toy/mme5.py), as XTD's captions are translations
of the same English ones. XTD10's raw layout, the pool is every image::

    images/TOY_XTD_<i:012>.jpg
    XTD10/test_image_names.txt, XTD10/test_1kcaptions_<language>.txt    line i captions image i
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from mmtrain.io import atomic_dir, read_marker
from mmtrain.toy import scenes as ts
from mmtrain.toy.mme5 import TOY_LANGUAGES, respell

VERSION = 1
SHAPE_NOUNS = sorted({w for ws in ts.SHAPE_WORDS.values() for w in ws}, key=len, reverse=True)
OTHER_GROUP_WORDS = ("background", "corner", "drawing", "canvas", "edge", "middle", "picture", "backdrop")
GENERAL_WORDS = ("house", "idea", "route", "episode", "season", "war", "river", "music", "letter", "garden",
                 "engine", "window", "story", "bottle", "teacher", "market")
# The toy world's toycap instructions (mmtrain/toy/text.py), as its query_instructions.tsv writes them.
TOY_T2I = "Find me a drawn scene that matches the given caption."
TOY_I2T = "Find a caption describing the following drawn scene."


def _shape_of(word: str) -> str:
    return next(s for s, ws in ts.SHAPE_WORDS.items() if word in ws)


def alter_caption(caption: str, kind: str, rng: random.Random, scene: ts.Scene) -> str:
    """Replace the first shape noun of ``caption`` as the RoCOCO set ``kind`` does (module docstring)."""
    m = re.search(r"\b(" + "|".join(map(re.escape, SHAPE_NOUNS)) + r")\b", caption)
    if m is None:
        raise ValueError(f"no shape noun in {caption!r}")
    if kind == "same_concept":
        present = {o.shape for o in scene.objects}
        word = rng.choice([ts.SHAPE_WORDS[s][0] for s in ts.SHAPES if s not in present | {_shape_of(m[1])}])
    elif kind == "diff_concept":
        word = rng.choice(OTHER_GROUP_WORDS)
    elif kind == "rand_voca":
        word = rng.choice(GENERAL_WORDS)
    elif kind == "danger":
        word = "weapon"
    else:
        raise ValueError(f"unknown perturbation {kind!r}")
    out = caption[: m.start()] + word + caption[m.end():]
    if kind == "danger":
        return out[0].upper() + out[1:] + " ."
    return out.lower()


def _coco_caption(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def _scene_captions(scene: ts.Scene, rng: random.Random, n: int) -> list[str]:
    used: set[int] = set()
    out = []
    for _ in range(n):
        text, t = ts.caption(scene, rng, avoid=used if len(used) < len(ts.CAPTION_TEMPLATES) - 1 else None)
        used.add(t)
        out.append(text)
    return out


def _coarse_caption(scene: ts.Scene, rng: random.Random) -> str:
    names = [ts.obj_phrase(o, rng, with_size=False) for o in scene.objects]
    bg = rng.choice(ts.BG_WORDS[scene.background])
    form = rng.choice(["{o} on a {bg} background", "a drawing of {o} over {bg}", "{o}, {bg} backdrop",
                       "a {bg} picture with {o}", "there is {o} on {bg}"])
    return form.format(o=" and ".join(("an " if n[0] in "aeiou" else "a ") + n for n in names), bg=bg)


def _near_duplicates(scene: ts.Scene, rng: random.Random, book: ts.SceneBook, n: int) -> list[ts.Scene]:
    """Scenes equal to ``scene`` in colours, shapes and background, differing in sizes or positions."""
    out: list[ts.Scene] = []
    for _ in range(200):
        objs = list(scene.objects)
        for i, o in enumerate(objs):
            if rng.random() < 0.5:
                objs[i] = replace(o, size="small" if o.size == "large" else "large")
        if len(objs) == 2 and rng.random() < 0.6:
            a = rng.choice(list(ts.OPPOSITE))
            objs = [replace(objs[0], pos=a), replace(objs[1], pos=ts.OPPOSITE[a])]
        elif len(objs) == 1 and rng.random() < 0.6:
            objs = [replace(objs[0], pos=rng.choice(list(ts.POSITIONS)))]
        cand = ts.Scene.make(objs, scene.background)
        if book.reserve(cand):
            out.append(cand)
        if len(out) == n:
            break
    return out


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))


def build_rococo(tmp: Path, n_images: int, seed: int) -> None:
    rng, book = random.Random(f"toy-rococo-{seed}"), ts.SceneBook()
    clean, sets = [], {k: [] for k in ("same_concept", "diff_concept", "rand_voca", "danger")}
    for i in range(n_images):
        scene = book.fresh(rng)
        rel = f"val2014/COCO_val2014_{i + 1:012d}.jpg"
        _write(tmp / "coco" / rel, ts.render(scene))
        caps = _scene_captions(scene, rng, 6 if i % 25 == 24 else 5)
        originals = [_coco_caption(c) for c in caps]
        clean.append({"image": rel, "caption": originals})
        for kind, entries in sets.items():  # the first shape noun is replaced: the same word in every set
            altered = [alter_caption(caps[j], kind, random.Random(f"{seed}-{i}-{j}-{kind}"), scene)
                       for j in range(5)]
            entries.append({"image": rel, "caption": originals + altered})
    _write(tmp / "annotations" / "coco_karpathy_test.json", json.dumps(clean, indent=1))
    for kind, entries in sets.items():
        _write(tmp / "annotations" / f"{kind}.json", json.dumps(entries, indent=1))


def build_fg(tmp: Path, n_images: int, seed: int, distractors: int = 5) -> None:
    rng, book = random.Random(f"toy-fg-{seed}"), ts.SceneBook()
    scenes = [book.fresh(rng) for _ in range(n_images)]
    original, fg_ann, names, extra = [], {}, [], []
    for i, scene in enumerate(scenes):
        key = f"COCO_val2014_{i + 1:012d}"
        _write(tmp / "coco" / "val2014" / f"{key}.jpg", ts.render(scene))
        names.append(f"{key}.jpg")
        original.append({"image": f"val2014/{key}.jpg", "caption": [_coco_caption(_coarse_caption(scene, rng))
                                                                    for _ in range(5)]})
        fg_ann[key] = _scene_captions(scene, rng, 5)  # lower case, no final period, like the release
        for dup in _near_duplicates(scene, rng, book, distractors):
            name = f"{100000 + len(extra):012d}.jpg"
            _write(tmp / "coco" / "unlabeled2017" / name, ts.render(dup))
            extra.append(name)
    _write(tmp / "annotations" / "coco_karpathy_test.json", json.dumps(original, indent=1))
    _write(tmp / "fg" / "Annotations" / "MSCOCO_FG_ann.json", json.dumps(fg_ann, indent=1))
    (tmp / "fg" / "Images").mkdir(parents=True, exist_ok=True)
    np.save(tmp / "fg" / "Images" / "MSCOCO_FG_img_filenames.npy", np.array(names + extra))


def build_xtd(tmp: Path, n_images: int, seed: int) -> None:
    rng, book = random.Random(f"toy-xtd-{seed}"), ts.SceneBook()
    names, captions = [], []
    for i in range(n_images):
        scene = book.fresh(rng)
        names.append(f"TOY_XTD_{i:012d}.jpg")
        _write(tmp / "images" / names[-1], ts.render(scene))
        captions.append(ts.caption(scene, rng)[0])  # one line each: captions hold no newline
    _write(tmp / "XTD10" / "test_image_names.txt", "\n".join(names) + "\n")
    for lang in TOY_LANGUAGES:
        _write(tmp / "XTD10" / f"test_1kcaptions_{lang}.txt", "\n".join(respell(c, lang) for c in captions) + "\n")


def ensure_variant(kind: str, out_dir: str | os.PathLike, n_images: int, seed: int) -> Path:
    """Generate the variant into ``out_dir`` unless a complete one with these settings is there
    (built beside it and renamed into place, like the toy world)."""
    out = Path(out_dir).absolute()
    stamp = {"version": VERSION, "kind": kind, "n_images": n_images, "seed": seed}
    if read_marker(out) == stamp:
        return out
    builders = {"rococo": build_rococo, "fg": build_fg, "xtd": build_xtd}
    if kind not in builders:
        raise ValueError(f"kind must be one of {sorted(builders)}, got {kind!r}")
    with atomic_dir(out, overwrite=True, marker=stamp) as tmp:
        builders[kind](tmp, n_images, seed)
    return out
