"""GradCache under 2-process DDP and DeepSpeed ZeRO-2 (CPU, gloo) gives the full-batch gradient.

The test launches this file as a script (Lightning's DDP launcher re-runs the script for rank 1):
each rank trains one step of ``GradCacheRetrievalModule`` (tiny LLaVA-Next, LoRA dropout 0.2, random
LoRA B so every LoRA matrix has a gradient, learnable temperature) on its half of a fixed global
batch, with SGD at lr 1, so ``before - after`` of each trainable parameter is its gradient. The
reference is one process computing the *global-batch* loss in one graph: every rank's chunks
forwarded with grad from the same seed the rank used (so dropout masks match), the loss on the
concatenated batch, one backward.

DeepSpeed on CPU uses the test-only ``CPUDeepSpeedStrategy`` workaround of environment.md §4
(Lightning's DeepSpeedStrategy refuses CPUs); DeepSpeed's optional shared-memory allreduce op is
not JIT-compiled (it only speeds CPU collectives, and costs ~45 s of g++ on a fresh machine).
``deepspeed_zero2_naive`` runs ZeRO-2 without GradCache's boundary handling and must *fail* the
comparison (ZeRO-2 then keeps the last chunk's gradient only): the check can catch the bug.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
WORLD, CHUNK, SEED = 2, 2, 100


def jpeg(seed: int, h: int = 40, w: int = 48) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def make_backbone(tokenizer: str):
    from mmtrain.models.mllm import LlavaNextBackbone, TinyMLLM
    return LlavaNextBackbone(tokenizer=tokenizer, tiny=TinyMLLM(),
                             lora={"r": 4, "alpha": 8, "dropout": 0.2, "init_lora_weights": False})


def make_loss(strategy: str):
    """DDP also checks the learnable temperature's gradient. DeepSpeed 0.19.8 cannot broadcast a
    0-dim parameter (``p.data.view(torch.uint8)`` in ``_broadcast_model``), so its run keeps the
    temperature fixed (the MLLM recipes fix it at 0.02 anyway)."""
    from mmtrain.models.loss import ContrastiveLoss
    return ContrastiveLoss(temperature=0.05, learnable_temperature=strategy == "ddp")


def rank_batch(processor, rank: int) -> dict:
    """Rank ``rank``'s 4 examples: text / image / image+text queries and candidates, one hard
    negative for some queries."""
    from mmtrain.data.collate import TrainCollator
    from mmtrain.data.schema import Item, TrainExample
    examples = []
    for j in range(4):
        i = 4 * rank + j
        query = Item(f"a red circle {i}" if j != 1 else None, jpeg(i) if j % 2 else None, "x",
                     instruction="find an image that matches")
        positive = Item("a blue square on the right" if j % 2 == 0 else None,
                        jpeg(50 + i) if j else None, "x", id=100 + i)
        negatives = [Item(f"the left {i}", jpeg(80 + i) if j == 3 else None, "x", id=200 + i)] if j % 2 else []
        examples.append(TrainExample(query, positive, negatives, [100 + i]))
    return TrainCollator(processor, num_negatives=1)(examples)


def trainable(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone().float() for n, p in module.named_parameters() if p.requires_grad}


def reference_gradients(tokenizer: str, strategy: str) -> dict[str, torch.Tensor]:
    """One process, one graph, the global batch."""
    from mmtrain.lightning.module import RetrievalModule
    backbone = make_backbone(tokenizer)
    processor = backbone.build_processor()
    module = RetrievalModule(backbone, make_loss(strategy), partial(torch.optim.SGD, lr=1.0))
    module.configure_model()
    module.train()
    enc = module.encoder
    sides = {"query": [], "positive": [], "negative": []}
    batches = [rank_batch(processor, r) for r in range(WORLD)]
    for r, batch in enumerate(batches):
        torch.manual_seed(SEED + r)  # the seed rank r's training step starts from
        for side, method in (("query", enc.encode_queries), ("positive", enc.encode_candidates),
                             ("negative", enc.encode_candidates)):
            sides[side].append(torch.cat([method(c) for c in enc.split_inputs(batch[side], CHUNK)]))
    negatives = []
    for r, batch in enumerate(batches):
        b, k = batch["negative_mask"].shape
        grid = sides["positive"][r].new_zeros(b * k, sides["positive"][r].shape[1])
        negatives.append(grid.index_copy(0, batch["negative_slot"], sides["negative"][r]).view(b, k, -1))
    cat = lambda key: torch.cat([b[key] for b in batches])  # noqa: E731
    out = module.loss(torch.cat(sides["query"]), torch.cat(sides["positive"]), torch.cat(negatives),
                      negative_mask=cat("negative_mask"), positive_ids=cat("positive_ids"),
                      negative_ids=cat("negative_ids"), query_positive_ids=cat("query_positive_ids"))
    out.loss.backward()
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------- script side
def run(strategy_name: str, tokenizer: str, out: str) -> None:
    import lightning as L
    from torch.utils.data import DataLoader

    from mmtrain.lightning.gradcache import GradCacheRetrievalModule

    if strategy_name.endswith("_naive"):  # the negative control: no accumulation-boundary handling
        from contextlib import nullcontext

        import mmtrain.lightning.gradcache as gradcache
        gradcache.chunk_sync_for = lambda strategy: (lambda last: nullcontext())

    class Probe(GradCacheRetrievalModule):
        def training_step(self, batch, batch_idx):
            torch.manual_seed(SEED + self.global_rank)
            return super().training_step(batch, batch_idx)

        def train_dataloader(self):
            processor = self.backbone.build_processor()
            return DataLoader([rank_batch(processor, self.global_rank)], batch_size=None)

        def on_train_start(self):
            self.before = trainable(self)
            self.allreduce_calls = 0
            if strategy_name == "ddp":  # count DDP's bucket all-reduces: GradCache must sync once
                from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

                def counting_hook(state, bucket):
                    self.allreduce_calls += 1
                    return allreduce_hook(None, bucket)
                self.trainer.strategy.model.register_comm_hook(None, counting_hook)

        def on_train_end(self):
            if self.global_rank == 0:
                after = trainable(self)
                torch.save({"delta": {n: self.before[n] - after[n] for n in after},
                            "allreduce_calls": self.allreduce_calls}, out)

    module = Probe(make_backbone(tokenizer), make_loss(strategy_name), partial(torch.optim.SGD, lr=1.0),
                   lr_schedule="constant", chunk_size=CHUNK)
    trainer = L.Trainer(accelerator="cpu", devices=WORLD, strategy=make_strategy(strategy_name), max_steps=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        use_distributed_sampler=False)
    trainer.fit(module)


def make_strategy(name: str):
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
    if name == "ddp":
        return DDPStrategy(process_group_backend="gloo")
    # deepspeed_zero2 and deepspeed_zero2_naive

    # `deepspeed.comm.torch` the attribute is the torch package (re-exported); patch the module.
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # optional, JIT-built

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

    # batch_size=None loaders (our streams) have no batch_sampler to read the micro-batch from
    return CPUDeepSpeedStrategy(stage=2, process_group_backend="gloo", logging_batch_size_per_gpu=4)


# ---------------------------------------------------------------------------- test side
@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> str:
    from mmtrain.toy.tokenizer import train_bpe_tokenizer
    path = tmp_path_factory.mktemp("tok")
    corpus = ["a red circle on the left", "a blue square on the right", "find an image that matches"] * 8
    train_bpe_tokenizer(corpus, vocab_size=300).save_pretrained(path)
    return str(path)


def launch(strategy: str, tokenizer: str, tmp_path: Path) -> dict:
    out = tmp_path / "grads.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run([sys.executable, __file__, strategy, tokenizer, str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return torch.load(out)


BUCKETS = 1  # the trainable parameters (~70k floats) fit DDP's first 1 MB bucket


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed_zero2"])
def test_gradcache_matches_full_batch_across_two_ranks(strategy, tokenizer, tmp_path):
    result = launch(strategy, tokenizer, tmp_path)
    got = result["delta"]
    if strategy == "ddp":  # 5 chunks (2 query, 2 positive, 1 negative), one all-reduce per bucket
        assert result["allreduce_calls"] == BUCKETS
    expected = reference_gradients(tokenizer, strategy)
    assert set(got) == set(expected) and len(got) > 10
    assert any("lora_A" in n for n in got) and any("multi_modal_projector" in n for n in got)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item() + 1e-7,
                                   msg=lambda m, name=name: f"{strategy} {name}: {m}")


@pytest.mark.slow
def test_zero2_without_boundary_handling_gets_wrong_gradients(tokenizer, tmp_path):
    got = launch("deepspeed_zero2_naive", tokenizer, tmp_path)["delta"]
    expected = reference_gradients(tokenizer, "deepspeed_zero2")
    worst = max(((got[n] - g).abs().max() / g.abs().max().clamp(min=1e-12)).item() for n, g in expected.items())
    assert worst > 0.1


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("strategy", choices=["ddp", "deepspeed_zero2", "deepspeed_zero2_naive"])
    parser.add_argument("tokenizer")
    parser.add_argument("out")
    args = parser.parse_args()
    run(args.strategy, args.tokenizer, args.out)
