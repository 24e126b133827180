"""A small toy world in shards, for the mining tests."""

from __future__ import annotations

import pytest
from mining_helpers import SMALL

from mmtrain.data.convert import convert
from mmtrain.toy.world import generate_toy_world


@pytest.fixture(scope="session")
def toy_shards(tmp_path_factory):
    base = tmp_path_factory.mktemp("mining_world")
    world = generate_toy_world(base / "world", seed=0, **SMALL)
    convert("mbeir", base / "shards", root=world / "mbeir", samples_per_shard=16, min_shards_per_source=1, workers=1)
    return base / "shards"
