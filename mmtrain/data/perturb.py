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

Vocabulary: concept groups of synonym sets (a YAML/JSON file or inline ``groups``), random words given
or derived from the training captions (``derive_vocabulary``). Derived groups come from shared
contexts and know no synonyms; give groups when paraphrases must not become negatives.

Determinism: a batch's draws come from ``random.Random`` seeded by (seed, the batch's example keys
and positive ids), so a resumed stream makes the same negatives, and no global RNG is touched.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from mmtrain.data.schema import Item, TrainExample

TEXT_KINDS = ("same_concept", "diff_concept", "rand_voca")
IMAGE_KINDS = ("mix", "patch")
LOSS_FORMS = ("softmax", "hinge")
WORD = re.compile(r"[A-Za-z]+")
# Function words never become swap sources or random substitutes when a vocabulary is derived.
# A short hand-written list: the project has no NLP dependency that ships one.
STOPWORDS = frozenset("""a an the and or but of in on at to for with from by as is are was were be been
being it its this that these those there here their they them his her he she we you i me my our your
not no nor so than then too very can will just do does did has have had into onto over under up down
out off about above below near next some any each other such only own same all both few more most""".split())


# ---------------------------------------------------------------- vocabulary

@dataclass(frozen=True)
class SwapVocabulary:
    """Concept groups of synonym sets, and a random vocabulary; all words single lower-case words."""

    groups: dict[str, tuple[tuple[str, ...], ...]]
    random_words: tuple[str, ...] = ()
    synset_of: dict[str, tuple[str, int]] = field(init=False, repr=False)  # word -> (group, set index)

    def __post_init__(self) -> None:
        index: dict[str, tuple[str, int]] = {}
        bad, repeated = [], []
        for group, synsets in self.groups.items():
            if not synsets:
                bad.append(f"group {group!r} is empty")
            for k, synset in enumerate(synsets):
                for word in synset:
                    if not WORD.fullmatch(word) or word != word.lower():
                        bad.append(f"{group}[{k}]: {word!r} is not one lower-case word")
                    elif word in index:
                        repeated.append(f"{word!r} in {index[word]} and {(group, k)}")
                    index[word] = (group, k)
        bad += [f"random_words: {w!r} is not one lower-case word" for w in self.random_words
                if not WORD.fullmatch(w) or w != w.lower()]
        if bad or repeated:
            raise ValueError(f"swap vocabulary: {len(bad)} invalid and {len(repeated)} repeated words: "
                             + "; ".join((bad + repeated)[:10]))
        object.__setattr__(self, "synset_of", index)

    @classmethod
    def from_mapping(cls, groups: Mapping[str, Sequence[str | Sequence[str]]],
                     random_words: Iterable[str] = ()) -> SwapVocabulary:
        """``{group: [word or [synonym, ...], ...]}``: a bare word is a synonym set of its own."""
        return cls({str(g): tuple((s,) if isinstance(s, str) else tuple(s) for s in sets)
                    for g, sets in groups.items()}, tuple(random_words))

    @classmethod
    def load(cls, path: str | Path) -> SwapVocabulary:
        """A YAML or JSON file ``{groups: {...}, random_words: [...]}`` (random_words optional)."""
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("groups"), dict):
            raise ValueError(f"{path}: expected a mapping with a `groups` mapping, got {type(data).__name__}")
        return cls.from_mapping(data["groups"], data.get("random_words") or ())

    def words(self, group: str | None = None) -> list[str]:
        return [w for g, sets in self.groups.items() if group in (None, g) for s in sets for w in s]


def _tokens(text: str) -> list[str]:
    return [m.group().lower() for m in WORD.finditer(text)]


