"""A deterministic stand-in encoder whose embeddings a test can recompute (importable by name, so
processes spawned by the distributed tests find it too)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from mmtrain.data.schema import Item

SMALL = dict(n_train=24, n_val=6, n_test=6, n_distractors=2, captions_per_image=2, beir_passages=20,
             beir_train=10, beir_test=5, vocab_size=600)
DIM = 16


def item_vector(item: Item, query: bool) -> np.ndarray:
    """A unit vector from the item's content (and its instruction for queries)."""
    h = hashlib.sha256(f"{query}|{item.instruction if query else ''}|{item.text}|".encode() + (item.image or b""))
    v = np.random.default_rng(int.from_bytes(h.digest()[:8], "little")).standard_normal(DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


class HashProcessor:
    def __call__(self, items: list[Item]) -> dict:
        return {"items": items}


class HashEncoder(torch.nn.Module):
    """Stands in for a trained encoder; counts how many items it encoded (resume tests)."""

    def __init__(self):
        super().__init__()
        self.encoded = 0

    def _encode(self, inputs: dict, query: bool) -> torch.Tensor:
        self.encoded += len(inputs["items"])
        return torch.from_numpy(np.stack([item_vector(i, query) for i in inputs["items"]]))

    def encode_queries(self, inputs):
        return self._encode(inputs, True)

    def encode_candidates(self, inputs):
        return self._encode(inputs, False)
