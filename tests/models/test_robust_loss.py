"""RoCOCO SC / VC terms of ContrastiveLoss against a float64 reference written with explicit loops,
and their wiring through the collator and the module."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from mmtrain.data.collate import TrainCollator
from mmtrain.data.perturb import BatchPerturber
from mmtrain.data.robust import RobustConfig
from mmtrain.data.schema import Item, TrainExample
from mmtrain.data.swap_vocabulary import SwapVocabulary
from mmtrain.lightning.module import RetrievalModule
from mmtrain.models.loss import ContrastiveLoss, ExtraNegatives


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    return torch.dot(a, b) / torch.sqrt(torch.dot(a, a) * torch.dot(b, b))


def reference(q, p, negs, neg_mask, pos_ids, extras, tau):
    """(total loss, {kind: unweighted term}) of robustness.md §1.2 on top of MM-Embed Eq. 1, one
    candidate at a time. ``extras``: {kind: (embeddings, row mask, weight, form, margin)}. Shared hard
    negatives; a column whose id equals the query's positive id (not its own target) is skipped."""
    B, K = q.shape[0], negs.shape[1]
    denominators, s_target = [], []
    for i in range(B):
        cols = [(p[j], int(pos_ids[j]), j == i) for j in range(B)]
        cols += [(negs[b, k], -1, False) for b in range(B) for k in range(K) if bool(neg_mask[b, k])]
        denom = 0.0
        for vec, cid, is_target in cols:
            if not is_target and cid == int(pos_ids[i]):
                continue  # a false negative: another copy of the query's positive
            denom = denom + torch.exp(_cos(q[i], vec) / tau)
        denominators.append(denom)
        s_target.append(_cos(q[i], p[i]) / tau)
    total = sum(torch.log(denominators[i]) - s_target[i] for i in range(B)) / B
    terms = {}
    for kind, (emb, mask, weight, form, margin) in extras.items():
        term = 0.0
        for i in range(B):
            if not bool(mask[i]):
                continue
            if form == "softmax":
                term = term + torch.log(denominators[i] + torch.exp(_cos(q[i], emb[i]) / tau)) - s_target[i]
            else:
                term = term + torch.clamp(margin - _cos(q[i], p[i]) + _cos(q[i], emb[i]), min=0.0)
        terms[kind] = term / B
        total = total + weight * terms[kind]
    return total, terms


def _inputs(B=5, K=2, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, p = torch.randn(B, d, generator=g, dtype=torch.float64), torch.randn(B, d, generator=g, dtype=torch.float64)
    negs = torch.randn(B, K, d, generator=g, dtype=torch.float64)
    neg_mask = torch.ones(B, K, dtype=torch.bool)
    neg_mask[1, 1] = False
    pos_ids = torch.tensor([10, 11, 10, 13, 14])  # rows 0 and 2 share a positive: masked for each other
    swapped = torch.randn(B, d, generator=g, dtype=torch.float64)
    mixed = torch.randn(B, d, generator=g, dtype=torch.float64)
    return q, p, negs, neg_mask, pos_ids, swapped, mixed


@pytest.mark.parametrize("form", ["softmax", "hinge"])
def test_terms_weights_and_masking_match_reference_with_gradients(form):
    q, p, negs, neg_mask, pos_ids, swapped, mixed = _inputs()
    rows_a = torch.tensor([True, False, True, True, False])
    rows_b = torch.tensor([False, True, True, False, True])
    leaves = [t.clone().requires_grad_() for t in (q, p, negs, swapped, mixed)]
    lq, lp, ln, ls, lm = leaves
    extras = {"same_concept": ExtraNegatives(ls, rows_a, 0.7, form, 0.3),
              "mix": ExtraNegatives(lm, rows_b, 0.25, form, 0.3)}
    out = ContrastiveLoss(temperature=0.1)(lq, lp, ln, negative_mask=neg_mask, positive_ids=pos_ids,
                                           extra_negatives=extras)
    grads = torch.autograd.grad(out.loss, leaves)

    ref_leaves = [t.clone().requires_grad_() for t in (q, p, negs, swapped, mixed)]
    rq, rp, rn, rs, rm = ref_leaves
    ref, ref_terms = reference(rq, rp, rn, neg_mask, pos_ids,
                               {"same_concept": (rs, rows_a, 0.7, form, 0.3), "mix": (rm, rows_b, 0.25, form, 0.3)},
                               tau=0.1)
    ref_grads = torch.autograd.grad(ref, ref_leaves)
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-12)
    assert set(out.terms) == {"same_concept", "mix"}
    for kind in out.terms:
        torch.testing.assert_close(out.terms[kind], ref_terms[kind].detach(), rtol=1e-10, atol=1e-12)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg, rtol=1e-8, atol=1e-10)
    # rows without an extra negative get no gradient through it
    assert torch.count_nonzero(grads[3][~rows_a]) == 0 and torch.count_nonzero(grads[4][~rows_b]) == 0


