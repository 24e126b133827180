"""Mine hard negatives when a stage's fit ends (all ranks take part), for the next stage to read."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from mmtrain.mining.miner import Dist, HardNegativeMiner, format_stats
from mmtrain.mining.rules import NegativeRule

log = logging.getLogger(__name__)


class HardNegativeMiningCallback(Callback):
    """At ``on_fit_end``: encode the training pool and queries with the model just trained (sharded over
    the ranks), search, apply ``rule``, write ``<work_dir>/table`` and log the statistics.

    ``keep_groups_from``: a previous table whose ``keep_groups`` are carried over instead of re-mined
    (MM-Embed stage 3: C1 from M_rand, C2 re-mined with M_hard). ``shard_dir``: mine another converted
    set than the one trained on (the text set of the continual stage, MM-Embed §4.1.2); default the
    datamodule's.
    """

    def __init__(self, rule: NegativeRule, work_dir: str, stage: str = "",
                 keep_groups_from: str | None = None, keep_groups: tuple[str, ...] = ("C1",),
                 batch_size: int = 256, chunk_size: int = 8192, query_block: int = 4096,
                 num_workers: int = 0, shard_dir: str | None = None):
        self.rule = rule
        self.work_dir = Path(work_dir)
        self.stage = stage
        self.keep_groups_from = keep_groups_from
        self.keep_groups = tuple(keep_groups)
        self.batch_size, self.chunk_size, self.query_block = batch_size, chunk_size, query_block
        self.num_workers = num_workers  # DataLoader workers collating (decoding, tokenising) for the encoder
        self.shard_dir = shard_dir
        self.table: Path | None = None
        self.stats: dict = {}

    def make_miner(self, shard_dir: str | Path) -> HardNegativeMiner:
        return HardNegativeMiner(shard_dir, self.work_dir, self.rule, stage=self.stage,
                                 keep_groups_from=self.keep_groups_from, keep_groups=self.keep_groups,
                                 batch_size=self.batch_size, chunk_size=self.chunk_size,
                                 query_block=self.query_block, num_workers=self.num_workers)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        ckpt = getattr(trainer.checkpoint_callback, "last_model_path", None) or None
        self.table, self.stats = self.make_miner(self.shard_dir or dm.shard_dir).run(
            pl_module.encoder, dm.processor, pl_module.device,
            provenance={"checkpoint": ckpt, "global_step": trainer.global_step, "seed": dm.seed},
            dist=Dist(barrier=trainer.strategy.barrier))
        if trainer.is_global_zero:
            print(f"\nmined negatives ({self.stage}, {self.rule.name}) -> {self.table}\n{format_stats(self.stats)}")
            flat = {f"mining/{task}/{k}": v for task, s in self.stats.items()
                    for k, v in s.items() if k != "task_id"}
            for logger in trainer.loggers:
                logger.log_metrics(flat, step=trainer.global_step)
