"""Benchmark: one mmtrain training step vs a hand-written PyTorch loop on the same model and batches.

    python -m mmtrain.bench.train_step [--steps 60] [--warmup 10] [--repeats 3]

Both sides run the same tiny CLIP_SF from the same initial weights on the same pre-collated toy-world
batches (collation is taken out of the timing: it is data loading, the same code on both sides), doing
forward, InfoNCE, backward, AdamW and a cosine LR step. mmtrain's side is the real thing: the
``RetrievalModule`` under a Lightning ``Trainer`` with the default run's logging (CSV logger, learning-
rate monitor, progress bar). The two alternate ``--repeats`` times; the median step time after
``--warmup`` steps is compared, and the ratio printed. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from transformers import get_cosine_schedule_with_warmup

from mmtrain.data.collate import TrainCollator
from mmtrain.data.convert import ensure_converted
from mmtrain.data.stream import TrainStream
from mmtrain.toy.world import ensure_toy_world
from mmtrain.lightning.module import RetrievalModule
from mmtrain.models.clip_sf import ClipSFBackbone, TinyClip
from mmtrain.models.loss import ContrastiveLoss

OPTIMIZER = partial(torch.optim.AdamW, lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)


def toy_batches(cache: Path, n: int, batch_size: int) -> tuple[ClipSFBackbone, list[dict]]:
    world = ensure_toy_world(cache / "toy_world" / "seed0", seed=0)
    shards = cache / "shards" / "toy_world_seed0"
    ensure_converted(shards, "mbeir", root=world / "mbeir", samples_per_shard=200)
    backbone = ClipSFBackbone(tokenizer=str(world / "tokenizer"), tiny=TinyClip(), max_text_length=64)
    stream = TrainStream(shards, batch_size=batch_size, seed=0,
                         collate_fn=TrainCollator(backbone.build_processor()))
    it = iter(stream)
    return backbone, [next(it) for _ in range(n)]


def plain_loop(backbone: ClipSFBackbone, batches: list[dict]) -> list[float]:
    """The baseline: what a person would write by hand, with no framework."""
    torch.manual_seed(0)
    encoder = backbone.build_encoder()
    loss_fn = ContrastiveLoss(temperature=0.05)
    decay = [p for p in encoder.parameters() if p.ndim >= 2]
    no_decay = [p for p in encoder.parameters() if p.ndim < 2]
    opt = OPTIMIZER([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
    sched = get_cosine_schedule_with_warmup(opt, 0, len(batches))
    times = []
    for batch in batches:
        q = encoder.encode_queries(batch["query"])
        p = encoder.encode_candidates(batch["positive"])
        loss = loss_fn(q, p, positive_ids=batch["positive_ids"],
                       query_positive_ids=batch["query_positive_ids"]).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter())
    return times


class _StepTimes(Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter())


def mmtrain_loop(backbone: ClipSFBackbone, batches: list[dict], log_dir: str) -> list[float]:
    torch.manual_seed(0)
    module = RetrievalModule(backbone, ContrastiveLoss(temperature=0.05), OPTIMIZER, "cosine", 0.0)
    timer = _StepTimes()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=len(batches), logger=CSVLogger(log_dir),
                        callbacks=[timer, LearningRateMonitor("step"), TQDMProgressBar(refresh_rate=10)],
                        enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0,
                        log_every_n_steps=25, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=0)
    trainer.fit(module, train_dataloaders=loader)
    return timer.times


def median_step_ms(times: list[float], warmup: int) -> float:
    steps = [b - a for a, b in zip(times[warmup:], times[warmup + 1:])]
    return 1000 * statistics.median(steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--cache", default=os.environ.get("MMTRAIN_CACHE", Path.home() / ".cache" / "mmtrain"))
    args = ap.parse_args()
    backbone, batches = toy_batches(Path(args.cache), args.steps + args.warmup + 1, args.batch_size)
    plain, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            plain.append(median_step_ms(plain_loop(backbone, batches), args.warmup))
            ours.append(median_step_ms(mmtrain_loop(backbone, batches, f"{tmp}/{r}"), args.warmup))
    p, m = statistics.median(plain), statistics.median(ours)
    print(f"\ntiny CLIP_SF, batch {args.batch_size}, {args.steps} timed steps x {args.repeats} repeats, "
          f"{torch.get_num_threads()} threads")
    print("| loop | median step (ms) | per repeat (ms) |\n|---|---:|---|")
    print(f"| plain PyTorch | {p:.1f} | {', '.join(f'{x:.1f}' for x in plain)} |")
    print(f"| mmtrain (Lightning) | {m:.1f} | {', '.join(f'{x:.1f}' for x in ours)} |")
    print(f"\nratio mmtrain / plain = {m / p:.3f}  (overhead {100 * (m / p - 1):+.1f} %)")


if __name__ == "__main__":
    main()
