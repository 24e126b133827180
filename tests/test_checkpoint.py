"""The one checkpoint loader (mmtrain/checkpoint.py): a Lightning DeepSpeed checkpoint directory, made
by a 1-step CPU DeepSpeed ZeRO-2 run of the tiny CLIP_SF toy model, is accepted by ``stage.init_from``,
``python -m mmtrain.mining``, ``python -m mmtrain.evaluate ckpt=`` and ``python -m mmtrain.export``;
missing, incomplete and mismatched checkpoints fail with one clear line.

The DeepSpeed run is this file run as a script (once per session, module fixture): Lightning's
DeepSpeedStrategy refuses CPUs, so it uses the test-only ``CPUDeepSpeedStrategy`` of environment.md §4
(as tests/lightning/test_gradcache_dist.py), selected by ``strategy._target_=__main__...``. Two more
test-only patches: DeepSpeed's optional shared-memory op is not JIT-compiled, and the engine's
initial broadcast of the parameters is skipped — with one rank it copies nothing, and deepspeed 0.19.8
cannot broadcast CLIP's 0-dim ``logit_scale`` (``p.data.view(torch.uint8)``).

Expected weights are read straight from DeepSpeed's model-state file with ``torch.load``: in an fp32
run its ``module`` entry holds the same weights as the fp32 master copy the loader consolidates.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TOY = ["data.toy_world.n_train=16", "data.toy_world.n_val=4", "data.toy_world.n_test=4",
       "data.toy_world.n_distractors=2", "data.toy_world.beir_passages=20", "data.toy_world.beir_train=10",
       "data.toy_world.beir_test=5", "data.toy_world.vocab_size=600"]
SHARDS = ["data.samples_per_shard=16", "data.min_shards_per_source=1"]


def _cpu_deepspeed_strategy():
    from lightning.pytorch.strategies import DeepSpeedStrategy

    class CPUDeepSpeedStrategy(DeepSpeedStrategy):  # environment.md §4, test-only
        def setup_environment(self):
            super(DeepSpeedStrategy, self).setup_environment()

        @property
        def root_device(self):
            return torch.device("cpu", self.local_rank)

        def setup_distributed(self):
            from lightning.fabric.utilities.seed import reset_seed
            reset_seed()
            self.set_world_ranks()
            self._init_deepspeed_distributed()

    return CPUDeepSpeedStrategy


def train_one_deepspeed_step(run_dir: str, cache: str) -> None:
    """Script side: ``+experiment=toy_clip_sf`` for one step under ZeRO-2 -> <run_dir>/checkpoints/last.ckpt/."""
    from deepspeed.runtime.engine import DeepSpeedEngine
    from hydra import compose, initialize_config_module

    from mmtrain.train import train

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # optional, JIT-built
    DeepSpeedEngine._broadcast_model = lambda self: None  # one rank: nothing to broadcast
    sys.modules["__main__"].CPUDeepSpeedStrategy = _cpu_deepspeed_strategy()
    with initialize_config_module("mmtrain.conf", version_base="1.3"):
        cfg = compose("config", overrides=[
            "+experiment=toy_clip_sf", f"paths.run_dir={run_dir}", f"paths.cache_dir={cache}", *TOY, *SHARDS,
            "strategy=deepspeed_zero2", "strategy._target_=__main__.CPUDeepSpeedStrategy",
            "strategy.process_group_backend=gloo", "trainer.max_steps=1", "data.batch_size=8",
            "data.num_workers=0", "logger=csv", "callbacks.progress=null"])
    train(cfg)


def env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, "PYTHONPATH": str(REPO),
            "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}


@pytest.fixture(scope="module")
def ds_run(tmp_path_factory) -> Path:
    """A run directory whose checkpoints/last.ckpt is a DeepSpeed checkpoint directory."""
    root = tmp_path_factory.mktemp("ds")
    proc = subprocess.run([sys.executable, __file__, str(root / "run"), str(root / "cache")], cwd=root, env=env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (root / "run" / "checkpoints" / "last.ckpt" / "latest").is_file()
    return root / "run"


def ds_ckpt(run: Path) -> Path:
    return run / "checkpoints" / "last.ckpt"


def saved_encoder_weights(run: Path) -> dict[str, torch.Tensor]:
    """The encoder's weights as DeepSpeed saved the module (independent of the loader under test)."""
    tag = (ds_ckpt(run) / "latest").read_text().strip()
    module = torch.load(ds_ckpt(run) / tag / "mp_rank_00_model_states.pt", map_location="cpu",
                        weights_only=True)["module"]
    return {k.removeprefix("encoder."): v.float() for k, v in module.items() if k.startswith("encoder.")}


