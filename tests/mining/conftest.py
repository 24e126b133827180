"""A small toy world in shards, for the mining tests."""

from __future__ import annotations

import pytest
from mining_helpers import SMALL

from mmtrain.data.shards import write_mbeir_shards
from mmtrain.data.toy_world import generate_toy_world


@pytest.fixture(scope="session")
def toy_shards(tmp_path_factory):
    base = tmp_path_factory.mktemp("mining_world")
    world = generate_toy_world(base / "world", seed=0, **SMALL)
    write_mbeir_shards(world / "mbeir", base / "shards", samples_per_shard=16, min_shards_per_source=1)
    return base / "shards"
