"""Training perturbations (mmtrain/data/perturb.py): one-word swaps, mixed images, the batch hook."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mmtrain.toy import scenes as ts
from mmtrain.data.collate import TrainCollator
from mmtrain.data.perturb import BatchPerturber, mix_pixels, patch_box, patch_pixels
from mmtrain.data.robust import RobustConfig
from mmtrain.data.schema import Item, TrainExample, format_string
from mmtrain.data.swap_vocabulary import CaptionSwapper, SwapVocabulary, derive_vocabulary

EXPERIMENT = Path(__file__).parents[2] / "conf" / "experiment" / "toy_clip_sf_rococo.yaml"
GROUPS = yaml.safe_load(EXPERIMENT.read_text())["robust"]["sc"]["groups"]
VOCAB = SwapVocabulary.from_mapping(GROUPS, ["house", "idea", "river"])


def _captions(n: int, seed: int = 0) -> list[str]:
    rng, book = random.Random(seed), ts.SceneBook()
    return [format_string(ts.caption(book.fresh(rng), rng)[0]) for _ in range(n)]


def _differing_words(a: str, b: str) -> list[tuple[int, str, str]]:
    wa, wb = a.split(), b.split()
    assert len(wa) == len(wb), (a, b)
    return [(k, x, y) for k, (x, y) in enumerate(zip(wa, wb)) if x != y]


def _bare(word: str) -> str:
    return "".join(c for c in word if c.isalpha()).lower()


def test_toy_experiment_groups_are_nouns_of_the_toy_captions_with_their_synonyms():
    def one_word(sets):
        return sorted(sorted(w for w in ws if " " not in w) for ws in sets)

    assert one_word(VOCAB.groups["shape"]) == one_word(ts.SHAPE_WORDS.values())
    # every word comes from the training captions' own vocabulary (not from an evaluation file)
    seen = {w for text in _captions(3000, seed=5) for w in text.lower().replace(",", " ").replace(".", " ")
            .replace(";", " ").replace(":", " ").split()}
    assert set(VOCAB.words()) <= seen, set(VOCAB.words()) - seen


def test_every_kind_changes_exactly_one_word_at_one_shared_position():
    swapper = CaptionSwapper(VOCAB, ["same_concept", "diff_concept", "rand_voca"])
    rng = random.Random(0)
    for caption in _captions(200):
        out = swapper.swap(caption, rng)
        assert out is not None and set(out) == {"same_concept", "diff_concept", "rand_voca"}
        diffs = {kind: _differing_words(caption, text) for kind, text in out.items()}
        assert all(len(d) == 1 for d in diffs.values()), diffs
        positions = {d[0][0] for d in diffs.values()}
        assert len(positions) == 1  # like RoCOCO: the same word replaced in every set
        _, old, _ = diffs["same_concept"][0]
        old = _bare(old)
        group, k = VOCAB.synset_of[old]
        new_same = _bare(diffs["same_concept"][0][2])
        assert VOCAB.synset_of[new_same][0] == group and VOCAB.synset_of[new_same][1] != k
        new_diff = _bare(diffs["diff_concept"][0][2])
        assert VOCAB.synset_of[new_diff][0] != group
        assert _bare(diffs["rand_voca"][0][2]) in {"house", "idea", "river"}


def test_same_concept_prefers_values_the_caption_does_not_name_and_keeps_case():
    swapper = CaptionSwapper(VOCAB, ["same_concept"])
    text = "Circle and square and star and cross and diamond."  # only the triangle is not named
    for seed in range(20):
        out = swapper.swap(text, random.Random(seed))["same_concept"]
        (k, old, new), = _differing_words(text, out)
        assert _bare(new) == "triangle", out  # never a synonym, never a shape already there
        assert new[0].isupper() == old[0].isupper()
    # every other value named: falls back to a named one rather than a synonym of the word
    full = "circle square triangle cross diamond star"
    for seed in range(20):
        (k, old, new), = _differing_words(full, CaptionSwapper(VOCAB, ["same_concept"]).swap(full, random.Random(seed))["same_concept"])
        assert VOCAB.synset_of[new] != VOCAB.synset_of[old]


def test_no_swappable_word_gives_none_and_bad_vocabularies_fail():
    assert CaptionSwapper(VOCAB, ["same_concept"]).swap("nothing to see here.", random.Random(0)) is None
    with pytest.raises(ValueError, match="not one lower-case word"):
        SwapVocabulary.from_mapping({"shape": ["plus sign", "Circle"]})
    with pytest.raises(ValueError, match="repeated"):
        SwapVocabulary.from_mapping({"a": ["red"], "b": ["red"]})
    with pytest.raises(ValueError, match="two concept groups"):
        CaptionSwapper(SwapVocabulary.from_mapping({"shape": ["circle", "star"]}), ["diff_concept"])
    with pytest.raises(ValueError, match="random words"):
        CaptionSwapper(SwapVocabulary.from_mapping({"shape": ["circle", "star"]}), ["rand_voca"])
    with pytest.raises(ValueError, match="unknown text perturbation"):
        CaptionSwapper(VOCAB, ["danger"])


def test_derived_vocabulary_groups_words_that_share_contexts():
    vocab = derive_vocabulary(_captions(3000), min_count=5)
    group_of = {w: g for g, sets in vocab.groups.items() for s in sets for w in s}
    shapes = ["circle", "square", "triangle", "star", "diamond"]
    colours = ["red", "green", "blue", "yellow", "orange"]
    assert len({group_of[w] for w in shapes}) == 1 and len({group_of[w] for w in colours}) == 1
    assert group_of["circle"] != group_of["red"]
    assert not {"the", "and", "a", "on"} & set(vocab.random_words) and "circle" in vocab.random_words


def test_vocabulary_file_and_inline_groups(tmp_path):
    path = tmp_path / "vocab.yaml"
    path.write_text(yaml.safe_dump({"groups": {"animal": [["dog", "puppy"], "cat"], "thing": ["table"]},
                                    "random_words": ["idea"]}))
    base = {"enabled": True, "form": "softmax", "margin": 0.2,
            "sc": {"weights": {"same_concept": 1.0, "diff_concept": 0.0, "rand_voca": 1.0}, "tasks": [3],
                   "groups": None, "vocabulary_file": str(path), "random_words": None},
            "vc": {"weights": {"mix": 0.0, "patch": 0.0}, "tasks": [0], "lam_min": 0.5, "lam_max": 0.9}}
    vocab = RobustConfig.from_config(base).build_vocabulary(None)
    assert vocab.groups["animal"] == (("dog", "puppy"), ("cat",)) and vocab.random_words == ("idea",)
    # inline groups, random words derived from the training captions
    inline = base | {"sc": base["sc"] | {"vocabulary_file": None, "groups": {"animal": ["dog", "cat"]}, "min_count": 1}}
    vocab = RobustConfig.from_config(inline).build_vocabulary(["a dog sees a ball", "the cat and the ball"])
    assert set(vocab.random_words) == {"dog", "sees", "ball", "cat"}
    both = base | {"sc": base["sc"] | {"groups": {"animal": ["dog"]}}}
    with pytest.raises(ValueError, match="not both"):
        RobustConfig.from_config(both).build_vocabulary(None)


# ---------------------------------------------------------------- images

def test_mix_and_patch_pixels_equal_the_formulas():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    mixed = mix_pixels(a, b, 0.8)
    for (y, x, c) in [(0, 0, 0), (4, 6, 2), (2, 3, 1)]:
        assert mixed[y, x, c] == round(0.8 * int(a[y, x, c]) + 0.2 * int(b[y, x, c]))
    assert np.abs(mixed.astype(float) - (0.8 * a + 0.2 * b)).max() <= 0.5
    box = patch_box(40, 40, 0.75, (0.5, 0.5))  # sides sqrt(0.25) = 1/2 of 40, centred
    assert box == (10, 30, 10, 30)
    assert patch_box(40, 40, 0.75, (0.0, 0.99)) == (0, 10, 29, 40)  # clipped at the borders
    patched = patch_pixels(a, b, (1, 3, 2, 5))
    inside = np.zeros(a.shape[:2], dtype=bool)
    inside[1:3, 2:5] = True
    assert (patched[inside] == b[inside]).all() and (patched[~inside] == a[~inside]).all()


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _image_examples(n: int = 6) -> list[TrainExample]:
    rng, book = random.Random(1), ts.SceneBook()
    out = []
    for i in range(n):
        scene = book.fresh(rng)
        task = 0 if i < n - 1 else 4  # the last row: image -> image, a partner but never an anchor
        query = Item(ts.caption(scene, rng)[0], None, "text") if task == 0 else Item(None, ts.render(scene), "image")
        out.append(TrainExample(query, Item(None, ts.render(scene), "image", id=100 + i), positive_ids=[100 + i],
                                task_id=task, key=f"q{i}"))
    return out


def _settings(weights: dict[str, float], lam=(0.7, 0.7)) -> RobustConfig:
    return RobustConfig.from_config({
        "enabled": True, "form": "softmax", "margin": 0.2,
        "sc": {"weights": {k: weights.get(k, 0.0) for k in ("same_concept", "diff_concept", "rand_voca")},
               "tasks": [3], "groups": GROUPS, "random_words": ["house"]},
        "vc": {"weights": {k: weights.get(k, 0.0) for k in ("mix", "patch")}, "tasks": [0],
               "lam_min": lam[0], "lam_max": lam[1]}})


def test_batch_mixed_images_equal_the_formula_with_another_rows_image():
    examples = _image_examples()
    out = BatchPerturber(_settings({"mix": 1.0, "patch": 1.0}), None, seed=3)(examples)
    originals = [_decode(e.positive.image) for e in examples]
    assert out["mix"][1] == out["patch"][1] == [0, 1, 2, 3, 4]  # the task-4 row is no anchor
    partners, boxes = [], set()
    for item, i in zip(*out["mix"]):
        got = _decode(item.image)
        matches = [j for j in range(len(examples)) if j != i
                   and np.abs(got.astype(int) - mix_pixels(originals[i], originals[j], 0.7)).max() == 0]
        assert len(matches) == 1, (i, matches)
        partners.append(matches[0])
    assert len(set(partners)) == len(partners)  # a permutation: no image is everyone's partner
    # One box for the whole batch: the union of where each row differs from its own image is a box
    # of area <= (1 - lam) of the image, and every row is its image with that box from its partner.
    patched = [(_decode(item.image), originals[i], originals[j]) for (item, i), j in zip(zip(*out["patch"]), partners)]
    ys, xs = np.nonzero(np.any([(got != a).any(axis=2) for got, a, _ in patched], axis=0))
    box = (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)
    assert 0 < (box[1] - box[0]) * (box[3] - box[2]) <= 0.3 * 64 * 64
    for got, a, b in patched:
        assert (got == patch_pixels(a, b, box)).all()
    again = BatchPerturber(_settings({"mix": 1.0, "patch": 1.0}), None, seed=3)(examples)
    assert [x.image for x in again["mix"][0]] == [x.image for x in out["mix"][0]]  # deterministic
    other = BatchPerturber(_settings({"mix": 1.0}), None, seed=4)(examples)
    assert [x.image for x in other["mix"][0]] != [x.image for x in out["mix"][0]]


def test_collator_adds_extra_negatives_only_for_eligible_rows_and_only_with_a_perturber():
    rng = random.Random(0)
    texts = _captions(3)
    image = ts.render(ts.SceneBook().fresh(rng))
    examples = [TrainExample(Item(None, image, "image", "describe"), Item(t, None, "text", id=i), positive_ids=[i],
                             task_id=3 if i != 1 else 1, key=f"q{i}") for i, t in enumerate(texts)]

    def processor(items):
        return {"texts": [it.text for it in items]}

    perturber = BatchPerturber(_settings({"same_concept": 1.0, "rand_voca": 0.5}), VOCAB, seed=0)
    batch = TrainCollator(processor, perturber=perturber)(examples)
    assert set(batch["extra_negatives"]) == {"same_concept", "rand_voca"}
    for entry in batch["extra_negatives"].values():
        assert entry["rows"].tolist() == [0, 2]
        for row, text in zip(entry["rows"].tolist(), entry["inputs"]["texts"]):
            assert len(_differing_words(texts[row], text)) == 1
    plain = TrainCollator(processor)(examples)
    assert "extra_negatives" not in plain and set(plain) == set(batch) - {"extra_negatives"}
