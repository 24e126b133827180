"""Every shipped config composes and instantiates; misspelled keys fail at composition."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from lightning.pytorch import Trainer
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

import mmtrain.conf

EXPERIMENTS = sorted(p.stem for p in (Path(mmtrain.conf.__file__).parent / "experiment").glob("*.yaml"))
REQUIRED = {"clip_sf_mbeir": ["data.mbeir_root=/data/M-BEIR"],
            **{f"mm_embed_stage{i}": ["data.mbeir_root=/data/M-BEIR", "data.text_retrieval.convert.train=/d/t.jsonl"]
               for i in (1, 2, 3)},
            **{f"clip_sf_stage{i}": ["data.mbeir_root=/data/M-BEIR"] for i in (1, 2, 3)},
            "mme5": ["data.convert.root=/d/hardneg", "data.convert.image_root=/d/hardneg",
                     "data.parts.synthetic.convert.root=/d/syn", "data.parts.synthetic.convert.image_root=/d/syn",
                     "eval.benchmarks.mmeb.root=/d/mmeb", "eval.benchmarks.mmeb.image_dir=/d/mmeb",
                     "eval.benchmarks.xtd.root=/d/xtd", "eval.benchmarks.xtd.image_dir=/d/coco"]}


def compose_cfg(overrides: list[str], tmp_path: Path):
    with initialize_config_module("mmtrain.conf", version_base="1.3"):
        return compose("config", overrides=[*overrides, f"paths.run_dir={tmp_path}/run",
                                            f"paths.cache_dir={tmp_path}/cache"])


def test_experiments_exist():
    assert {"toy_clip_sf", "toy_clip_sf_ddp_cpu", "clip_sf_mbeir"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_instantiates(name, tmp_path):
    cfg = compose_cfg([f"+experiment={name}", *REQUIRED.get(name, [])], tmp_path)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.name  # stage experiments share their pipeline's name on purpose
    backbone = instantiate(cfg.model)
    assert hasattr(backbone, "build_encoder") and hasattr(backbone, "build_processor")
    instantiate(cfg.loss)
    opt = instantiate(cfg.optim.optimizer)
    assert callable(opt)
    instantiate(cfg.data, backbone=backbone, seed=cfg.seed)
    for node in cfg.callbacks.values():
        instantiate(node)
    if OmegaConf.is_dict(cfg.strategy):
        instantiate(cfg.strategy)
    # The trainer may ask for GPUs this machine lacks: check its keys against Trainer's signature.
    accepted = set(inspect.signature(Trainer.__init__).parameters)
    assert set(cfg.trainer) - {"_target_"} <= accepted


def write_experiment(tmp_path: Path, body: str) -> str:
    (tmp_path / "extra" / "experiment").mkdir(parents=True)
    (tmp_path / "extra" / "experiment" / "probe.yaml").write_text("# @package _global_\n" + body)
    return f"hydra.searchpath=[file://{tmp_path / 'extra'}]"


@pytest.mark.parametrize("body", [
    "data:\n  batch_sise: 3\n",                 # misspelled key in a group
    "loss:\n  temprature: 0.1\n",
    "trainer:\n  max_step: 5\n",
    "model:\n  tiny:\n    hiden_size: 8\n",     # nested
    "sed: 3\n",                                 # top level
])
def test_misspelled_key_fails_at_composition(body, tmp_path):
    searchpath = write_experiment(tmp_path, body)
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as err:
        compose_cfg([searchpath, "+experiment=probe"], tmp_path)
    key = body.split(":")[0].strip() if body.startswith("sed") else body.split()[-2].rstrip(":")
    assert key in str(err.value) or key in str(err.value.__cause__)


def test_correct_key_in_experiment_is_applied(tmp_path):
    searchpath = write_experiment(tmp_path, "data:\n  batch_size: 3\n")
    assert compose_cfg([searchpath, "+experiment=probe"], tmp_path).data.batch_size == 3


def test_wrong_type_fails(tmp_path):
    searchpath = write_experiment(tmp_path, "data:\n  batch_size: many\n")
    with pytest.raises(ConfigCompositionException):
        compose_cfg([searchpath, "+experiment=probe"], tmp_path)


@pytest.mark.parametrize("family", ["mm_embed", "clip_sf"])
def test_stage_experiments_find_each_other(family, tmp_path):
    """Stage n reads stage n-1's outputs under <output_dir>/<name>/seed<seed>/<stage> (docs/stages.md)."""
    def stage(i):
        with initialize_config_module("mmtrain.conf", version_base="1.3"):
            cfg = compose("config", overrides=[f"+experiment={family}_stage{i}", "data.mbeir_root=/d",
                                               f"paths.output_dir={tmp_path}"])
        return OmegaConf.to_container(cfg.stage, resolve=True), cfg.data.negatives_table
    root = tmp_path / family / ("seed2023" if family == "clip_sf" else "seed0")  # UniIR's seed
    s1, t1 = stage(1)
    s2, t2 = stage(2)
    s3, t3 = stage(3)
    assert (s1["name"], s1["init_from"], t1) == ("rand", None, None)
    assert (s2["name"], s2["init_from"], t2) == ("hard", None, str(root / "rand" / "mining" / "table"))
    assert s3 == {"name": "continual", "init_from": str(root / "hard" / "checkpoints" / "last.ckpt")}
    assert t3 == str(root / "hard" / "mining" / "table")
