"""`python -m mmtrain.mining` with a checkpoint writes the same table as mining in-process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from mmtrain.toy.world import ensure_toy_world
from mmtrain.mining.miner import HardNegativeMiner
from mmtrain.mining.rules import ModalityAwareRule
from mmtrain.mining.table import NegativesTable
from mmtrain.models.clip_sf import ClipSFBackbone, TinyClip

SMALL_WORLD = ["data.toy_world.n_train=16", "data.toy_world.n_val=4", "data.toy_world.n_test=4",
               "data.toy_world.n_distractors=2", "data.toy_world.beir_passages=20", "data.toy_world.beir_train=10",
               "data.toy_world.beir_test=5", "data.toy_world.vocab_size=600", "data.samples_per_shard=16",
               "data.min_shards_per_source=1"]


@pytest.mark.slow
def test_cli_mines_with_a_checkpoint(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    common = ["+experiment=toy_clip_sf_stage1", f"paths.cache_dir={tmp_path}/cache", *SMALL_WORLD]
    # Without a checkpoint: a clear refusal.
    refused = subprocess.run([sys.executable, "-m", "mmtrain.mining", *common, f"hydra.run.dir={tmp_path}/r0"],
                             capture_output=True, text=True, env=env, cwd=tmp_path)
    assert refused.returncode != 0 and "stage.init_from" in refused.stderr + refused.stdout

    # A checkpoint in Lightning's layout, from a tiny CLIP built on the world's tokenizer (the world is
    # generated here with the CLI's sizes, so the CLI finds it cached).
    world = ensure_toy_world(tmp_path / "cache" / "toy_world" / "seed0", seed=0,
                             **{o.split("=")[0].split(".")[-1]: int(o.split("=")[1]) for o in SMALL_WORLD[:8]})
    torch.manual_seed(0)
    backbone = ClipSFBackbone(tokenizer=str(world / "tokenizer"), tiny=TinyClip(), max_text_length=64)
    encoder = backbone.build_encoder()
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()}}, ckpt)

    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "mmtrain.mining", *common, f"stage.init_from={ckpt}",
                           f"hydra.run.dir={run}"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = NegativesTable(run / "mining" / "table")
    assert table.meta["checkpoint"] == str(ckpt) and table.meta["rule"] == "modality_aware"

    shards = tmp_path / "cache" / "shards" / "toy_world_seed0"
    ref_path, _ = HardNegativeMiner(shards, tmp_path / "ref", ModalityAwareRule()).run(
        encoder, backbone.build_processor())
    ref = NegativesTable(ref_path)
    assert {q: [(n.id, n.group) for n in v] for q, v in table.as_dict().items()} == \
           {q: [(n.id, n.group) for n in v] for q, v in ref.as_dict().items()}