def run_backbone(run: Path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    return instantiate(OmegaConf.load(run / "config.yaml").model)


@pytest.mark.slow
def test_stage_init_from_loads_the_deepspeed_directory(ds_run):
    from mmtrain.checkpoint import encoder_weights, is_complete_checkpoint
    from mmtrain.lightning.module import RetrievalModule
    from mmtrain.models.loss import ContrastiveLoss

    expected = saved_encoder_weights(ds_run)
    assert len(expected) > 50 and is_complete_checkpoint(ds_ckpt(ds_run))
    got = encoder_weights(ds_ckpt(ds_run))
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, msg=name)

    torch.manual_seed(123)  # a fresh encoder would differ: the weights below come from the checkpoint
    module = RetrievalModule(run_backbone(ds_run), ContrastiveLoss(), optimizer=None,
                             init_from=str(ds_ckpt(ds_run)))
    module.configure_model()
    state = module.encoder.state_dict()
    assert set(state) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0, msg=name)
    fresh = run_backbone(ds_run).build_encoder().state_dict()
    assert any(not torch.equal(fresh[n], expected[n]) for n in expected)


@pytest.mark.slow
def test_missing_incomplete_and_mismatched_checkpoints_fail_clearly(ds_run, tmp_path):
    from hydra import compose, initialize_config_module

    from mmtrain.checkpoint import encoder_weights, is_complete_checkpoint, load_encoder
    from mmtrain.preflight import check_paths
    from mmtrain.run_dir import RunDir

    with pytest.raises(FileNotFoundError, match="stage.init_from=.* does not exist: run the previous stage first"):
        encoder_weights(tmp_path / "nowhere.ckpt", "stage.init_from")

    cut_run = tmp_path / "cut_run"  # a run whose DeepSpeed checkpoint lost its `latest` tag: not resumed
    cut_dir = ds_ckpt(cut_run)
    shutil.copytree(ds_ckpt(ds_run), cut_dir)
    assert RunDir(ds_run).resume_checkpoint() == ds_ckpt(ds_run) and RunDir(cut_run).resume_checkpoint() == cut_dir
    (cut_dir / "latest").unlink()
    assert not is_complete_checkpoint(cut_dir) and RunDir(cut_run).resume_checkpoint() is None
    with pytest.raises(ValueError, match="without a DeepSpeed `latest` tag"):
        encoder_weights(cut_dir)

    weights = saved_encoder_weights(ds_run)
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in weights.items()}}, whole)
    cut_file = tmp_path / "cut_file.ckpt"
    cut_file.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert is_complete_checkpoint(whole) and not is_complete_checkpoint(cut_file)
    with pytest.raises(ValueError, match="incomplete checkpoint file"):
        encoder_weights(cut_file)

    trained = [n for n, p in run_backbone(ds_run).build_encoder().named_parameters() if p.requires_grad]
    lacking = tmp_path / "lacking.pt"  # a plain encoder state dict without one trained weight
    torch.save({k: v for k, v in weights.items() if k != trained[0]}, lacking)
    with pytest.raises(ValueError, match=f"1 trained weights missing \\['{trained[0]}'\\]"):
        load_encoder(run_backbone(ds_run), lacking)
    plain = tmp_path / "plain.pt"
    torch.save(weights, plain)
    loaded = load_encoder(run_backbone(ds_run), plain).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())

    # preflight: a complete DeepSpeed directory is a valid stage.init_from; a cut one is not.
    def init_from_problems(path: Path) -> list[str]:
        with initialize_config_module("mmtrain.conf", version_base="1.3"):
            cfg = compose("config", overrides=[f"stage.init_from={path}", f"paths.cache_dir={tmp_path}/cache",
                                               f"paths.run_dir={tmp_path}/run"])
        return [p.message for p in check_paths(cfg) if "stage.init_from" in p.message]

    assert init_from_problems(ds_ckpt(ds_run)) == []
    assert "latest" in init_from_problems(cut_dir)[0]
    assert "does not exist" in init_from_problems(tmp_path / "nowhere.ckpt")[0]


