"""ContrastiveLoss against a float64 reference written with explicit loops (MM-Embed Eq. 1)."""

from __future__ import annotations

import math

import pytest
import torch

from mmtrain.models.loss import ContrastiveLoss


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.sqrt((v * v).sum())


def reference_loss(q, p, negs=None, neg_mask=None, pos_ids=None, neg_ids=None, qpos_ids=None,
                   mode="shared", tau=0.05, mask=True):
    """-mean_i log(exp(s_i,target) / sum_j exp(s_ij)), one candidate at a time, in float64.

    Returns (loss, skipped): ``skipped`` holds (query, "pos", j) / (query, "neg", owner, k) for
    every column excluded as a false negative. ``tau`` may be a tensor (for temperature gradients).
    """
    B = q.shape[0]
    K = 0 if negs is None else negs.shape[1]
    qn = [_unit(q[i].double()) for i in range(B)]
    pn = [_unit(p[j].double()) for j in range(B)]
    skipped = set()
    total = 0.0
    for i in range(B):
        own_ids = set()
        if mask and pos_ids is not None:
            own_ids = {int(pos_ids[i])}
            if qpos_ids is not None:
                own_ids |= {int(x) for x in qpos_ids[i] if int(x) != -1}
        candidates = []  # (name, unit vector, id or None)
        for j in range(B):
            candidates.append((("pos", j), pn[j], None if pos_ids is None else int(pos_ids[j])))
        owners = [] if negs is None else (range(B) if mode == "shared" else [i])
        for b in owners:
            for k in range(K):
                if neg_mask is None or bool(neg_mask[b, k]):
                    cid = None if neg_ids is None else int(neg_ids[b, k])
                    candidates.append((("neg", b, k), _unit(negs[b, k].double()), cid))
        s_target = torch.dot(qn[i], pn[i]) / tau
        denom = 0.0
        for name, vec, cid in candidates:
            if name != ("pos", i) and cid is not None and cid in own_ids:
                skipped.add((i, *name))
                continue
            denom = denom + torch.exp(torch.dot(qn[i], vec) / tau)
        total = total + (torch.log(denom) - s_target)
    return total / B, skipped


def _batch(B=4, K=3, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, d, generator=g, dtype=dtype)
    p = torch.randn(B, d, generator=g, dtype=dtype)
    n = torch.randn(B, K, d, generator=g, dtype=dtype)
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[0, K - 1] = False  # padded slots; query 2 keeps a single real negative
    mask[2, 1:] = False
    return q, p, n, mask


def test_in_batch_only_matches_reference():
    q, p, _, _ = _batch(B=5, dtype=torch.float32)
    out = ContrastiveLoss(temperature=0.05)(q, p)
    ref, _ = reference_loss(q, p, tau=0.05)
    assert out.num_candidates == 5
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-5, atol=1e-6)
    # gather=True without a process group is the same as gather=False
    torch.testing.assert_close(ContrastiveLoss(temperature=0.05, gather=False)(q, p).loss, out.loss)


@pytest.mark.parametrize("mode", ["shared", "own"])
def test_negatives_and_padding_match_reference_with_gradients(mode):
    q, p, n, mask = _batch()
    inputs = [t.clone().requires_grad_() for t in (q, p, n)]
    out = ContrastiveLoss(temperature=0.05, hard_negatives=mode)(*inputs, negative_mask=mask)
    out.loss.backward()
    ref_inputs = [t.clone().requires_grad_() for t in (q, p, n)]
    ref, _ = reference_loss(*ref_inputs, neg_mask=mask, mode=mode, tau=0.05)
    ref.backward()
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-12)
    for mine, theirs in zip(inputs, ref_inputs):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-8, atol=1e-10)
    assert out.num_candidates == (4 + 4 * 3 if mode == "shared" else 4 + 3)
    # padded slots are inert: no gradient, and their content does not matter
    assert inputs[2].grad[~mask].abs().max() == 0
    n2 = n.clone()
    n2[~mask] = 1e3 * torch.randn_like(n2[~mask])
    again = ContrastiveLoss(temperature=0.05, hard_negatives=mode)(q, p, n2, negative_mask=mask)
    torch.testing.assert_close(again.loss, out.loss.detach(), rtol=1e-12, atol=1e-12)
    # and excluding them matters: treating every slot as real changes the loss
    unpadded = ContrastiveLoss(temperature=0.05, hard_negatives=mode)(q, p, n)
    assert abs(unpadded.loss.item() - out.loss.item()) > 1e-3