def test_off_switch_gives_exactly_the_old_loss():
    q, p, negs, neg_mask, pos_ids, swapped, _ = _inputs()
    loss = ContrastiveLoss(temperature=0.05)
    old = loss(q, p, negs, negative_mask=neg_mask, positive_ids=pos_ids)
    for extras in (None, {}):
        new = loss(q, p, negs, negative_mask=neg_mask, positive_ids=pos_ids, extra_negatives=extras)
        assert torch.equal(new.loss, old.loss) and new.terms == {}
    zero = loss(q, p, negs, negative_mask=neg_mask, positive_ids=pos_ids,
                extra_negatives={"mix": ExtraNegatives(swapped, torch.ones(5, dtype=torch.bool), 0.0)})
    assert torch.equal(zero.loss, old.loss) and zero.terms["mix"] > 0


def test_a_harder_negative_raises_the_softmax_term_and_rows_without_one_are_ignored():
    q, p, *_ = _inputs()
    loss = ContrastiveLoss(temperature=0.05)
    rows = torch.tensor([True, True, False, False, False])
    easy = -q.clone()
    easy[2:] = float("nan")  # rows without a negative may hold anything
    hard = q.clone()
    lq = q.clone().requires_grad_()
    out = loss(lq, p, extra_negatives={"x": ExtraNegatives(easy, rows, 1.0)})
    (grad,) = torch.autograd.grad(out.loss, lq)
    assert math.isfinite(float(out.terms["x"])) and torch.isfinite(grad).all()
    t_hard = loss(q, p, extra_negatives={"x": ExtraNegatives(hard, rows, 1.0)}).terms["x"]
    assert t_hard > out.terms["x"] > 0


def test_bad_shapes_and_form_are_rejected():
    q, p, *_ = _inputs()
    loss = ContrastiveLoss()
    with pytest.raises(ValueError, match="extra negatives need embeddings"):
        loss(q, p, extra_negatives={"x": ExtraNegatives(q[:3], torch.ones(3, dtype=torch.bool), 1.0)})
    with pytest.raises(ValueError, match="softmax or hinge"):
        loss(q, p, extra_negatives={"x": ExtraNegatives(q, torch.ones(5, dtype=torch.bool), 1.0, "cube")})


# ---------------------------------------------------------------- collator + module wiring

ROBUST = {"enabled": True, "form": "softmax", "margin": 0.2,
          "sc": {"weights": {"same_concept": 0.5, "diff_concept": 0.0, "rand_voca": 0.0}, "tasks": [3],
                 "groups": {"shape": [["circle", "disc"], "square", "star"], "colour": ["red", "blue"]}},
          "vc": {"weights": {"mix": 0.0, "patch": 0.0}, "tasks": [0], "lam_min": 0.5, "lam_max": 0.9}}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    from mmtrain.models.clip_sf import ClipSFBackbone, TinyClip
    from mmtrain.toy.tokenizer import train_bpe_tokenizer
    path = tmp_path_factory.mktemp("tok")
    train_bpe_tokenizer(["a red circle a blue square a star disc find"] * 20, vocab_size=300).save_pretrained(path)
    return ClipSFBackbone(tokenizer=str(path), tiny=TinyClip(), max_text_length=16)


def _examples(image: bytes) -> list[TrainExample]:
    # rows 0 and 2: image -> text (task 3) with a swappable caption; row 1: text -> text (task 1)
    return [TrainExample(Item(None, image, "image", "describe"), Item("a red circle", None, "text", id=1),
                         positive_ids=[1], task_id=3, key="q0"),
            TrainExample(Item("a question", None, "text"), Item("a red star", None, "text", id=2),
                         positive_ids=[2], task_id=1, key="q1"),
            TrainExample(Item(None, image, "image", "describe"), Item("a blue square", None, "text", id=3),
                         positive_ids=[3], task_id=3, key="q2")]


def test_module_adds_the_weighted_term_of_the_collated_negatives(backbone):
    from mmtrain.toy.scenes import Obj, Scene, render
    image = render(Scene.make([Obj("circle", "red", "large", "center")], "black"))
    settings = RobustConfig.from_config(ROBUST)
    perturber = BatchPerturber(settings, settings.build_vocabulary(None), seed=0)
    processor = backbone.build_processor()
    batch = TrainCollator(processor, perturber=perturber)(_examples(image))
    entry = batch["extra_negatives"]["same_concept"]
    assert entry["rows"].tolist() == [0, 2]

    torch.manual_seed(0)
    module = RetrievalModule(backbone, ContrastiveLoss(temperature=0.05), partial(torch.optim.SGD, lr=0.1),
                             robust=ROBUST)
    module.configure_model()
    module.eval()
    with torch.no_grad():
        emb = module.encode_batch(batch)
        extras = module.encode_extra_negatives(batch, emb["positive"])
        swapped = perturber(_examples(image))["same_concept"][0]
        alone = module.encoder.encode_candidates(processor(swapped))
        plain = module.loss(emb["query"], emb["positive"], positive_ids=batch["positive_ids"],
                            query_positive_ids=batch["query_positive_ids"])
        step = module.training_step(batch, 0)
    extra = extras["same_concept"]
    assert extra.mask.tolist() == [True, False, True] and extra.weight == 0.5
    torch.testing.assert_close(extra.embeddings[[0, 2]], alone, atol=1e-5, rtol=1e-4)
    assert torch.count_nonzero(extra.embeddings[1]) == 0
    ref, terms = reference(emb["query"], emb["positive"], torch.zeros(3, 0, emb["query"].shape[1]),
                           torch.zeros(3, 0, dtype=torch.bool), batch["positive_ids"],
                           {"same_concept": (extra.embeddings, extra.mask, 0.5, "softmax", 0.2)}, tau=0.05)
    torch.testing.assert_close(step.double(), ref, rtol=1e-5, atol=1e-6)
    assert float(terms["same_concept"]) > 0 and step > plain.loss


