"""The LightningDataModule: M-BEIR layout on disk -> shards -> training stream and evaluation sets.

``prepare_data`` (local rank 0 only) generates the toy world when asked and converts the M-BEIR
tree into shards once (both cached). ``setup`` builds the backbone's processor and reads the
evaluation pools and queries. Training batches come from ``TrainStream`` (webdataset, split by node
and worker, batch composition by config) and are collated inside the DataLoader workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from mmtrain.data.collate import IndexedItems, ItemCollator, TrainCollator
from mmtrain.data.convert import prepare_converted
from mmtrain.data.mix import mixed_train_dir, prepare_mix
from mmtrain.data.shards import ensure_mbeir_shards, load_eval_queries, load_pool
from mmtrain.data.stream import TrainStream
from mmtrain.data.toy_world import ensure_toy_world
from mmtrain.eval.retrieval import RetrievalEvaluator


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
                 mix: dict | None = None, mix_self: float = 1.0, skip_corrupt: bool = False, seed: int = 0):
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
        self.instruction = instruction
        self.shuffle_buffer = shuffle_buffer
        self.num_workers = num_workers
        self.eval_batch_size = eval_batch_size
        self.val_split = val_split
        self.test_split = test_split
        self.shard_kwargs = dict(samples_per_shard=samples_per_shard,
                                 min_shards_per_source=min_shards_per_source, skip_invalid=skip_invalid)
        self.seed = seed
        # Other formats (mmtrain/data/convert) and mixing with other manifests (mmtrain/data/mix.py).
        self.convert = dict(convert) if convert else None
        self.mix = {str(k): float(v) for k, v in mix.items()} if mix else None
        self.mix_self = mix_self
        self.skip_corrupt = skip_corrupt
        self.processor = None
        self._evaluators: dict[str, RetrievalEvaluator] = {}

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
            shuffle_buffer=self.shuffle_buffer, start_batch=start,
            collate_fn=TrainCollator(self.processor, self.num_negatives))
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def _eval_loaders(self, split: str | None) -> list[DataLoader]:
        if split is None:
            return []
        ev = self.evaluator(split)
        collate = ItemCollator(self.processor)
        return [DataLoader(IndexedItems(items), batch_size=self.eval_batch_size, shuffle=False,
                           num_workers=0, collate_fn=collate)
                for items in (ev.pool, [q.item for q in ev.queries])]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.val_split)

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.test_split)