@pytest.mark.slow
def test_mining_cli_accepts_the_deepspeed_directory(ds_run, tmp_path):
    from mmtrain.mining.table import NegativesTable

    cache = ds_run.parent / "cache"
    proc = subprocess.run([sys.executable, "-m", "mmtrain.mining", "+experiment=toy_clip_sf_stage1",
                           f"paths.cache_dir={cache}", *TOY, *SHARDS, f"stage.init_from={ds_ckpt(ds_run)}",
                           f"hydra.run.dir={tmp_path}/mine"], capture_output=True, text=True, env=env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = NegativesTable(tmp_path / "mine" / "mining" / "table")
    assert table.meta["checkpoint"] == str(ds_ckpt(ds_run)) and table.as_dict()


@pytest.mark.slow
def test_evaluate_cli_accepts_the_deepspeed_directory(ds_run, tmp_path):
    """ckpt=<DeepSpeed dir> scores the same as a Lightning .ckpt file holding the saved weights."""
    cache = ds_run.parent / "cache"
    reference = ds_run.parent / "reference_run"  # same run config, the weights as a .ckpt file
    (reference / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copy(ds_run / "config.yaml", reference / "config.yaml")
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in saved_encoder_weights(ds_run).items()}},
               reference / "checkpoints" / "last.ckpt")
    metrics = {}
    for name, ckpt in (("ds", ds_ckpt(ds_run)), ("file", reference / "checkpoints" / "last.ckpt")):
        proc = subprocess.run([sys.executable, "-m", "mmtrain.evaluate", "+eval=toy", f"ckpt={ckpt}",
                               f"paths.cache_dir={cache}", *TOY, "cache.enabled=false", "eval.pools=[global]",
                               f"hydra.run.dir={tmp_path}/{name}"],
                              capture_output=True, text=True, env=env(), cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        results = json.loads((tmp_path / name / "results.json").read_text())
        assert results["extra"]["ckpt"] == str(ckpt)
        metrics[name] = results["metrics"]
    assert metrics["ds"] == metrics["file"]


@pytest.mark.slow
def test_export_cli_accepts_a_run_with_a_deepspeed_directory(ds_run, tmp_path):
    import mmtrain
    from mmtrain.export import EXPORT_FILE, Embedder, main

    main([str(ds_run), str(tmp_path / "export")])  # python -m mmtrain.export RUN_DIR OUT
    assert (tmp_path / "export" / EXPORT_FILE).is_file()
    texts = ["a red circle on the left", "a blue square"]
    got = mmtrain.load(tmp_path / "export").encode(texts)
    trained = run_backbone(ds_run).build_encoder()
    trained.load_state_dict(saved_encoder_weights(ds_run))
    expected = Embedder(trained.eval()).encode(texts)
    torch.testing.assert_close(got, expected)


if __name__ == "__main__":
    train_one_deepspeed_step(sys.argv[1], sys.argv[2])


@pytest.mark.parametrize("target", ["builtins.open", "os.system", "subprocess.run"])
def test_export_naming_a_foreign_class_is_refused_before_anything_runs(tmp_path, target):
    """A downloaded export is data: its spec may only name mmtrain's backbone families."""
    from mmtrain.checkpoint import EXPORT_FILE, encoder_weights, load_export

    victim = tmp_path / "created-by-the-export"
    (tmp_path / EXPORT_FILE).write_text(json.dumps(
        {"format": 1, "files": [], "backbone": {"_target_": target, "file": str(victim), "mode": "w",
                                                "args": ["touch", str(victim)], "command": f"touch {victim}"}}))
    for load in (load_export, encoder_weights):
        with pytest.raises(ValueError, match="not one of mmtrain's model families"):
            load(tmp_path)
    assert not victim.exists()