@pytest.mark.parametrize("mode", ["shared", "own"])
def test_gradcheck(mode):
    q, p, n, mask = _batch(B=3, K=2, d=4, seed=1)
    loss = ContrastiveLoss(temperature=0.1, hard_negatives=mode)
    ids, neg_ids = torch.tensor([7, 7, 9]), torch.tensor([[1, 9], [2, 3], [4, 5]])
    inputs = tuple(t.clone().requires_grad_() for t in (q, p, n))
    assert torch.autograd.gradcheck(
        lambda a, b, c: loss(a, b, c, mask[:3, :2], positive_ids=ids, negative_ids=neg_ids).loss,
        inputs)


def _duplicate_batch():
    """Queries 0 and 1 share positive id 10; query 2's other labelled positive (30) is query 3's
    positive; query 3's negative 0 is query 2's positive (20); query 0's negative 1 has id 10."""
    q, p, n, _ = _batch(B=4, K=2, seed=2)
    pos_ids = torch.tensor([10, 10, 20, 30])
    qpos_ids = torch.tensor([[-1, -1], [-1, -1], [20, 30], [-1, -1]])
    neg_ids = torch.tensor([[100, 10], [101, 102], [103, 104], [20, 105]])
    return q, p, n, pos_ids, neg_ids, qpos_ids


@pytest.mark.parametrize("mode", ["shared", "own"])
def test_false_negative_masking(mode):
    q, p, n, pos_ids, neg_ids, qpos_ids = _duplicate_batch()
    kwargs = dict(positive_ids=pos_ids, negative_ids=neg_ids, query_positive_ids=qpos_ids)
    out = ContrastiveLoss(temperature=0.05, hard_negatives=mode)(q, p, n, **kwargs)
    ref, skipped = reference_loss(q, p, n, pos_ids=pos_ids, neg_ids=neg_ids, qpos_ids=qpos_ids,
                                  mode=mode, tau=0.05)
    if mode == "shared":
        expected = {(0, "pos", 1), (0, "neg", 0, 1), (1, "pos", 0), (1, "neg", 0, 1),
                    (2, "pos", 3), (2, "neg", 3, 0)}
    else:  # only a query's own negatives are candidates for it
        expected = {(0, "pos", 1), (0, "neg", 0, 1), (1, "pos", 0), (2, "pos", 3)}
    assert skipped == expected
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-12)

    unmasked_ref, none = reference_loss(q, p, n, pos_ids=pos_ids, neg_ids=neg_ids,
                                        qpos_ids=qpos_ids, mode=mode, tau=0.05, mask=False)
    assert not none and abs(unmasked_ref.item() - ref.item()) > 1e-3
    unmasked = ContrastiveLoss(temperature=0.05, hard_negatives=mode,
                               mask_false_negatives=False)(q, p, n, **kwargs)
    torch.testing.assert_close(unmasked.loss, unmasked_ref, rtol=1e-10, atol=1e-12)