def test_off_module_rejects_extra_negatives_and_plain_batches_have_none(backbone):
    module = RetrievalModule(backbone, ContrastiveLoss(), partial(torch.optim.SGD, lr=0.1),
                             robust={"enabled": False})
    assert module.robust is None
    processor = backbone.build_processor()
    from mmtrain.toy.scenes import Obj, Scene, render
    image = render(Scene.make([Obj("circle", "red", "large", "center")], "black"))
    plain = TrainCollator(processor)(_examples(image))
    assert "extra_negatives" not in plain
    module.configure_model()
    with torch.no_grad():
        assert module.encode_extra_negatives(plain, torch.zeros(3, 4)) == {}
        plain["extra_negatives"] = {"same_concept": {"inputs": None, "rows": torch.tensor([0])}}
        with pytest.raises(ValueError, match="no robust settings"):
            module.encode_extra_negatives(plain, torch.zeros(3, 4))


def test_gradcache_module_refuses_robust_training(backbone):
    from mmtrain.lightning.gradcache import GradCacheRetrievalModule
    with pytest.raises(NotImplementedError, match="GradCache"):
        GradCacheRetrievalModule(backbone, ContrastiveLoss(), partial(torch.optim.SGD, lr=0.1), robust=ROBUST)


def test_vocabulary_in_settings_is_plain_and_checked():
    with pytest.raises(ValueError, match="form"):
        RobustConfig.from_config(ROBUST | {"form": "cube"})
    with pytest.raises(ValueError, match="lam_min"):
        RobustConfig.from_config(ROBUST | {"vc": ROBUST["vc"] | {"lam_min": 0.95}})
    vocab = RobustConfig.from_config(ROBUST).build_vocabulary(None)
    assert isinstance(vocab, SwapVocabulary) and vocab.synset_of["disc"] == ("shape", 0)


def test_derived_vocabulary_when_no_groups_are_given():
    cfg = ROBUST | {"sc": ROBUST["sc"] | {"groups": None, "min_count": 2,
                                          "weights": {"same_concept": 1.0, "diff_concept": 1.0, "rand_voca": 0.0}}}
    texts = [f"a {c} {s} on the {p}" for c in ("red", "blue", "green") for s in ("circle", "square", "star")
             for p in ("left", "right")]
    vocab = RobustConfig.from_config(cfg).build_vocabulary(texts)
    group_of = {w: g for g, sets in vocab.groups.items() for s in sets for w in s}
    assert group_of["red"] == group_of["blue"] == group_of["green"]
    assert group_of["circle"] == group_of["star"] != group_of["red"]
    with pytest.raises(ValueError, match="no training captions"):
        RobustConfig.from_config(cfg).build_vocabulary(None)


@pytest.mark.slow
def test_training_run_with_robust_rococo_logs_every_term(tmp_path):
    """End to end through train(cfg): the toy experiment's settings, random words derived from the
    training shards, mixed batches so that image->text and text->image rows occur in a few steps."""
    import csv

    from hydra import compose, initialize_config_module

    from mmtrain.train import train
    small = ["debug=tiny", "robust.sc.min_count=1"]  # the tests' shared small toy world (conf/debug/tiny.yaml)
    with initialize_config_module("mmtrain.conf", version_base="1.3"):
        cfg = compose("config", overrides=[
            "+experiment=toy_clip_sf_rococo", f"paths.cache_dir={tmp_path}/cache", f"paths.run_dir={tmp_path}/run",
            *small, "data.composition=mixed", "data.batch_size=32", "data.num_workers=1", "trainer.max_steps=6",
            "trainer.log_every_n_steps=1", "eval.final_split=null", "logger=csv"])
    train(cfg)
    with open(tmp_path / "run" / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for kind in ("same_concept", "diff_concept", "rand_voca", "mix", "patch"):
        values = [float(r[f"train/robust/{kind}"]) for r in rows if r.get(f"train/robust/{kind}")]
        assert values and all(math.isfinite(v) and v >= 0 for v in values), kind
