"""The LightningDataModule: M-BEIR layout on disk -> shards -> training stream and evaluation sets.

``prepare_data`` (local rank 0 only) generates the toy world when asked and converts the M-BEIR
tree into shards once (both cached). ``setup`` builds the backbone's processor and reads the
evaluation pools and queries. Training batches come from ``TrainStream`` (webdataset, split by node
and worker, batch composition by config) and are collated inside the DataLoader workers.

Resume: the stream starts at ``global_step x accumulate_grad_batches``; ``state_dict`` (saved by Lightning
in every checkpoint) records that count and what the stream's content depends on, and a resume whose
stream differs (data re-converted, batch size, seed, world size x workers, ...) fails naming each change,
unless ``data.allow_stream_change=true`` (then a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from mmtrain import dist
from mmtrain.config import DataConfig
from mmtrain.data.collate import IndexedItems, ItemCollator, TrainCollator
from mmtrain.data.convert import ensure_converted, prepare_converted
from mmtrain.data.mix import mixed_train_dir, prepare_mix
from mmtrain.data.perturb import build_perturber
from mmtrain.data.shards import load_eval_queries, load_pool
from mmtrain.data.stream import TrainStream
from mmtrain.eval.retrieval import EvalSet
from mmtrain.toy.world import ensure_toy_world

log = logging.getLogger(__name__)


def _mix_with_parts(shard_dir: Path, mix: dict | None, parts: dict[str, dict]) -> dict[str, float] | None:
    """``mix`` plus every part with a positive weight (a part of weight 0 is converted, not trained on)."""
    out = {str(k): float(v) for k, v in (mix or {}).items()}
    seen = {str(shard_dir.absolute()): "data.shard_dir"} | {str(Path(k).absolute()): "data.mix" for k in out}
    for name, part in parts.items():
        where = str(Path(part["shard_dir"]).absolute())
        if where in seen:
            raise ValueError(f"data.parts.{name}.shard_dir={part['shard_dir']} is also {seen[where]}: "
                             "each part needs its own shard directory")
        seen[where] = f"data.parts.{name}"
        if float(part["weight"]) < 0:
            raise ValueError(f"data.parts.{name}.weight must be >= 0, got {part['weight']}")
        if float(part["weight"]) > 0:
            out[str(part["shard_dir"])] = float(part["weight"])
    return out or None


def data_config(config: DataConfig | Mapping[str, Any] | None = None, **settings: Any) -> DataConfig:
    """The typed ``data`` settings: ``config`` (a ``DataConfig``, a node or a dict) with ``settings`` on top,
    checked against the schema (an unknown key fails) and filled with its defaults (defined there only)."""
    node = OmegaConf.merge(OmegaConf.structured(DataConfig), config or {}, settings)
    return OmegaConf.to_object(node)


class RetrievalDataModule(L.LightningDataModule):
    """``config``: the ``data`` group (``mmtrain.config.DataConfig``; Hydra passes its keys as ``settings``).
    ``seed`` and ``robust`` come from the run's top level."""

    POOL, TEXT = "pool", "text"  # the evaluation sets of a split: its candidate pool, the text set

    def __init__(self, backbone: Any, config: DataConfig | Mapping[str, Any] | None = None, *, seed: int = 0,
                 robust: Any = None, **settings: Any):
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg = data_config(config, **settings)
        self.seed = seed
        self.mbeir_root = Path(cfg.mbeir_root)
        self.shard_dir = Path(cfg.shard_dir)
        self.val_split, self.test_split = cfg.val_split, cfg.test_split  # train._evaluate sets test_split
        # Other formats (mmtrain/data/convert) and mixing with other manifests (mmtrain/data/mix.py):
        # `mix` names manifests converted beforehand by path; `parts` are {shard_dir, weight, convert} nodes
        # converted in prepare_data (their paths may be interpolations, which mix keys cannot be).
        self.parts = {name: asdict(part) for name, part in cfg.parts.items()}
        # A text-retrieval set (MM-Embed §4.1.2): nDCG@10 after training; a part when train_weight > 0.
        # Declared but neither trained on nor scored (e.g. stage 1 of MM-Embed): not even converted.
        text = cfg.text_retrieval
        self.text_retrieval = text if text is not None and (text.train_weight > 0 or text.eval_split) else None
        if self.text_retrieval is not None:
            self.parts.setdefault("text_retrieval", {"shard_dir": text.shard_dir, "convert": text.convert,
                                                     "weight": float(text.train_weight)})
        self.mix = _mix_with_parts(self.shard_dir, cfg.mix, self.parts)
        self.robust = robust  # RoCOCO-style synthesised negatives in the collator (mmtrain/data/perturb.py)
        self._stream_identity: dict | None = None       # the stream train_dataloader built
        self._checkpoint_stream: dict | None = None     # the one a restored checkpoint recorded
        self.processor = None
        self._eval_sets: dict[str, dict[str, EvalSet]] = {}

    def prepare_data(self) -> None:
        cfg, toy = self.cfg, self.cfg.toy_world is not None
        if toy:
            world = {k: v for k, v in asdict(cfg.toy_world).items() if v is not None}
            ensure_toy_world(world.pop("dir"), **world)
        # Generated data may be regenerated (other sizes): then its shards are rebuilt, not an error.
        if cfg.convert is not None:
            prepare_converted(self.shard_dir, cfg.convert, self.mbeir_root, rebuild_stale=toy)
        else:
            ensure_converted(self.shard_dir, "mbeir", root=self.mbeir_root, rebuild_stale=toy,
                             samples_per_shard=cfg.samples_per_shard, min_shards_per_source=cfg.min_shards_per_source,
                             max_bad=1.0 if cfg.skip_invalid else 0.0)
        for part in self.parts.values():
            prepare_converted(part["shard_dir"], part["convert"], self.mbeir_root, rebuild_stale=toy)
        if self.mix:
            prepare_mix(self.shard_dir, self.mix, cfg.mix_self)

    def setup(self, stage: str | None = None) -> None:
        if self.processor is None:
            self.processor = self.backbone.build_processor()

    def train_dataloader(self) -> DataLoader:
        cfg = self.cfg
        # Resume: the stream replays to the batch the restored loop expects next.
        start = self.trainer.global_step * self.trainer.accumulate_grad_batches if self.trainer else 0
        train_dir, weights = mixed_train_dir(self.shard_dir, self.mix, cfg.mix_self)
        stream = TrainStream(
            train_dir, weights=weights, skip_corrupt=cfg.skip_corrupt, batch_size=cfg.batch_size,
            composition=cfg.composition, homogeneous_share=cfg.homogeneous_share, seed=self.seed,
            num_negatives=cfg.num_negatives, negatives_table=cfg.negatives_table,
            negative_sampling=cfg.negative_sampling, instruction=cfg.instruction,
            shuffle_buffer=cfg.shuffle_buffer, start_batch=start, negative_order=cfg.negative_order,
            collate_fn=TrainCollator(self.processor, cfg.num_negatives,
                                     perturber=build_perturber(self.robust, self.shard_dir, self.seed)))
        world_size = self.trainer.world_size if self.trainer else dist.world_size()
        self._stream_identity = {**stream.resume_identity(), "world_size": world_size,
                                 "workers_per_rank": max(1, cfg.num_workers),
                                 "accumulate_grad_batches": self.trainer.accumulate_grad_batches if self.trainer else 1}
        if self._checkpoint_stream is not None:
            self._check_resumed_stream(self._checkpoint_stream, {**self._stream_identity, "batches_consumed": start})
            self._checkpoint_stream = None
        return DataLoader(stream, batch_size=None, num_workers=cfg.num_workers,
                          persistent_workers=cfg.num_workers > 0)

    # -- the stream's state in checkpoints ----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Saved by Lightning in each checkpoint: batches consumed (the resume point) and what the
        stream's content depends on; empty before train_dataloader built a stream."""
        if self._stream_identity is None:
            return {}
        consumed = self.trainer.global_step * self.trainer.accumulate_grad_batches if self.trainer else 0
        return {"stream": {**self._stream_identity, "batches_consumed": consumed}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called by Lightning on restore, before train_dataloader, which checks the new stream against it."""
        self._checkpoint_stream = dict(state_dict["stream"]) if "stream" in state_dict else None

    def _check_resumed_stream(self, saved: dict, now: dict) -> None:
        changes = _differences(saved, now)
        if not changes:
            return
        what = "\n  ".join(changes)
        if not self.cfg.allow_stream_change:
            raise ValueError(f"the training stream differs from the checkpoint's, so resuming would not continue "
                             f"it (samples repeated or skipped, another batch order):\n  {what}\nRestore the "
                             f"old settings/data, or set data.allow_stream_change=true to resume anyway.")
        log.warning("data.allow_stream_change=true: resuming although the training stream differs from the "
                    "checkpoint's:\n  %s", what)

    # -- evaluation sets -----------------------------------------------------------------------------
    def eval_sets(self, split: str) -> dict[str, EvalSet]:
        """The evaluation sets of ``split`` by name: ``POOL`` (the split's pool and queries) and, at the text
        set's ``eval_split``, ``TEXT`` (its corpus and queries). Read once, then kept."""
        if split not in self._eval_sets:
            pool, _ = load_pool(self.shard_dir, split)
            sets = {self.POOL: EvalSet(self.POOL, pool, load_eval_queries(self.shard_dir, split))}
            text = self.text_retrieval
            if text is not None and split == text.eval_split:
                corpus, _ = load_pool(text.shard_dir, split)
                name = Path(text.shard_dir).name
                sets[self.TEXT] = EvalSet(name, corpus, load_eval_queries(text.shard_dir, split), metric="ndcg")
            self._eval_sets[split] = sets
        return self._eval_sets[split]

    def _eval_loaders(self, split: str | None, with_text: bool = False) -> list[DataLoader]:
        """Candidates and queries of each evaluation set of ``split`` (the text set only ``with_text``);
        every batch carries its set's name and side (``eval_set``, ``side``)."""
        if split is None:
            return []
        sets = {name: s for name, s in self.eval_sets(split).items() if with_text or name != self.TEXT}
        return [DataLoader(IndexedItems(items), batch_size=self.cfg.eval_batch_size, shuffle=False, num_workers=0,
                           collate_fn=_TaggedCollator(self.processor, name, side))
                for name, s in sets.items()
                for side, items in (("candidate", s.pool), ("query", s.query_items()))]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.val_split)

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.test_split, with_text=True)


class _TaggedCollator(ItemCollator):
    """``ItemCollator``'s batch plus the evaluation set and side it belongs to."""

    def __init__(self, processor: Any, eval_set: str, side: str):
        super().__init__(processor)
        self.eval_set, self.side = eval_set, side

    def __call__(self, rows: list) -> dict[str, Any]:
        return super().__call__(rows) | {"eval_set": self.eval_set, "side": self.side}


def _differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """``key: checkpoint X, now Y`` for every differing entry, one level into nested dicts (sources)."""
    out = []
    for key in list(saved) + [k for k in now if k not in saved]:
        a, b, name = saved.get(key, "<absent>"), now.get(key, "<absent>"), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict) and not prefix:
            out += _differences(a, b, f"{name}.")
        elif a != b:
            out.append(f"{name}: checkpoint {a}, now {b}")
    return out
