"""InfoNCE contrastive loss for retrieval embedders (MM-Embed Eq. 1, recipes.md §0, §6).

    loss = -(1/|B|) sum_i log[ exp(q_i . c_i+ / tau) / sum_{c' in D_B} exp(q_i . c' / tau) ]

q and c are L2-normalised. D_B is every positive of the *global* batch plus
  - hard_negatives="shared" (MM-Embed Eq. 1, Tevatron): every hard negative of the global batch;
  - hard_negatives="own" (mmE5): only query i's own hard negatives.

Distributed layout (UniIR CLIP_SF style, open_clip's --local-loss --gather-with-grad): queries stay
local, candidates are all-gathered *with* gradient. Rank r scores its B queries against all W*B
positives; query i's target column is r*B + i.

Why there is no world-size factor. Rank r computes L_r = mean over its B local queries. The backward
of all-gather is a reduce-scatter(sum), so rank r's candidate embeddings receive
sum_{r'} dL_{r'}/dc_r: rank r's parameter gradient is the part of grad_theta(sum_{r'} L_{r'}) that
flows through rank r's encoders. DDP averages over ranks, giving (1/W) grad_theta(sum_{r'} L_{r'}),
which is exactly the gradient of the mean loss over the W*B queries of the global batch. Tevatron
and VLM2Vec instead gather queries too and compute the *full* global loss on every rank with the
local slice re-inserted (no gradient through the gather); each rank then owns only its slice's
share of grad(L), DDP's average leaves grad(L)/W, and they multiply the loss by W to undo it.

Extra negatives (RoCOCO SC / VC, robustness.md §1.2; ``ExtraNegatives``): a synthesised negative of
query i (its caption with one word swapped, its image mixed with another) adds a separate term per
kind k, L = L_base + sum_k lambda_k L_k, never a column of L_base. Softmax form, the base row plus
one column (weight 1 in the denominator; lambda_k only outside), over the rows R_k that have one:

    L_k = -(1/B) sum_{i in R_k} log[ exp(s_i,target/tau) / (sum_{c in D_B} exp(s_ic/tau) + exp(s(q_i, n_i)/tau)) ]

hinge form: L_k = (1/B) sum_{i in R_k} max(0, alpha - s(q_i, c_i+) + s(q_i, n_i)) on cosine scores.
Dividing by B (not |R_k|) keeps each row's term the same whatever else is in the batch, and keeps
the DDP argument above: per-rank means over equal local batch sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F


@dataclass
class LossOutput:
    """What ``ContrastiveLoss`` returns; everything but ``loss`` is detached, for logging."""

    loss: torch.Tensor          # scalar, mean over local queries
    accuracy: torch.Tensor      # share of local queries whose target column has the top logit
    logit_scale: torch.Tensor   # 1 / tau actually used
    num_candidates: int         # logit columns per query, padded / masked slots included
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # extra-negative terms L_k, unweighted


@dataclass
class ExtraNegatives:
    """One synthesised negative for some local queries (a RoCOCO SC / VC kind; module docstring).

    ``embeddings`` (B, d), rows without a negative are ignored; ``mask`` (B,) bool, True = row i has
    one; ``weight`` = lambda_k; ``form`` softmax | hinge; ``margin`` = alpha of the hinge form.
    """

    embeddings: torch.Tensor
    mask: torch.Tensor
    weight: float
    form: str = "softmax"
    margin: float = 0.2


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) from all ranks along dim 0, keeping autograd.

    Backward is a reduce-scatter with sum: this rank's slice receives the gradients that *every*
    rank's loss sends to it (see the module docstring for why that needs no rescaling).
    """
    x = x.contiguous()  # the functional collective gathers raw storage
    try:
        from torch.distributed._functional_collectives import all_gather_single_autograd
    except ImportError:  # older torch: the autograd-aware list gather (deprecated in 2.13)
        from torch.distributed.nn.functional import all_gather
        return torch.cat(all_gather(x), dim=0)
    # Returns an AsyncCollectiveTensor: it waits on first use and carries autograd as is.
    return all_gather_single_autograd(x, 0, dist.group.WORLD)


