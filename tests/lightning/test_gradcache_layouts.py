"""Layout presets (conf/layout/*.yaml): each composes with the MLLM model presets, its batch
arithmetic holds (devices x nodes x per-device x accumulation = global batch), a wrong override
fails the pre-launch check with a clear message, and its strategy and module instantiate."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

import mmtrain.conf
from mmtrain.preflight import check_batch

CONF = Path(mmtrain.conf.__file__).parent
LAYOUTS = sorted(p.stem for p in (CONF / "layout").glob("*.yaml"))
# Global batches of the papers (MM-Embed §5.1; mmE5 App. B.2 and its script, recipes.md §5.1).
EXPECTED = {"mm_embed_1x8_rand": (8, 1, 1024), "mm_embed_1x8_hard": (8, 1, 512), "ddp_1x8": (8, 1, 1024),
            "mme5_8x8_paper": (8, 8, 512), "mme5_8x8_script": (8, 8, 1024), "single_gpu": (1, 1, 1024)}
MODEL = {"mm_embed_1x8_rand": "mm_embed_llava_e", "mm_embed_1x8_hard": "mm_embed_nv_embed",
         "ddp_1x8": "mm_embed_nv_embed", "single_gpu": "mm_embed_llava_p", "mme5_8x8_paper": "mme5_llama_vision",
         "mme5_8x8_script": "mme5_llama_vision"}


def compose_layout(name: str, tmp_path: Path, *extra: str):
    with initialize_config_module("mmtrain.conf", version_base="1.3"):
        return compose("config", overrides=[f"+layout={name}", f"model={MODEL[name]}", f"paths.run_dir={tmp_path}/run",
                                            f"paths.cache_dir={tmp_path}/cache", *extra])


def test_every_layout_is_tested():
    assert set(LAYOUTS) == set(EXPECTED)


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_batch_arithmetic(name, tmp_path):
    cfg = compose_layout(name, tmp_path)
    OmegaConf.resolve(cfg)
    devices, nodes, global_batch = EXPECTED[name]
    t = cfg.trainer
    assert (t.devices, t.num_nodes, cfg.global_batch_size) == (devices, nodes, global_batch)
    assert t.devices * t.num_nodes * cfg.data.batch_size * t.accumulate_grad_batches == global_batch
    assert check_batch(cfg) == []
    gradcache = "GradCache" in cfg.module._target_
    assert gradcache == name.startswith(("mm_embed", "ddp", "single"))
    if gradcache:  # GradCache replaces accumulation; its chunk is smaller than the per-device batch
        assert t.accumulate_grad_batches == 1 and cfg.module.chunk_size < cfg.data.batch_size


@pytest.mark.parametrize("override", ["trainer.devices=4", "data.batch_size=100",
                                      "trainer.accumulate_grad_batches=2"])
def test_wrong_batch_arithmetic_is_a_clear_error(override, tmp_path):
    cfg = compose_layout("mm_embed_1x8_rand", tmp_path, override)
    problems = check_batch(cfg)
    assert len(problems) == 1 and problems[0].level == "error"
    assert "global_batch_size=1024" in problems[0].message and "trainer.devices" in problems[0].message


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_strategy_and_module_instantiate(name, tmp_path):
    """The strategy builds on a CPU machine (DeepSpeed's config is only read at fit), the module
    class takes the layout's keys, and the model spec is built from its preset."""
    cfg = compose_layout(name, tmp_path)
    strategy = instantiate(cfg.strategy) if OmegaConf.is_dict(cfg.strategy) else cfg.strategy
    if name.startswith("mm"):
        assert type(strategy).__name__ == "DeepSpeedStrategy"
        zero = strategy.config["zero_optimization"]
        assert zero["stage"] == 2 and zero["overlap_comm"] and zero["reduce_scatter"]
        assert strategy.config["train_micro_batch_size_per_gpu"] == cfg.data.batch_size
    backbone = instantiate(cfg.model)
    assert backbone.lora.r == 8 and backbone.lora.alpha == 64 and backbone.gradient_checkpointing
    module = instantiate(cfg.module, backbone=backbone, loss=instantiate(cfg.loss),
                         optimizer=partial(torch.optim.AdamW, lr=1e-4))
    assert isinstance(module, get_class(cfg.module._target_))
    assert module.encoder is None  # nothing built before the strategy's configure_model


def test_deepspeed_strategy_preset_alone(tmp_path):
    with initialize_config_module("mmtrain.conf", version_base="1.3"):
        cfg = compose("config", overrides=["strategy=deepspeed_zero2", f"paths.run_dir={tmp_path}/r",
                                           f"paths.cache_dir={tmp_path}/c"])
    strategy = instantiate(cfg.strategy)
    assert strategy.config["zero_optimization"]["reduce_bucket_size"] == 200_000_000
