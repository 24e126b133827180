"""ContrastiveLoss under 2-process DDP (gloo) gives the gradient of the global-batch loss.

Each rank encodes half of a fixed global batch; the loss gathers candidates with gradient and DDP
averages. The parameter gradients must equal those of one process computing the loss on the whole
batch, with no world-size factor (see mmtrain/models/loss.py). Everything runs in float64 so the
comparison is tight: float32 reduction order alone moves near-zero entries by ~1e-7.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from mmtrain.models.loss import ContrastiveLoss

WORLD = 2
B_GLOBAL, K, FEATURES = 8, 3, 6
MODES = ("shared", "own")


class TwoTower(torch.nn.Module):
    """Query and candidate MLP towers plus the loss (its learnable scale is a DDP parameter too)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        torch.manual_seed(0)  # same initial weights in every process
        self.query_tower = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
        self.candidate_tower = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
        self.loss = ContrastiveLoss(temperature=0.05, learnable_temperature=True,
                                    hard_negatives=mode)
        self.double()

    def forward(self, query, positive, negatives, negative_mask, positive_ids, negative_ids,
                query_positive_ids):
        B = query.shape[0]
        candidates = self.candidate_tower(torch.cat([positive, negatives.reshape(B * K, -1)]))
        return self.loss(self.query_tower(query), candidates[:B], candidates[B:].view(B, K, -1),
                         negative_mask, positive_ids, negative_ids, query_positive_ids)


def global_batch() -> dict[str, torch.Tensor]:
    """Fixed batch whose duplicate ids cross ranks (rank 0 holds queries 0-3, rank 1 holds 4-7)."""
    g = torch.Generator().manual_seed(1)
    f64 = dict(generator=g, dtype=torch.float64)
    negative_mask = torch.ones(B_GLOBAL, K, dtype=torch.bool)
    negative_mask[1, 2] = negative_mask[6, 1:] = False
    positive_ids = torch.arange(100, 100 + B_GLOBAL)
    positive_ids[5] = positive_ids[1]            # queries 1 and 5 share a positive
    query_positive_ids = torch.full((B_GLOBAL, 2), -1)
    query_positive_ids[2, 0] = positive_ids[6]   # query 2's other labelled positive is query 6's
    negative_ids = torch.arange(200, 200 + B_GLOBAL * K).view(B_GLOBAL, K)
    negative_ids[7, 0] = positive_ids[0]         # a rank-1 negative that is query 0's positive
    negative_ids[3, 1] = positive_ids[3]         # a query's own negative equal to its positive
    return dict(query=torch.randn(B_GLOBAL, FEATURES, **f64),
                positive=torch.randn(B_GLOBAL, FEATURES, **f64),
                negatives=torch.randn(B_GLOBAL, K, FEATURES, **f64),
                negative_mask=negative_mask, positive_ids=positive_ids,
                negative_ids=negative_ids, query_positive_ids=query_positive_ids)


def run_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    """Forward + backward; returns (loss, {name: grad}) of the unwrapped model."""
    out = model(**batch)
    out.loss.backward()
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    return out.loss.detach(), {n: p.grad.clone() for n, p in inner.named_parameters()}


def _worker(rank: int, port: int, out_dir: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        b = B_GLOBAL // WORLD
        local = {k: v[rank * b:(rank + 1) * b] for k, v in global_batch().items()}
        results: dict[str, object] = {}
        for mode in MODES:
            results[mode] = run_step(DistributedDataParallel(TwoTower(mode)), local)
        try:  # unequal local batches must fail loudly on every rank
            ContrastiveLoss()(torch.randn(2 + rank, 4), torch.randn(2 + rank, 4))
            results["mismatch"] = ""
        except ValueError as err:
            results["mismatch"] = str(err)
        torch.save(results, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_gradients_equal_single_process_global_batch(tmp_path):
    mp.spawn(_worker, args=(_free_port(), tmp_path), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    batch = global_batch()
    for mode in MODES:
        loss, grads = run_step(TwoTower(mode), batch)
        # the batch exercises masking across ranks
        unmasked = TwoTower(mode)
        unmasked.loss.mask_false_negatives = False
        assert abs(unmasked(**batch).loss.item() - loss.item()) > 1e-4

        rank_losses = torch.stack([r[mode][0] for r in ranks])
        torch.testing.assert_close(rank_losses.mean(), loss, rtol=1e-12, atol=1e-12)
        ddp_grads = ranks[0][mode][1]
        assert ddp_grads.keys() == grads.keys()
        for name, grad in grads.items():
            assert grad.abs().max() > 0, name
            torch.testing.assert_close(ddp_grads[name], grad, rtol=1e-9, atol=1e-12,
                                       msg=lambda m, n=name: f"{mode} {n}: {m}")
            assert torch.equal(ranks[1][mode][1][name], ddp_grads[name]), (mode, name)

    for r in ranks:
        assert "same (batch size, negatives per query) on every rank" in r["mismatch"]
