"""Positive and hard-negative images retrieved by an image embedder (mmE5 §3.2.1 uses jina-clip-v2).

An embedder is anything with ``embed(files) -> (n, d) float32 unit rows`` and ``describe() -> dict``
(what identifies its vectors; a run refuses to resume with a different one). Two ship here:

- :class:`PixelEmbedder`: no model, a normalised RGB thumbnail. Deterministic and instant: for tests,
  and as a crude colour/layout similarity when no encoder is at hand.
- :class:`EncoderEmbedder`: any mmtrain encoder (a backbone spec from conf/model, with weights from a
  training checkpoint, or an ``mmtrain.export`` directory), images encoded as candidates, exactly as the
  evaluation entry encodes an image pool (mmtrain/evaluate.py).

:class:`NeighbourIndex` embeds the corpus once (cached under the run directory, keyed by the corpus and
the embedder) and answers "the k nearest other images" with the evaluator's exact search.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from mmtrain.io import atomic_save
from mmtrain.synth.corpus import ImageCorpus

log = logging.getLogger(__name__)


class ImageEmbedder(Protocol):
    def embed(self, files: list[Path]) -> np.ndarray: ...
    def describe(self) -> dict[str, Any]: ...


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class PixelEmbedder:
    """An image -> its ``size`` x ``size`` RGB thumbnail (bilinear), flattened and L2-normalised."""

    def __init__(self, size: int = 8):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size

    def embed(self, files: list[Path]) -> np.ndarray:
        rows = []
        for f in files:
            with Image.open(f) as im:
                thumb = im.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
            rows.append(np.asarray(thumb, dtype=np.float32).reshape(-1) / 255.0)
        return _unit_rows(np.stack(rows)) if rows else np.zeros((0, 3 * self.size ** 2), np.float32)

    def describe(self) -> dict[str, Any]:
        return {"kind": "pixel", "size": self.size}


class EncoderEmbedder:
    """Images encoded as candidates by an mmtrain encoder.

    ``model``: a backbone spec (a conf/model node, e.g. clip_sf_large) with weights from ``ckpt`` (a
    Lightning checkpoint or encoder state dict; None keeps the spec's weights: pretrained, or a seeded
    from-scratch tiny model). Or ``ckpt`` alone, an ``mmtrain.export`` directory (it carries its spec).
    The encoder is built on the first call, so constructing this is cheap."""

    def __init__(self, model: Any = None, ckpt: str | None = None, batch_size: int = 32, device: str = "auto",
                 seed: int = 0):
        if model is None and ckpt is None:
            raise ValueError("EncoderEmbedder needs a backbone spec (`model`) and/or `ckpt`")
        from omegaconf import DictConfig, OmegaConf

        self.model = OmegaConf.to_container(model, resolve=True) if isinstance(model, DictConfig) else model
        self.ckpt, self.batch_size, self.device, self.seed = ckpt, batch_size, device, seed
        self._encoder = self._processor = None

    def _load(self) -> None:
        import torch
        from hydra.utils import instantiate

        from mmtrain.checkpoint import is_export, load_encoder, load_export

        with torch.random.fork_rng(devices=[]):  # a from-scratch encoder is the same on every run
            torch.manual_seed(self.seed)
            if is_export(self.ckpt):
                encoder = load_export(self.ckpt)
                backbone = encoder.backbone
            else:
                backbone = instantiate(self.model)
                encoder = load_encoder(backbone, self.ckpt)
        device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        self._encoder, self._processor = encoder.to(device).eval(), backbone.build_processor()
        self._device = torch.device(device)

    def embed(self, files: list[Path], chunk: int = 4096) -> np.ndarray:
        from mmtrain.data.schema import Item
        from mmtrain.models.encoder import encode_items

        if self._encoder is None:
            self._load()
        # Chunks of files: the image bytes of a whole corpus need not fit in memory at once.
        out = [encode_items(self._encoder, self._processor, [Item(None, Path(f).read_bytes(), "image")
                                                             for f in files[i:i + chunk]],
                            query=False, batch_size=self.batch_size, device=self._device).numpy()
               for i in range(0, len(files), chunk)]
        return _unit_rows(np.concatenate(out)) if out else np.zeros((0, 0), np.float32)

    def describe(self) -> dict[str, Any]:
        from mmtrain.eval.embed_cache import fingerprint_model

        return {"kind": "encoder", "fingerprint": fingerprint_model({"spec": self.model, "seed": self.seed}, self.ckpt)}


class NeighbourIndex:
    """The corpus' embeddings (computed once, cached) and exact nearest-neighbour look-ups.

    ``max_similarity``: neighbours at or above this cosine are skipped as near-duplicates of the anchor
    (LAION holds many copies of one picture; a copy is no useful positive or hard negative)."""

    def __init__(self, corpus: ImageCorpus, embedder: ImageEmbedder, cache_dir: str | Path | None = None,
                 max_similarity: float = 0.999, batch_size: int = 256):
        self.corpus, self.embedder = corpus, embedder
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_similarity, self.batch_size = max_similarity, batch_size
        self._emb: np.ndarray | None = None
        self.computed = False  # True when this process embedded the corpus (vs read the cache)

    def paths(self) -> list[str]:
        return self.corpus.paths

    def key(self) -> str:
        blob = json.dumps([self.corpus.fingerprint(), self.embedder.describe()], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def embeddings(self) -> np.ndarray:
        if self._emb is not None:
            return self._emb
        cache = self.cache_dir / f"corpus-{self.key()}.npy" if self.cache_dir is not None else None
        if cache is not None and cache.is_file():
            self._emb = np.load(cache)
            return self._emb
        files = [self.corpus.path(p) for p in self.corpus.paths]
        parts = []
        with tqdm(total=len(files), desc="embed image corpus", unit="img", mininterval=1.0, disable=None) as bar:
            for start in range(0, len(files), self.batch_size):
                parts.append(self.embedder.embed(files[start:start + self.batch_size]))
                bar.update(len(parts[-1]))
        emb = np.concatenate(parts).astype(np.float32)
        if emb.shape[0] != len(files):
            raise ValueError(f"the embedder returned {emb.shape[0]} rows for {len(files)} images")
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_save(cache, lambda tmp: np.save(tmp, emb))
        self._emb, self.computed = emb, True
        return emb

    def neighbours(self, index: int, k: int) -> list[int]:
        """The ``k`` nearest corpus images to image ``index``, best first: itself and near-duplicates
        (cosine >= ``max_similarity``) excluded; ties broken by corpus order (exact_topk's contract)."""
        from mmtrain.eval.search import exact_topk

        emb = self.embeddings()
        depth = min(len(emb), k + 16)
        while True:
            scores, idx = exact_topk(emb[index:index + 1], emb, k=depth, backend="torch")
            keep = [int(j) for s, j in zip(scores[0], idx[0]) if j != index and s < self.max_similarity]
            if len(keep) >= k:
                return keep[:k]
            if depth >= len(emb):
                raise ValueError(f"corpus image {self.corpus.paths[index]!r} has {len(keep)} neighbours below "
                                 f"similarity {self.max_similarity}; {k} are needed (corpus of {len(emb)} images)")
            depth = min(len(emb), depth * 4)
