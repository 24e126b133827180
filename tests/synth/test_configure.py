"""Sample configuration: Table 6 weights, XLM-R languages, (seed, i) determinism, image roles."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from mmtrain.synth.configure import TABLE6, Configurator, split_tag
from mmtrain.synth.languages import DEFAULT_HIGH_RESOURCE, XLMR_LANGUAGES, language_weights

N_IMAGES = 10


class FakeNeighbours:
    """Image j's neighbours are j+1, j+2, ... (mod n): easy to check by hand."""

    def paths(self) -> list[str]:
        return [f"img{j}.jpg" for j in range(N_IMAGES)]

    def neighbours(self, index: int, k: int) -> list[int]:
        return [(index + d) % N_IMAGES for d in range(1, k + 1)]


def configurator(seed: int = 0, weights=None, **kw) -> Configurator:
    langs = language_weights(0.5, 0.3, DEFAULT_HIGH_RESOURCE)
    return Configurator(seed, weights or TABLE6, langs, FakeNeighbours(), **kw)


def test_table6_as_in_the_paper():
    per_task = {t: sum(rows.values()) for t, rows in TABLE6.items()}
    assert sum(per_task.values()) == 560_000
    assert per_task == {"classification": 140_000, "vqa": 140_000, "retrieval": 280_000}  # 1 : 1 : 2
    assert len({tag for rows in TABLE6.values() for tag in rows}) == 7


def test_xlmr_languages_and_weights():
    assert len(XLMR_LANGUAGES) == 93 and len(set(XLMR_LANGUAGES.values())) == 93
    w = language_weights(0.5, 0.3, DEFAULT_HIGH_RESOURCE)
    assert len(w) == 93 and sum(w.values()) == pytest.approx(1.0)
    assert w["en"] == pytest.approx(0.5)
    assert w["de"] == pytest.approx(0.3 / 17)
    low = [c for c in w if c != "en" and c not in DEFAULT_HIGH_RESOURCE]
    assert len(low) == 75  # mmE5 §4.3: "the 75 low-resource languages"
    assert all(w[c] == pytest.approx(0.2 / 75) for c in low)
    with pytest.raises(ValueError, match="not in XLM-R"):
        language_weights(0.5, 0.3, [], languages=["en", "tlh"])
    with pytest.raises(ValueError, match="shares"):
        language_weights(0.8, 0.3, DEFAULT_HIGH_RESOURCE)


def test_split_tag():
    assert split_tag("IT2I") == ("image,text", "image")
    assert split_tag("t2it") == ("text", "image,text")
    for bad in ("I2X", "IT", "2T"):
        with pytest.raises(ValueError, match="modality tag"):
            split_tag(bad)


def test_configuration_depends_only_on_seed_and_index():
    a, b = configurator(7), configurator(7)
    forward = [a.configure(i) for i in range(50)]
    backward = [b.configure(i) for i in reversed(range(50))][::-1]
    assert forward == backward
    assert a.configure(1000) == configurator(7).configure(1000)
    assert [c for c in forward] != [configurator(8).configure(i) for i in range(50)]


def test_draws_follow_table6_and_language_weights():
    c = configurator(3)
    n = 20_000
    configs = [c.configure(i) for i in range(n)]
    counts = Counter((x.task, x.modality) for x in configs)
    total = sum(sum(r.values()) for r in TABLE6.values())
    for task, rows in TABLE6.items():
        for tag, k in rows.items():
            p = k / total
            # 5 standard deviations of a binomial count
            assert abs(counts[(task, tag)] - n * p) < 5 * np.sqrt(n * p * (1 - p)) + 1, (task, tag)
    english = sum(x.language == "en" for x in configs)
    assert abs(english - n / 2) < 5 * np.sqrt(n / 4)
    assert len({x.language for x in configs}) > 80  # the long tail is drawn too


def test_weights_restrict_the_draw():
    c = configurator(0, {"retrieval": {"T2I": 1.0, "I2I": 0.0}, "vqa": {"IT2T": 1.0}})
    assert {(x.task, x.modality) for x in (c.configure(i) for i in range(200))} == {("retrieval", "T2I"),
                                                                                    ("vqa", "IT2T")}
    with pytest.raises(ValueError, match="no classification data of modality T2I"):
        configurator(0, {"classification": {"T2I": 1.0}})
    with pytest.raises(ValueError, match="unknown task"):
        configurator(0, {"grounding": {"I2I": 1.0}})


@pytest.mark.parametrize("tag, roles", [
    ("I2T", ("anchor", None, None)), ("IT2T", ("anchor", None, None)),
    ("I2I", ("anchor", 1, 3)), ("IT2I", ("anchor", 1, 3)), ("IT2IT", ("anchor", 1, 3)),
    ("T2I", (None, "anchor", 3)), ("T2IT", (None, "anchor", 3)),
])
def test_images_per_modality(tag, roles):
    """Query image = the anchor; document images = its neighbours at positive_rank / hard_negative_rank;
    a text query makes the anchor the positive."""
    task = "classification" if tag in ("I2T",) else "retrieval"
    c = configurator(5, {task: {tag: 1.0}}, positive_rank=1, hard_negative_rank=3)
    for i in range(20):
        cfg = c.configure(i)
        expect = [None if r is None else f"img{cfg.anchor if r == 'anchor' else (cfg.anchor + r) % N_IMAGES}.jpg"
                  for r in roles]
        assert [cfg.query_image, cfg.positive_image, cfg.negative_image] == expect
        assert [role for role, _ in cfg.images()] == [name for name, r in zip(
            ("query image", "positive image", "hard negative image"), roles) if r is not None]


def test_ranks_and_corpus_size_checked():
    with pytest.raises(ValueError, match="positive_rank < hard_negative_rank"):
        configurator(0, positive_rank=2, hard_negative_rank=2)
    with pytest.raises(ValueError, match="needs at least 11"):
        configurator(0, hard_negative_rank=10)
