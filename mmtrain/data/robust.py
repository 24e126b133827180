"""The ``robust`` config group's schema (RoCOCO SC / VC training, robustness.md §1.2,
docs/robustness.md) and the settings the collator hook (mmtrain/data/perturb.py) and the module's loss
terms read. Light to import: composing a config must not load torch or webdataset."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

from mmtrain.data.swap_vocabulary import TEXT_KINDS, SwapVocabulary, derive_vocabulary

IMAGE_KINDS = ("mix", "patch")
LOSS_FORMS = ("softmax", "hinge")

@dataclass
class RobustTextWeights:
    """lambda per kind of swapped caption; 0 = not made."""

    same_concept: float = 0.0             # another synonym set of the replaced word's concept group
    diff_concept: float = 0.0             # a word of another concept group
    rand_voca: float = 0.0                # a word of the random vocabulary


@dataclass
class RobustSemanticConfig:
    """RoCOCO's semantic contrastive (SC) loss: swapped captions as negatives of image queries."""

    weights: RobustTextWeights = field(default_factory=RobustTextWeights)
    tasks: list[int] = field(default_factory=lambda: [3])   # M-BEIR tasks whose text positives are swapped
    groups: Optional[Any] = None          # {group: [word | [synonym, ...]]}; None: file or derived
    vocabulary_file: Optional[str] = None  # YAML/JSON {groups: ..., random_words: [...]}
    random_words: Optional[list[str]] = None  # None: from the file, else derived from training captions
    min_count: int = 5                    # derived vocabulary: occurrences a word needs


@dataclass
class RobustImageWeights:
    mix: float = 0.0                      # lam * a + (1 - lam) * b
    patch: float = 0.0                    # a box of b pasted into a (CutMix)


@dataclass
class RobustVisualConfig:
    """RoCOCO's visual contrastive (VC) loss: mixed images as negatives of text queries."""

    weights: RobustImageWeights = field(default_factory=RobustImageWeights)
    tasks: list[int] = field(default_factory=lambda: [0])   # M-BEIR tasks whose image positives are mixed
    lam_min: float = 0.5                  # lam ~ U[lam_min, lam_max], one per batch
    lam_max: float = 0.9


@dataclass
class RobustConfig:
    """Robustness-aware training (RoCOCO SC / VC; robustness.md §1.2, docs/robustness.md): the ``robust``
    config group's schema, and what the collator hook and the module's loss terms read."""

    enabled: bool = False
    form: str = "softmax"                 # softmax (extra logit column) | hinge (margin on cosines)
    margin: float = 0.2                   # hinge form only
    sc: RobustSemanticConfig = field(default_factory=RobustSemanticConfig)
    vc: RobustVisualConfig = field(default_factory=RobustVisualConfig)

    @classmethod
    def from_config(cls, cfg: Any) -> RobustConfig | None:
        """The group (this dataclass, a DictConfig or a plain, possibly partial, dict) checked, with the
        schema's defaults filled in; None when it is off (``enabled: false``) or absent."""
        if cfg is None:
            return None
        from omegaconf import OmegaConf  # the schema merge fills defaults and checks types

        robust = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), cfg))
        if not robust.enabled:
            return None
        if any(w < 0 for w in robust.weights_all.values()):
            raise ValueError(f"robust weights must be >= 0, got {robust.weights_all}")
        if robust.form not in LOSS_FORMS:
            raise ValueError(f"robust.form must be one of {LOSS_FORMS}, got {robust.form!r}")
        if not 0.0 <= robust.vc.lam_min <= robust.vc.lam_max <= 1.0:
            raise ValueError(f"robust.vc needs 0 <= lam_min <= lam_max <= 1, got {robust.lam_range}")
        return robust

    @property
    def weights_all(self) -> dict[str, float]:
        return {k: float(getattr(self.sc.weights, k)) for k in TEXT_KINDS} | {
            k: float(getattr(self.vc.weights, k)) for k in IMAGE_KINDS}

    @property
    def weights(self) -> dict[str, float]:
        """kind -> loss weight, only the kinds that are made (weight > 0)."""
        return {k: w for k, w in self.weights_all.items() if w > 0}

    @property
    def lam_range(self) -> tuple[float, float]:
        return float(self.vc.lam_min), float(self.vc.lam_max)

    @property
    def text_kinds(self) -> list[str]:
        return [k for k in TEXT_KINDS if k in self.weights]

    @property
    def image_kinds(self) -> list[str]:
        return [k for k in IMAGE_KINDS if k in self.weights]

    def build_vocabulary(self, training_texts: Iterable[str] | None) -> SwapVocabulary:
        """Groups from ``vocabulary_file`` or inline ``groups``, else derived; random words given (inline
        or in the file), else derived from ``training_texts`` when rand_voca is on."""
        sc = self.sc
        groups, randoms = sc.groups, sc.random_words
        if sc.vocabulary_file:
            if groups is not None:
                raise ValueError("robust.sc: give `groups` or `vocabulary_file`, not both")
            loaded = SwapVocabulary.load(sc.vocabulary_file)
            groups = {g: [list(s) for s in sets] for g, sets in loaded.groups.items()}
            randoms = randoms or list(loaded.random_words) or None
        if groups is not None and (randoms or "rand_voca" not in self.weights):
            return SwapVocabulary.from_mapping(groups, randoms or ())
        if training_texts is None:
            raise ValueError("robust.sc: no vocabulary given and no training captions to derive one from")
        derived = derive_vocabulary(training_texts, sc.min_count, groups=groups)
        return SwapVocabulary(derived.groups, tuple(randoms)) if randoms else derived