def test_masking_never_removes_the_target_and_stays_finite():
    # every candidate but the target carries the query's id, and all negatives are padding
    q, p, n, _ = _batch(B=3, K=2, seed=3)
    q, p, n = (t.clone().requires_grad_() for t in (q, p, n))
    out = ContrastiveLoss(temperature=0.01)(
        q, p, n, torch.zeros(3, 2, dtype=torch.bool), positive_ids=torch.tensor([5, 5, 5]),
        negative_ids=torch.full((3, 2), 5))
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.accuracy.item() == 1.0
    assert all(torch.isfinite(t.grad).all() for t in (q, p, n))


def test_normalisation_is_idempotent():
    q, p, n, mask = _batch()
    loss = ContrastiveLoss(hard_negatives="own")
    scaled = loss(3.0 * q, 0.5 * p, 7.0 * n, mask).loss
    unit = loss(q / q.norm(dim=-1, keepdim=True), p / p.norm(dim=-1, keepdim=True),
                n / n.norm(dim=-1, keepdim=True), mask).loss
    torch.testing.assert_close(scaled, unit, rtol=1e-12, atol=1e-12)


def test_learnable_temperature_gradient_and_clamp():
    q, p, n, mask = _batch()
    fixed = ContrastiveLoss(temperature=0.05)
    assert not list(fixed.parameters()) and "logit_scale" not in fixed.state_dict()

    loss = ContrastiveLoss(temperature=0.05, learnable_temperature=True).double()
    assert [name for name, _ in loss.named_parameters()] == ["logit_scale"]
    out = loss(q, p, n, mask)
    out.loss.backward()
    # the Parameter was created in float32, so start the reference from the same rounded value
    log_scale = torch.tensor(math.log(20.0)).double().requires_grad_()
    ref, _ = reference_loss(q, p, n, mask, tau=1.0 / log_scale.exp())
    ref.backward()
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-12)
    assert loss.logit_scale.grad.abs() > 1e-6
    torch.testing.assert_close(loss.logit_scale.grad, log_scale.grad, rtol=1e-8, atol=1e-12)
    assert out.logit_scale.item() == pytest.approx(20.0)

    # tau = 0.001 -> scale 1000, clamped to 100: same loss as tau = 0.01, and no gradient
    clamped = ContrastiveLoss(temperature=0.001, learnable_temperature=True, max_logit_scale=100.0)
    out = clamped(q, p, n, mask)
    out.loss.backward()
    assert out.logit_scale.item() == pytest.approx(100.0)
    torch.testing.assert_close(out.loss, reference_loss(q, p, n, mask, tau=0.01)[0],
                               rtol=1e-10, atol=1e-12)
    assert clamped.logit_scale.grad.item() == 0.0


def test_accuracy_hand_built():
    e = torch.eye(3)
    q = e.clone()
    p = torch.stack([_unit(e[0] - 0.1 * e[2]), _unit(e[2] + 0.2 * e[1]), e[1]])
    # query 0 hits its target; query 1 prefers p2 (= e1); query 2 prefers p1 (~ e2), and with p1
    # masked its target (score 0) still beats p0 (score < 0): no ties anywhere
    out = ContrastiveLoss()(q, p)
    assert out.accuracy.item() == pytest.approx(1 / 3) and not out.accuracy.requires_grad
    # ids make p1 and p2 duplicates of each other: each one's rival is masked away
    out = ContrastiveLoss()(q, p, positive_ids=torch.tensor([0, 5, 5]))
    assert out.accuracy.item() == pytest.approx(1.0)


def test_low_precision_inputs_are_scored_in_float32():
    q, p, n, mask = _batch(dtype=torch.float32)
    out = ContrastiveLoss()(q.bfloat16(), p.bfloat16(), n.bfloat16(), mask)
    assert out.loss.dtype == torch.float32
    ref, _ = reference_loss(q.bfloat16(), p.bfloat16(), n.bfloat16(), mask)
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-5, atol=1e-5)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="hard_negatives"):
        ContrastiveLoss(hard_negatives="all")
    with pytest.raises(ValueError, match="same batch size"):
        ContrastiveLoss()(torch.randn(3, 4), torch.randn(2, 4))
