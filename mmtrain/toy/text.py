"""Text-only parts of the toy world: the query instructions table and a small BEIR retrieval set.

The BEIR set is a corpus of short passages about invented entities (planets, rivers, cities,
creatures, ships) with unique made-up names. Each query is answerable by exactly one passage: it
either names the entity, or (for some) gives an attribute combination that no other passage has.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from mmtrain.data.schema import format_string

# (dataset id, dataset name, query modality, candidate modality, four instructions). The first of
# each row is written in the style of MM-Embed Table 11 (recipes.md §9.1).
INSTRUCTIONS: list[tuple[int, str, str, str, tuple[str, str, str, str]]] = [
    (0, "toycap", "text", "image", (
        "Find me a drawn scene that matches the given caption.",
        "Retrieve the picture that this caption describes.",
        "Identify the drawing that fits the following description.",
        "Show me the image of shapes described by this caption.")),
    (0, "toycap", "image", "text", (
        "Find a caption describing the following drawn scene.",
        "Retrieve a description that matches the shapes in this picture.",
        "Which caption best describes the given drawing?",
        "Find the text that describes the colours and positions in this image.")),
    (1, "toyqa", "text", "text", (
        "Retrieve passages that describe the scene asked about in the following question.",
        "Find a passage that answers this question about a drawing.",
        "Which passage describes the scene in this question?",
        "Retrieve the written description that answers the question.")),
    (1, "toyqa", "text", "image,text", (
        "Find a titled drawing that answers this question.",
        "Retrieve an image with its title that matches the question.",
        "Which picture and title answer the following question?",
        "Find the drawing, with its title, that this question asks about.")),
    (2, "toysim", "image", "image", (
        "Find a drawn scene that looks similar to the provided image.",
        "Retrieve the picture that shows the same shapes as this one.",
        "Which drawing is a near copy of the given image?",
        "Find an image with the same layout, shapes and colours.")),
    (3, "toyedit", "image,text", "text", (
        "Retrieve a caption of the scene obtained by applying the modification to the provided image.",
        "Describe the given drawing after the requested change.",
        "Find the caption of the edited version of this picture.",
        "Which description fits the image once the modification is made?")),
    (3, "toyedit", "image,text", "image", (
        "Retrieve a drawn scene that aligns with the modification instructions of the provided image.",
        "Find the picture that results from editing the given image as described.",
        "Show the drawing after applying this change to the reference image.",
        "Which image matches the reference picture with the requested modification?")),
    (3, "toyedit", "image,text", "image,text", (
        "Retrieve a drawing-caption pair that shows the provided image after the described change.",
        "Find the captioned picture that results from this modification.",
        "Which image and caption match the edited version of this drawing?",
        "Retrieve the modified scene together with its description.")),
]
INSTRUCTIONS_HEADER = "query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1\tprompt_2\tprompt_3\tprompt_4"


def instructions_tsv() -> str:
    """The M-BEIR ``query_instructions.tsv`` text: header, then one row per (dataset, q mod, c mod)."""
    lines = [INSTRUCTIONS_HEADER]
    for did, name, qm, cm, prompts in INSTRUCTIONS:
        lines.append("\t".join([qm, cm, name, str(did), *(format_string(p) for p in prompts)]))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- BEIR set

_SYLLABLES = ("zor", "ka", "mel", "tri", "vo", "lun", "bar", "qui", "fen", "dra", "sil", "nox",
              "pe", "ru", "tal", "xi", "mo", "gan", "el", "or", "ith", "sa", "bel", "kor")
_NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_COLOURS = ("blue", "green", "red", "orange", "purple", "silver", "golden", "pink")


@dataclass
class _Kind:
    """An entity kind: its attribute value lists, passage text, and questions answered by it."""

    label: str
    attrs: dict[str, tuple[str, ...]]
    passage: Callable[[str, dict[str, str]], str]
    questions: list[Callable[[str, dict[str, str]], str]]  # name-based: unique by the name
    combo: Callable[[dict[str, str]], str]                  # attribute-only; used only if unique


_KINDS = [
    _Kind("planet", {"moons": _NUMBERS, "sky": _COLOURS, "export": ("copper", "ice", "salt", "glass", "spice")},
          lambda n, a: f"Planet {n} has {a['moons']} moons and a {a['sky']} sky. Its people export {a['export']}.",
          [lambda n, a: f"How many moons does planet {n} have?",
           lambda n, a: f"What colour is the sky on {n}?",
           lambda n, a: f"What does the planet {n} export?"],
          lambda a: f"Which planet has {a['moons']} moons, a {a['sky']} sky and exports {a['export']}?"),
    _Kind("river", {"length": ("forty", "ninety", "three hundred", "six hundred", "two thousand"),
                    "sea": ("Amber Sea", "Cold Sea", "Glass Bay", "Long Gulf", "Quiet Ocean"),
                    "fish": ("eels", "trout", "silverfins", "crabs")},
          lambda n, a: f"The {n} River is {a['length']} kilometres long and flows into the {a['sea']}. "
                       f"Fishers catch {a['fish']} in it.",
          [lambda n, a: f"How long is the {n} River?",
           lambda n, a: f"Where does the {n} River end?",
           lambda n, a: f"What do fishers catch in the {n}?"],
          lambda a: f"Which river of {a['length']} kilometres flows into the {a['sea']} and holds {a['fish']}?"),
    _Kind("city", {"people": ("ten", "fifty", "eighty", "two hundred", "nine hundred"),
                   "famous": ("bridges", "bells", "towers", "gardens", "markets", "lanterns"),
                   "river": ("a canal", "a lake", "the hills", "the coast")},
          lambda n, a: f"{n} is a city of {a['people']} thousand people near {a['river']}, "
                       f"famous for its {a['famous']}.",
          [lambda n, a: f"What is the city of {n} famous for?",
           lambda n, a: f"How many people live in {n}?",
           lambda n, a: f"What is {n} near?"],
          lambda a: f"Which city near {a['river']} with {a['people']} thousand people is known for {a['famous']}?"),
    _Kind("creature", {"colour": _COLOURS, "food": ("seeds", "moss", "beetles", "fruit", "fish"),
                       "home": ("caves", "treetops", "marshes", "deserts", "glaciers")},
          lambda n, a: f"The {n.lower()} is a {a['colour']} creature that eats {a['food']} and lives in {a['home']}.",
          [lambda n, a: f"What does the {n.lower()} eat?",
           lambda n, a: f"Where does the {n.lower()} live?",
           lambda n, a: f"What colour is the {n.lower()}?"],
          lambda a: f"Which {a['colour']} creature eats {a['food']} and lives in {a['home']}?"),
    _Kind("ship", {"year": tuple(str(y) for y in range(1700, 1900, 7)),
                   "cargo": ("tea", "wool", "timber", "maps", "lamps", "bricks"),
                   "masts": ("two", "three", "four")},
          lambda n, a: f"The ship {n} was built in {a['year']}, has {a['masts']} masts and carries {a['cargo']}.",
          [lambda n, a: f"When was the ship {n} built?",
           lambda n, a: f"What cargo does the {n} carry?",
           lambda n, a: f"How many masts does the ship {n} have?"],
          lambda a: f"Which ship from {a['year']} with {a['masts']} masts carries {a['cargo']}?"),
]


def _names(rng: random.Random, n: int) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


def make_beir(rng: random.Random, n_passages: int, n_train: int, n_test: int
              ) -> tuple[list[dict], list[dict], list[tuple[str, str]], list[tuple[str, str]]]:
    """Return (corpus, queries, train qrels, test qrels); qrels are (query-id, corpus-id) pairs.

    Train and test queries point at disjoint passages; the remaining passages are unasked distractors.
    """
    if n_train + n_test > n_passages:
        raise ValueError("need at least one passage per BEIR query")
    names = _names(rng, n_passages)
    entities = []
    for name in names:
        kind = rng.choice(_KINDS)
        entities.append((name, kind, {k: rng.choice(v) for k, v in kind.attrs.items()}))
    combos = Counter((k.label, tuple(sorted(a.items()))) for _, k, a in entities)
    corpus = [{"_id": f"doc{i}", "title": name, "text": kind.passage(name, a)}
              for i, (name, kind, a) in enumerate(entities)]
    order = list(range(n_passages))
    rng.shuffle(order)
    queries: list[dict] = []
    qrels: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for split, idx in (("train", order[:n_train]), ("test", order[n_train:n_train + n_test])):
        for i in idx:
            name, kind, a = entities[i]
            # An attribute-only question is a paraphrase without the lexical anchor of the name.
            if rng.random() < 0.25 and combos[(kind.label, tuple(sorted(a.items())))] == 1:
                text = kind.combo(a)
            else:
                text = rng.choice(kind.questions)(name, a)
            qid = f"q{len(queries)}"
            queries.append({"_id": qid, "text": text})
            qrels[split].append((qid, f"doc{i}"))
    return corpus, queries, qrels["train"], qrels["test"]
