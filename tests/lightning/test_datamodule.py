"""RetrievalDataModule: settings from the typed schema (each default once); evaluation loaders that say
which evaluation set and side they hold."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from mmtrain.config import DataConfig
from mmtrain.data.schema import EvalQuery, Item
from mmtrain.eval.retrieval import EvalSet
from mmtrain.lightning.datamodule import RetrievalDataModule


def test_settings_come_from_the_schema_node_or_keywords():
    dm = RetrievalDataModule(None, mbeir_root="m", shard_dir="s", batch_size=7)
    assert isinstance(dm.cfg, DataConfig) and dm.cfg.batch_size == 7
    assert dm.cfg.eval_batch_size == 256 and dm.cfg.composition == "homogeneous"   # the schema's defaults
    node = OmegaConf.create({"mbeir_root": "m", "shard_dir": "s", "toy_world": {"dir": "w", "seed": 3},
                             "text_retrieval": {"convert": {"source": "beir"}, "shard_dir": "t"}})
    dm = RetrievalDataModule(None, node, seed=5)
    assert dm.cfg.toy_world.seed == 3 and dm.seed == 5 and dm.test_split == "test"
    assert dm.parts["text_retrieval"] == {"shard_dir": "t", "convert": {"source": "beir"}, "weight": 0.0}
    with pytest.raises(ConfigKeyError):
        RetrievalDataModule(None, mbeir_root="m", shard_dir="s", batch_sise=7)


def test_eval_loaders_tag_every_batch_with_its_set_and_side(monkeypatch):
    def items(prefix, n, base):
        return [Item(f"{prefix}{i}", None, "text", None, base + i) for i in range(n)]

    def queries(n, base):
        return [EvalQuery(Item(f"q{i}", None, "text", None, i), [base + i], 1, "toy", 1) for i in range(n)]

    sets = {"pool": EvalSet("pool", items("c", 3, 100), queries(2, 100)),
            "text": EvalSet("beir", items("d", 5, 200), queries(4, 200), metric="ndcg")}
    dm = RetrievalDataModule(None, mbeir_root="m", shard_dir="s", eval_batch_size=2)
    dm.processor = lambda batch: torch.tensor([it.id for it in batch])
    monkeypatch.setattr(dm, "eval_sets", lambda split: sets)

    def seen(loaders):
        return [(b["eval_set"], b["side"], b["inputs"].tolist()) for loader in loaders for b in loader]

    assert seen(dm.val_dataloader()) == [("pool", "candidate", [100, 101]), ("pool", "candidate", [102]),
                                         ("pool", "query", [0, 1])]
    tagged = seen(dm.test_dataloader())
    assert ("text", "candidate", [204]) in tagged and ("text", "query", [2, 3]) in tagged
    dm.test_split = None
    assert dm.test_dataloader() == []