def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (e.g. int64 ids, same shape on every rank) from all ranks along dim 0."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class ContrastiveLoss(torch.nn.Module):
    """Query -> candidate InfoNCE over in-batch positives and hard negatives (module docstring).

    Args:
        temperature: tau; logits are q.c / tau. Fixed (a non-persistent buffer) unless learnable.
        learnable_temperature: CLIP-style: a Parameter ``logit_scale`` = log(1/tau), used as
            exp(logit_scale) clamped to ``max_logit_scale`` (no gradient while clamped). For DDP to
            average its gradient, this module must sit inside the DDP-wrapped model.
        max_logit_scale: the clamp, for the learnable scale only.
        hard_negatives: "shared" (every query sees every gathered negative) or "own" (mmE5).
        gather: gather candidates across ranks (no-op without an initialised process group).
        mask_false_negatives: drop, per query, candidate columns carrying one of the query's own
            positive ids (except its target); needs ``positive_ids``.
    """

    def __init__(self, temperature: float = 0.05, learnable_temperature: bool = False,
                 max_logit_scale: float = 100.0, hard_negatives: str = "shared",
                 gather: bool = True, mask_false_negatives: bool = True) -> None:
        super().__init__()
        if hard_negatives not in ("shared", "own"):
            raise ValueError(f"hard_negatives must be 'shared' or 'own', got {hard_negatives!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.hard_negatives = hard_negatives
        self.gather = gather
        self.mask_false_negatives = mask_false_negatives
        self.learnable_temperature = learnable_temperature
        self.max_logit_scale = max_logit_scale
        init = torch.tensor(math.log(1.0 / temperature))
        if learnable_temperature:
            self.logit_scale = torch.nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init, persistent=False)

    def forward(self, query: torch.Tensor, positive: torch.Tensor,
                negatives: torch.Tensor | None = None, negative_mask: torch.Tensor | None = None,
                positive_ids: torch.Tensor | None = None, negative_ids: torch.Tensor | None = None,
                query_positive_ids: torch.Tensor | None = None,
                extra_negatives: dict[str, ExtraNegatives] | None = None) -> LossOutput:
        """Score local queries against the (gathered) candidates; see the class docstring.

        Shapes: query, positive (B, d); negatives (B, K, d); negative_mask (B, K) bool, True = a
        real negative; positive_ids (B,) int64; negative_ids (B, K); query_positive_ids (B, P)
        padded with -1. Without ``positive_ids`` nothing is masked as a false negative.
        ``extra_negatives``: {kind: ExtraNegatives}, each adding weight * L_k (module docstring);
        None or {} is the plain loss.
        """
        B, K = query.shape[0], (negatives.shape[1] if negatives is not None else 0)
        sizes = [B, positive.shape[0]] + ([] if negatives is None else [negatives.shape[0]])
        if len(set(sizes)) != 1:
            raise ValueError(f"query, positive and negatives need the same batch size, got {sizes}")
        world = _world_size() if self.gather else 1
        rank = dist.get_rank() if world > 1 else 0
        if world > 1:  # the target layout rank*B + arange(B) needs equal shapes on every rank
            sizes = all_gather_no_grad(torch.tensor([[B, K]], device=query.device)).tolist()
            if any(s != [B, K] for s in sizes):
                raise ValueError(f"ContrastiveLoss needs the same (batch size, negatives per "
                                 f"query) on every rank; got {sizes} (pad negatives and drop "
                                 f"the last incomplete batch)")
        gather = all_gather_with_grad if world > 1 else (lambda t: t)
        gather_ids = all_gather_no_grad if world > 1 else (lambda t: t)

        # Low-precision inputs (bf16 autocast) are scored in float32; float64 stays float64.
        dtype = torch.promote_types(query.dtype, torch.float32)
        q = F.normalize(query.to(dtype), dim=-1)
        pos_all = gather(F.normalize(positive.to(dtype), dim=-1))             # (W*B, d)
        if negative_mask is None and negatives is not None:
            negative_mask = torch.ones(B, K, dtype=torch.bool, device=query.device)
        masking = self.mask_false_negatives and positive_ids is not None

        # Columns: [global positives | negatives], each with an id and a validity flag per query.
        scores = [q @ pos_all.T]
        valid = [torch.ones(1, world * B, dtype=torch.bool, device=q.device)]
        col_ids = [gather_ids(positive_ids.long()).view(1, -1)] if masking else []
        if negatives is not None:
            neg = F.normalize(negatives.to(dtype), dim=-1)
            neg_ids = (negative_ids.long() if negative_ids is not None  # -1: no id, never masked
                       else torch.full((B, K), -1, dtype=torch.long, device=query.device))
            if self.hard_negatives == "shared":
                neg_all = gather(neg.reshape(B * K, neg.shape[-1]))            # (W*B*K, d)
                scores.append(q @ neg_all.T)
                valid.append(gather_ids(negative_mask.reshape(-1).long()).bool().view(1, -1))
                if masking:
                    col_ids.append(gather_ids(neg_ids.reshape(-1)).view(1, -1))
            else:  # "own": query i against its own K negatives only
                scores.append(torch.einsum("bd,bkd->bk", q, neg))
                valid.append(negative_mask.bool())
                if masking:
                    col_ids.append(neg_ids)
        logits = torch.cat(scores, dim=1)                                       # (B, n_candidates)
        n = logits.shape[1]
        excluded = ~torch.cat([v.expand(B, -1) for v in valid], dim=1)

        if masking:
            ids = torch.cat([c.expand(B, -1) for c in col_ids], dim=1)          # (B, n)
            own = positive_ids.long().view(B, 1)
            if query_positive_ids is not None:
                own = torch.cat([own, query_positive_ids.long()], dim=1)        # (B, 1 + P)
            for j in range(own.shape[1]):  # a loop over P keeps memory at (B, n)
                label = own[:, j:j + 1]
                excluded |= (ids == label) & (label != -1)

        targets = rank * B + torch.arange(B, device=q.device)
        rows = torch.arange(B, device=q.device)
        excluded[rows, targets] = False  # a row always keeps its target, so it stays finite
        scale = self.logit_scale.exp()
        if self.learnable_temperature:
            scale = scale.clamp(max=self.max_logit_scale)
        # The most negative finite value rather than -inf: exp() gives exactly 0 and the gradient
        # through masked_fill is 0, with no inf - inf = NaN risk in any later arithmetic.
        logits = (logits * scale.to(dtype)).masked_fill(excluded, torch.finfo(dtype).min)
        loss = F.cross_entropy(logits, targets)
        accuracy = (logits.detach().argmax(dim=1) == targets).float().mean()
        terms = {}
        for kind, extra in (extra_negatives or {}).items():
            term = _extra_negative_term(extra, q, logits, targets, scale.to(dtype), pos_all[targets])
            loss = loss + extra.weight * term
            terms[kind] = term.detach()
        return LossOutput(loss=loss, accuracy=accuracy, logit_scale=scale.detach(),
                          num_candidates=n, terms=terms)