def derive_vocabulary(texts: Iterable[str], min_count: int = 5, min_similarity: float = 0.5,
                      groups: Mapping[str, Sequence[str | Sequence[str]]] | None = None) -> SwapVocabulary:
    """A vocabulary from training captions. Random words: every word seen ``min_count`` times (not a
    stopword, at least 3 letters). Groups (unless given): words that occur between the same
    neighbours, by cosine similarity of their (left word, right word) counts, assigned greedily in
    frequency order to the first group whose first word is at least ``min_similarity`` alike.
    Written by hand: distributional grouping is a few lines, and no NLP dependency is needed."""
    counts: Counter[str] = Counter()
    contexts: dict[str, Counter[str]] = defaultdict(Counter)
    for text in texts:
        toks = ["<s>", *_tokens(text), "</s>"]
        counts.update(toks[1:-1])
        for left, word, right in zip(toks, toks[1:], toks[2:]):
            contexts[word].update((f"L:{left}", f"R:{right}"))
    common = sorted((w for w, c in counts.items() if c >= min_count and len(w) >= 3 and w not in STOPWORDS),
                    key=lambda w: (-counts[w], w))
    if not common:
        raise ValueError(f"no word occurs {min_count} times in the training captions: cannot derive a vocabulary")
    if groups is not None:
        return SwapVocabulary.from_mapping(groups, common)

    def unit(c: Counter[str]) -> dict[str, float]:
        norm = sum(v * v for v in c.values()) ** 0.5
        return {k: v / norm for k, v in c.items()}

    vectors = {w: unit(contexts[w]) for w in common}
    heads: list[str] = []
    members: dict[str, list[str]] = {}
    for w in common:
        sims = [(sum(v * vectors[h].get(k, 0.0) for k, v in vectors[w].items()), h) for h in heads]
        best = max(sims, default=(0.0, ""))
        if best[0] >= min_similarity:
            members[best[1]].append(w)
        else:
            heads.append(w)
            members[w] = [w]
    return SwapVocabulary({f"g{i}_{h}": tuple((w,) for w in members[h]) for i, h in enumerate(heads)},
                          tuple(common))


# ---------------------------------------------------------------- captions

class CaptionSwapper:
    """One-word swaps of a caption, one per text kind, all at the same word position."""

    def __init__(self, vocabulary: SwapVocabulary, kinds: Sequence[str]):
        unknown = sorted(set(kinds) - set(TEXT_KINDS))
        if unknown:
            raise ValueError(f"unknown text perturbation kinds {unknown}; known: {TEXT_KINDS}")
        if "diff_concept" in kinds and len(vocabulary.groups) < 2:
            raise ValueError("diff_concept needs at least two concept groups in the swap vocabulary")
        if "rand_voca" in kinds and not vocabulary.random_words:
            raise ValueError("rand_voca needs random words (give random_words or derive them from the data)")
        self.vocab, self.kinds = vocabulary, [k for k in TEXT_KINDS if k in kinds]

    def _substitutes(self, word: str, named: set[tuple[str, int]]) -> dict[str, list[str]]:
        group, k = self.vocab.synset_of[word]
        own = set(self.vocab.groups[group][k])
        out: dict[str, list[str]] = {}
        for kind in self.kinds:
            if kind == "same_concept":
                others = [(j, s) for j, s in enumerate(self.vocab.groups[group]) if j != k]
                fresh = [w for j, s in others if (group, j) not in named for w in s]
                out[kind] = fresh or [w for _, s in others for w in s]
            elif kind == "diff_concept":
                out[kind] = [w for g in self.vocab.groups if g != group for w in self.vocab.words(g)]
            else:
                out[kind] = [w for w in self.vocab.random_words if w not in own]
        return out

    def swap(self, text: str, rng: random.Random) -> dict[str, str] | None:
        """``{kind: swapped caption}``, or None when no word of ``text`` has a substitute for every kind."""
        spans = [m for m in WORD.finditer(text) if m.group().lower() in self.vocab.synset_of]
        named = {self.vocab.synset_of[m.group().lower()] for m in spans}
        options = [(m, subs) for m in spans
                   if all((subs := self._substitutes(m.group().lower(), named)).values())]
        if not options:
            return None
        m, subs = options[rng.randrange(len(options))]
        out = {}
        for kind in self.kinds:
            word = rng.choice(subs[kind])
            if m.group()[0].isupper():
                word = word[0].upper() + word[1:]
            out[kind] = text[: m.start()] + word + text[m.end():]
        return out


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


# ---------------------------------------------------------------- settings and the batch hook

