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
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from mmtrain.data.collate import IndexedItems, ItemCollator, TrainCollator
from mmtrain.data.convert import prepare_converted
from mmtrain.data.mix import mixed_train_dir, prepare_mix
from mmtrain.data.perturb import build_perturber
from mmtrain.data.shards import ensure_mbeir_shards, load_eval_queries, load_pool
from mmtrain.data.stream import TrainStream, rank_and_world_size
from mmtrain.data.toy_world import ensure_toy_world
from mmtrain.eval.retrieval import RetrievalEvaluator
from mmtrain.eval.text_retrieval import TextRetrievalEvaluator

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


class RetrievalDataModule(L.LightningDataModule):
    def __init__(self, backbone: Any, mbeir_root: str, shard_dir: str, *,
                 toy_world: dict | None = None, batch_size: int = 128,
                 composition: str = "homogeneous", homogeneous_share: float = 1.0,
                 num_negatives: int = 0, negatives_table: str | None = None,
                 negative_sampling: str = "modality_aware", instruction: str = "random",
                 shuffle_buffer: int = 1000,
                 num_workers: int = 1, eval_batch_size: int = 256, val_split: str | None = "val",
                 test_split: str | None = "test", samples_per_shard: int = 1000,
                 min_shards_per_source: int = 8, skip_invalid: bool = False, convert: dict | None = None,
                 mix: dict | None = None, mix_self: float = 1.0, parts: dict | None = None,
                 skip_corrupt: bool = False,
                 text_retrieval: dict | None = None, robust: Any = None, seed: int = 0,
                 negative_order: str = "random", allow_stream_change: bool = False):
        super().__init__()
        self.backbone = backbone
        self.mbeir_root = Path(mbeir_root)
        self.shard_dir = Path(shard_dir)
        self.toy_world = dict(toy_world) if toy_world else None
        self.batch_size = batch_size
        self.composition = composition
        self.homogeneous_share = homogeneous_share
        self.num_negatives = num_negatives
        self.negatives_table = negatives_table
        self.negative_sampling = negative_sampling
        self.negative_order = negative_order  # a sample's own negatives: random | rotate (Tevatron)
        self.instruction = instruction
        self.shuffle_buffer = shuffle_buffer
        self.num_workers = num_workers
        self.eval_batch_size = eval_batch_size
        self.val_split = val_split
        self.test_split = test_split
        self.shard_kwargs = dict(samples_per_shard=samples_per_shard,
                                 min_shards_per_source=min_shards_per_source, skip_invalid=skip_invalid)
        self.seed = seed
        # Other formats (mmtrain/data/convert) and mixing with other manifests (mmtrain/data/mix.py):
        # `mix` names manifests converted beforehand by path; `parts` are {shard_dir, weight, convert} nodes
        # converted in prepare_data (their paths may be interpolations, which mix keys cannot be).
        self.convert = dict(convert) if convert else None
        self.mix_self = mix_self
        self.parts = {name: dict(part) for name, part in (parts or {}).items()}
        # A text-retrieval set (MM-Embed §4.1.2): nDCG@10 after training; a part when train_weight > 0.
        # Declared but neither trained on nor scored (e.g. stage 1 of MM-Embed): not even converted.
        text = dict(text_retrieval) if text_retrieval else {}
        self.text_retrieval = text if text.get("train_weight", 0.0) > 0 or text.get("eval_split") else None
        if self.text_retrieval is not None:
            self.parts.setdefault("text_retrieval", {"shard_dir": text["shard_dir"], "convert": text["convert"],
                                                     "weight": float(text.get("train_weight", 0.0))})
        self.mix = _mix_with_parts(self.shard_dir, mix, self.parts)
        self.skip_corrupt = skip_corrupt
        self.robust = robust  # RoCOCO-style synthesised negatives in the collator (mmtrain/data/perturb.py)
        self.allow_stream_change = allow_stream_change
        self._stream_identity: dict | None = None       # the stream train_dataloader built
        self._checkpoint_stream: dict | None = None     # the one a restored checkpoint recorded
        self.processor = None
        self._evaluators: dict[str, RetrievalEvaluator | TextRetrievalEvaluator] = {}

    def prepare_data(self) -> None:
        if self.toy_world is not None:
            toy = {k: v for k, v in self.toy_world.items() if v is not None}
            ensure_toy_world(toy.pop("dir"), **toy)
        # Generated data may be regenerated (other sizes): then its shards are rebuilt, not an error.
        if self.convert is not None:
            prepare_converted(self.shard_dir, self.convert, self.mbeir_root, rebuild_stale=self.toy_world is not None)
        else:
            ensure_mbeir_shards(self.mbeir_root, self.shard_dir, rebuild_stale=self.toy_world is not None,
                                **self.shard_kwargs)
        for part in self.parts.values():
            prepare_converted(part["shard_dir"], part["convert"], self.mbeir_root,
                              rebuild_stale=self.toy_world is not None)
        if self.mix:
            prepare_mix(self.shard_dir, self.mix, self.mix_self)

    def setup(self, stage: str | None = None) -> None:
        if self.processor is None:
            self.processor = self.backbone.build_processor()

    def evaluator(self, split: str) -> RetrievalEvaluator:
        if split not in self._evaluators:
            pool, _ = load_pool(self.shard_dir, split)
            self._evaluators[split] = RetrievalEvaluator(pool, load_eval_queries(self.shard_dir, split))
        return self._evaluators[split]

    def train_dataloader(self) -> DataLoader:
        # Resume: the stream replays to the batch the restored loop expects next.
        start = self.trainer.global_step * self.trainer.accumulate_grad_batches if self.trainer else 0
        train_dir, weights = mixed_train_dir(self.shard_dir, self.mix, self.mix_self)
        stream = TrainStream(
            train_dir, weights=weights, skip_corrupt=self.skip_corrupt, batch_size=self.batch_size,
            composition=self.composition,
            homogeneous_share=self.homogeneous_share, seed=self.seed,
            num_negatives=self.num_negatives, negatives_table=self.negatives_table,
            negative_sampling=self.negative_sampling, instruction=self.instruction,
            shuffle_buffer=self.shuffle_buffer, start_batch=start, negative_order=self.negative_order,
            collate_fn=TrainCollator(self.processor, self.num_negatives,
                                     perturber=build_perturber(self.robust, self.shard_dir, self.seed)))
        world_size = self.trainer.world_size if self.trainer else rank_and_world_size()[1]
        self._stream_identity = {**stream.resume_identity(), "world_size": world_size,
                                 "workers_per_rank": max(1, self.num_workers),
                                 "accumulate_grad_batches": self.trainer.accumulate_grad_batches if self.trainer else 1}
        if self._checkpoint_stream is not None:
            self._check_resumed_stream(self._checkpoint_stream, {**self._stream_identity, "batches_consumed": start})
            self._checkpoint_stream = None
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

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
        if not self.allow_stream_change:
            raise ValueError(f"the training stream differs from the checkpoint's, so resuming would not continue "
                             f"it (samples repeated or skipped, another batch order):\n  {what}\nRestore the "
                             f"old settings/data, or set data.allow_stream_change=true to resume anyway.")
        log.warning("data.allow_stream_change=true: resuming although the training stream differs from the "
                    "checkpoint's:\n  %s", what)

    def text_evaluator(self, split: str) -> TextRetrievalEvaluator | None:
        """The text set's evaluator for ``split`` (scored only at its ``eval_split``), else None."""
        if self.text_retrieval is None or split != self.text_retrieval.get("eval_split"):
            return None
        key = f"text/{split}"
        if key not in self._evaluators:
            out = self.text_retrieval["shard_dir"]
            corpus, _ = load_pool(out, split)
            self._evaluators[key] = TextRetrievalEvaluator(corpus, load_eval_queries(out, split),
                                                           name=Path(out).name)
        return self._evaluators[key]

    def _eval_loaders(self, split: str | None, with_text: bool = False) -> list[DataLoader]:
        """Dataloader 0: the pool, 1: the split's queries; with the text set, 2: its corpus, 3: its queries."""
        if split is None:
            return []
        evaluators = [self.evaluator(split)]
        text = self.text_evaluator(split) if with_text else None
        if text is not None:
            evaluators.append(text)
        collate = ItemCollator(self.processor)
        return [DataLoader(IndexedItems(items), batch_size=self.eval_batch_size, shuffle=False,
                           num_workers=0, collate_fn=collate)
                for ev in evaluators for items in (ev.pool, [q.item for q in ev.queries])]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.val_split)

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.test_split, with_text=True)


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