def _extra_negative_term(extra: ExtraNegatives, q: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                         scale: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """L_k of the module docstring. ``logits``: the base rows, scaled and masked; ``positive`` (B, d)
    each query's own positive (unit vectors)."""
    B = q.shape[0]
    if extra.embeddings.shape != q.shape or tuple(extra.mask.shape) != (B,):
        raise ValueError(f"extra negatives need embeddings {tuple(q.shape)} and mask ({B},); got "
                         f"{tuple(extra.embeddings.shape)} and {tuple(extra.mask.shape)}")
    rows = extra.mask.to(device=q.device, dtype=torch.bool)
    # Rows without a negative are zeroed first: whatever they held (even NaN) reaches neither the
    # value nor, through a 0 * NaN, the gradient.
    emb = torch.where(rows.unsqueeze(1), extra.embeddings.to(q.dtype), torch.zeros((), dtype=q.dtype, device=q.device))
    s_extra = (q * F.normalize(emb, dim=-1)).sum(-1)                                # (B,) cosine
    if extra.form == "softmax":
        per_row = F.cross_entropy(torch.cat([logits, (s_extra * scale).unsqueeze(1)], dim=1), targets,
                                  reduction="none")
    elif extra.form == "hinge":
        per_row = (extra.margin - (q * positive).sum(-1) + s_extra).clamp(min=0)
    else:
        raise ValueError(f"extra negative form must be softmax or hinge, got {extra.form!r}")
    return torch.where(rows, per_row, torch.zeros_like(per_row)).sum() / B
