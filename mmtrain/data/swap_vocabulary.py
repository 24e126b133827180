"""RoCOCO's one-word swaps (``mmtrain/data/perturb.py`` uses them): the swap vocabulary (concept groups of
synonym sets, random words; from a YAML/JSON file, inline, or derived from the training captions) and
the caption swapper.

Derived groups come from shared contexts and know no synonyms; give groups when paraphrases must not
become negatives.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

TEXT_KINDS = ("same_concept", "diff_concept", "rand_voca")
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