@dataclass(frozen=True)
class RobustSettings:
    """The ``robust`` config group, parsed and checked (mmtrain/config.py ``RobustConfig``)."""

    weights: dict[str, float]            # kind -> loss weight (only kinds with weight > 0)
    form: str = "softmax"
    margin: float = 0.2
    sc_tasks: tuple[int, ...] = (3,)
    vc_tasks: tuple[int, ...] = (0,)
    lam_range: tuple[float, float] = (0.5, 0.9)
    vocabulary: dict[str, Any] = field(default_factory=dict)  # groups / vocabulary_file / random_words / min_count

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> RobustSettings | None:
        """None when the group is off (``enabled: false``) or absent."""
        if cfg is None or not cfg.get("enabled", False):
            return None
        sc, vc = cfg["sc"], cfg["vc"]
        weights = {k: float(sc["weights"][k]) for k in TEXT_KINDS} | {k: float(vc["weights"][k]) for k in IMAGE_KINDS}
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"robust weights must be >= 0, got {weights}")
        if cfg["form"] not in LOSS_FORMS:
            raise ValueError(f"robust.form must be one of {LOSS_FORMS}, got {cfg['form']!r}")
        lam = (float(vc["lam_min"]), float(vc["lam_max"]))
        if not 0.0 <= lam[0] <= lam[1] <= 1.0:
            raise ValueError(f"robust.vc needs 0 <= lam_min <= lam_max <= 1, got {lam}")
        vocab = {"groups": _plain(sc.get("groups")), "vocabulary_file": sc.get("vocabulary_file"),
                 "random_words": _plain(sc.get("random_words")), "min_count": int(sc.get("min_count", 5))}
        return cls({k: w for k, w in weights.items() if w > 0}, str(cfg["form"]), float(cfg["margin"]),
                   tuple(sc["tasks"]), tuple(vc["tasks"]), lam, vocab)

    @property
    def text_kinds(self) -> list[str]:
        return [k for k in TEXT_KINDS if k in self.weights]

    @property
    def image_kinds(self) -> list[str]:
        return [k for k in IMAGE_KINDS if k in self.weights]

    def build_vocabulary(self, training_texts: Iterable[str] | None) -> SwapVocabulary:
        """Groups from ``vocabulary_file`` or inline ``groups``, else derived; random words given (inline
        or in the file), else derived from ``training_texts`` when rand_voca is on."""
        v = self.vocabulary
        groups, randoms = v.get("groups"), v.get("random_words")
        if v.get("vocabulary_file"):
            if groups is not None:
                raise ValueError("robust.sc: give `groups` or `vocabulary_file`, not both")
            loaded = SwapVocabulary.load(v["vocabulary_file"])
            groups = {g: [list(s) for s in sets] for g, sets in loaded.groups.items()}
            randoms = randoms or list(loaded.random_words) or None
        if groups is not None and (randoms or "rand_voca" not in self.weights):
            return SwapVocabulary.from_mapping(groups, randoms or ())
        if training_texts is None:
            raise ValueError("robust.sc: no vocabulary given and no training captions to derive one from")
        derived = derive_vocabulary(training_texts, v.get("min_count", 5), groups=groups)
        return SwapVocabulary(derived.groups, tuple(randoms)) if randoms else derived


def _plain(x: Any) -> Any:
    """OmegaConf containers -> plain lists / dicts (picklable, and what SwapVocabulary expects)."""
    from omegaconf import OmegaConf
    return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x


class BatchPerturber:
    """The collator hook: ``examples -> {kind: (items, rows)}``, the extra negative of each row that has
    one (SC kinds for rows of ``sc_tasks`` with a text positive, VC kinds for rows of ``vc_tasks`` with
    an image positive)."""

    def __init__(self, settings: RobustSettings, vocabulary: SwapVocabulary | None, seed: int = 0):
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
                if e.task_id not in s.sc_tasks or not e.positive.text:
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
        anchors = [i for i in with_image if examples[i].task_id in s.vc_tasks]
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
    from mmtrain.data.shards import iter_samples, read_manifest

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


def build_perturber(robust: Mapping[str, Any] | None, shard_dir: str | Path, seed: int) -> BatchPerturber | None:
    """The datamodule's entry: None when robust training is off."""
    settings = RobustSettings.from_config(robust)
    if settings is None:
        return None
    vocab = None
    if settings.text_kinds:
        vocab = settings.build_vocabulary(_LazyTexts(shard_dir, settings.sc_tasks))
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


__all__ = ["BatchPerturber", "CaptionSwapper", "RobustSettings", "SwapVocabulary", "build_perturber",
           "derive_vocabulary", "mix_pixels", "patch_box", "patch_pixels", "training_texts"]
