"""Collate: canonical examples -> tensors, through the backbone's processor.

Runs inside DataLoader workers. The processor (tokenizer + image processor of the backbone) is the
only backbone-specific part; the id bookkeeping the loss needs is the same for every backbone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mmtrain.data.schema import Item, TrainExample

Processor = Callable[[list[Item]], dict[str, torch.Tensor]]


class TrainCollator:
    """``list[TrainExample]`` -> one training batch.

    Keys: ``query``, ``positive`` (processor outputs for B items); ``negative`` (processor output
    for the R real negatives, or None) with ``negative_slot`` (R,) their flat positions in a (B, K)
    grid and ``negative_mask`` (B, K) which slots are real (a query may have fewer than K);
    ``positive_ids`` (B,), ``negative_ids`` (B, K) (-1 where empty), ``query_positive_ids`` (B, P)
    every labelled positive of each query (-1 padded), ``task_id`` (B,).

    With a ``perturber`` (robust training, mmtrain/data/perturb.py ``BatchPerturber``) also
    ``extra_negatives``: {kind: {"inputs": processor output, "rows": (R,) the rows they belong to}},
    only for kinds that some row of the batch has; without one the batch is unchanged.
    """

    def __init__(self, processor: Processor, num_negatives: int = 0,
                 perturber: Callable[[list[TrainExample]], dict[str, tuple[list[Item], list[int]]]] | None = None):
        self.processor = processor
        self.num_negatives = num_negatives
        self.perturber = perturber

    def __call__(self, examples: list[TrainExample]) -> dict[str, Any]:
        b, k = len(examples), self.num_negatives
        batch: dict[str, Any] = {
            "query": self.processor([e.query for e in examples]),
            "positive": self.processor([e.positive for e in examples]),
            "positive_ids": torch.tensor([e.positive.id for e in examples], dtype=torch.long),
            "task_id": torch.tensor([e.task_id for e in examples], dtype=torch.long),
        }
        p = max(1, max(len(e.positive_ids) for e in examples))
        qpos = torch.full((b, p), -1, dtype=torch.long)
        for i, e in enumerate(examples):
            qpos[i, : len(e.positive_ids)] = torch.tensor(e.positive_ids, dtype=torch.long)
        batch["query_positive_ids"] = qpos
        if k > 0:
            negatives, slots = [], []
            neg_ids = torch.full((b, k), -1, dtype=torch.long)
            for i, e in enumerate(examples):
                for j, neg in enumerate(e.negatives[:k]):
                    negatives.append(neg)
                    slots.append(i * k + j)
                    neg_ids[i, j] = neg.id
            mask = torch.zeros(b * k, dtype=torch.bool)
            mask[slots] = True
            batch["negative"] = self.processor(negatives) if negatives else None
            batch["negative_slot"] = torch.tensor(slots, dtype=torch.long)
            batch["negative_mask"] = mask.view(b, k)
            batch["negative_ids"] = neg_ids
        if self.perturber is not None:
            batch["extra_negatives"] = {
                kind: {"inputs": self.processor(items), "rows": torch.tensor(rows, dtype=torch.long)}
                for kind, (items, rows) in self.perturber(examples).items() if rows}
        return batch


class ItemCollator:
    """``list[(index, Item)]`` -> ``{"inputs": processor output, "index": (n,)}`` for encoding."""

    def __init__(self, processor: Processor):
        self.processor = processor

    def __call__(self, rows: list[tuple[int, Item]]) -> dict[str, Any]:
        return {"inputs": self.processor([item for _, item in rows]),
                "index": torch.tensor([i for i, _ in rows], dtype=torch.long)}


class IndexedItems(torch.utils.data.Dataset):
    """A list of items as a map-style dataset yielding ``(index, item)`` (the index survives the
    padding a DistributedSampler adds, so gathered embeddings can be de-duplicated)."""

    def __init__(self, items: list[Item]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Item]:
        return i, self.items[i]
