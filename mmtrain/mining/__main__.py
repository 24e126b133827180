"""Mine hard negatives with an existing checkpoint, outside training.

    python -m mmtrain.mining +experiment=toy_clip_sf_stage1 stage.init_from=/path/to/last.ckpt

``stage.init_from`` is any checkpoint mmtrain/checkpoint.py reads (a DeepSpeed ``last.ckpt/`` too).

The config is a stage's training config: its ``callbacks.mining`` entry says the rule and where the
table goes (``<run_dir>/mining/table``), its data and model say what to encode. Under ``torchrun`` /
``srun`` every rank encodes and searches its share (the process group is initialised from the
environment); a killed run resumes from its finished parts.
"""

from __future__ import annotations

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

import mmtrain.config  # noqa: F401  (registers the config schemas)


@hydra.main(config_path="pkg://mmtrain.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from mmtrain import dist
    from mmtrain.checkpoint import load_encoder
    from mmtrain.mining.miner import Dist, format_stats

    if not cfg.stage.init_from:
        raise SystemExit("set stage.init_from=<checkpoint> (the model to mine with)")
    if not cfg.callbacks.get("mining"):
        raise SystemExit("this config has no callbacks.mining entry: use a stage experiment "
                         "(e.g. +experiment=toy_clip_sf_stage1) or add one")
    world = dist.world_from_env()
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device("cuda", dist.local_rank()) if torch.cuda.is_available() else torch.device("cpu")

    backbone = instantiate(cfg.model)
    data = instantiate(cfg.data, backbone=backbone, seed=cfg.seed)
    if dist.local_rank() == 0:
        data.prepare_data()
    if world > 1:
        torch.distributed.barrier()
    data.setup("fit")
    encoder = load_encoder(backbone, cfg.stage.init_from, what="stage.init_from").to(device)
    mining = instantiate(cfg.callbacks.mining)
    table, stats = mining.make_miner(data.shard_dir).run(
        encoder, data.processor, device, provenance={"checkpoint": cfg.stage.init_from}, dist=Dist())
    if Dist().rank == 0:
        print(f"negatives table: {table}\n{format_stats(stats)}")


if __name__ == "__main__":
    main()
