"""Stage 1 of mmE5's synthesis (§3.2.1): configure each sample's task, modality combination, language
and input images.

Sample ``i``'s configuration is a function of ``(seed, i)`` only (plus the corpus and the embedder,
which a run pins), so a killed run resumes with the same configurations and a longer run extends a
shorter one. The draws come from one numpy generator seeded with ``SeedSequence([seed, i])``, in a
fixed order: (task, modality), language, clarity, difficulty, anchor image.

Images: the anchor is drawn uniformly from the corpus. When the query has an image the anchor is the
query image; when the document side has images too, the positive and the hard negative are the
anchor's retrieved neighbours at ``positive_rank`` and ``hard_negative_rank`` (mmE5: retrieved with
jina-clip-v2; here any embedder, retrieval.py). A text query (T2I, T2IT) has no query image: the
anchor is the positive image and its neighbour at ``hard_negative_rank`` the hard negative (the paper
does not say how it handles these two combinations; this keeps "one image sampled, the rest
retrieved").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from mmtrain.data.schema import task_id_for

# mmE5 Table 6 (App. A): samples per (task, modality combination); 560K in all, classification : VQA :
# retrieval = 1 : 1 : 2, seven distinct modality combinations. Tags as in the released set's `modality`
# column (data-formats.md §5): I = image, T = text, IT = image + text; query side first.
TABLE6: dict[str, dict[str, int]] = {
    "classification": {"I2T": 126_177, "IT2T": 13_823},
    "retrieval": {"I2T": 98_040, "IT2T": 41_960, "IT2I": 56_185, "I2I": 27_988, "IT2IT": 27_656,
                  "T2I": 14_090, "T2IT": 14_081},
    "vqa": {"IT2T": 140_000},
}
# The released set's table (and the converter's `dataset`) per task.
TASK_TABLES = {"classification": "Classification", "retrieval": "Retrieval", "vqa": "VQA"}
SIDE_MODALITY = {"I": "image", "T": "text", "IT": "image,text"}
# App. C: VQA samples get no generated instruction.
VQA_INSTRUCTION = "Represent the given image with the following question:"
# App. C follows Wang et al. (2024a): a random clarity and difficulty per sample.
CLARITY = ("clear", "understandable with some effort", "ambiguous")
DIFFICULTY = ("high school", "college", "PhD")


def split_tag(tag: str) -> tuple[str, str]:
    """``"IT2I"`` -> ("image,text", "image"): the query and document modalities of a tag."""
    query, sep, doc = tag.upper().partition("2")
    if not sep or query not in SIDE_MODALITY or doc not in SIDE_MODALITY:
        raise ValueError(f"modality tag {tag!r} is not like 'I2T', 'IT2IT', 'T2I'")
    return SIDE_MODALITY[query], SIDE_MODALITY[doc]


@dataclass(frozen=True)
class SampleConfig:
    """One sample's configuration. Images are corpus-relative paths (None where the side has none)."""

    index: int
    task: str
    modality: str
    language: str
    clarity: str
    difficulty: str
    anchor: int
    query_image: str | None
    positive_image: str | None
    negative_image: str | None

    @property
    def query_modality(self) -> str:
        return split_tag(self.modality)[0]

    @property
    def document_modality(self) -> str:
        return split_tag(self.modality)[1]

    @property
    def task_id(self) -> int:
        return task_id_for(self.query_modality, self.document_modality)

    def images(self) -> list[tuple[str, str]]:
        """(role, corpus path) of every image the MLLM sees, in prompt order."""
        roles = (("query image", self.query_image), ("positive image", self.positive_image),
                 ("hard negative image", self.negative_image))
        return [(role, path) for role, path in roles if path is not None]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Neighbours(Protocol):
    """What the configurator needs from retrieval: the anchor's k nearest other images."""

    def paths(self) -> list[str]: ...
    def neighbours(self, index: int, k: int) -> list[int]: ...


def task_modality_table(weights: Mapping[str, Mapping[str, float]]) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Rows (task, tag) and their probabilities; checks every tag and that the task has it in mmE5."""
    rows, probs = [], []
    for task in sorted(weights):
        if task not in TABLE6:
            raise ValueError(f"unknown task {task!r}; one of {sorted(TABLE6)}")
        for tag in sorted(weights[task]):
            split_tag(tag)
            if tag not in TABLE6[task]:
                raise ValueError(f"mmE5 synthesises no {task} data of modality {tag}; "
                                 f"{task} has {sorted(TABLE6[task])}")
            w = float(weights[task][tag])
            if w < 0:
                raise ValueError(f"weight of {task}/{tag} is negative ({w})")
            if w > 0:
                rows.append((task, tag))
                probs.append(w)
    if not rows:
        raise ValueError("every (task, modality) weight is zero")
    p = np.asarray(probs, dtype=np.float64)
    return rows, p / p.sum()


class Configurator:
    """``configure(i)`` -> :class:`SampleConfig`, a function of ``(seed, i)``."""

    def __init__(self, seed: int, task_modality_weights: Mapping[str, Mapping[str, float]],
                 language_weights: Mapping[str, float], neighbours: Neighbours, *,
                 positive_rank: int = 1, hard_negative_rank: int = 3,
                 clarity: tuple[str, ...] = CLARITY, difficulty: tuple[str, ...] = DIFFICULTY):
        if not 1 <= positive_rank < hard_negative_rank:
            raise ValueError(f"need 1 <= positive_rank < hard_negative_rank, got {positive_rank}, {hard_negative_rank}")
        if not clarity or not difficulty:
            raise ValueError("clarity and difficulty need at least one setting each")
        self.seed = int(seed)
        self.rows, self.row_p = task_modality_table(task_modality_weights)
        self.languages = sorted(language_weights)
        lp = np.asarray([language_weights[c] for c in self.languages], dtype=np.float64)
        self.language_p = lp / lp.sum()
        self.neighbour_source = neighbours
        self.paths = neighbours.paths()
        if len(self.paths) <= hard_negative_rank:
            raise ValueError(f"the image corpus has {len(self.paths)} images; hard_negative_rank="
                             f"{hard_negative_rank} needs at least {hard_negative_rank + 1}")
        self.positive_rank, self.hard_negative_rank = positive_rank, hard_negative_rank
        self.clarity, self.difficulty = tuple(clarity), tuple(difficulty)

    def configure(self, index: int) -> SampleConfig:
        if index < 0:
            raise ValueError(f"sample index must be >= 0, got {index}")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        task, tag = self.rows[int(rng.choice(len(self.rows), p=self.row_p))]
        language = self.languages[int(rng.choice(len(self.languages), p=self.language_p))]
        clarity = self.clarity[int(rng.integers(len(self.clarity)))]
        difficulty = self.difficulty[int(rng.integers(len(self.difficulty)))]
        anchor = int(rng.integers(len(self.paths)))
        query_mod, doc_mod = split_tag(tag)
        query = positive = negative = None
        if "image" in query_mod:
            query = self.paths[anchor]
            if "image" in doc_mod:
                near = self.neighbour_source.neighbours(anchor, self.hard_negative_rank)
                positive = self.paths[near[self.positive_rank - 1]]
                negative = self.paths[near[self.hard_negative_rank - 1]]
        elif "image" in doc_mod:
            positive = self.paths[anchor]
            negative = self.paths[self.neighbour_source.neighbours(anchor, self.hard_negative_rank)[-1]]
        return SampleConfig(index, task, tag, language, clarity, difficulty, anchor, query, positive, negative)
