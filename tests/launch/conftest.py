"""A small toy world and its shards, generated once for all tests in tests/launch."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from launch_helpers import small


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("toy_cache")
    with initialize_config_module("mmtrain.conf", version_base="1.3"):
        cfg = compose("config", overrides=[*small(cache), f"paths.run_dir={cache}/unused"])
    instantiate(cfg.data, backbone=instantiate(cfg.model), seed=cfg.seed).prepare_data()
    return cache
