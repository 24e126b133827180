"""GradCache gives the full-batch gradient, one process (the 2-rank DDP / ZeRO-2 runs are in
test_gradcache_dist.py).

References are computed independently of the GradCache code: the same chunks forwarded *with*
grad into one graph, the loss on the whole batch, one ``backward()``. With dropout (LoRA dropout
0.2) the reference draws its masks from the same seed in the same chunk order, which is what
GradCache's first pass does; without dropout the reference is a single forward over the whole
batch, unchunked. Float64 keeps the comparisons tight.
"""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from mmtrain.lightning.gradcache import GradCacheRetrievalModule, gradcache_backward
from mmtrain.lightning.module import RetrievalModule
from mmtrain.models.clip_sf import ClipSFBackbone, TinyClip
from mmtrain.models.loss import ContrastiveLoss
from mmtrain.models.mllm import LlavaNextBackbone, MllamaBackbone, Qwen2VLBackbone, TinyMLLM
from test_gradcache_dist import rank_batch, tokenizer  # noqa: F401  (fixture)

BACKBONES = {"llava_next": LlavaNextBackbone, "mllama": MllamaBackbone, "qwen2_vl": Qwen2VLBackbone}


def build(cls, tokenizer: str, dropout: float, padding_side: str = "right"):
    backbone = cls(tokenizer=tokenizer, tiny=TinyMLLM(), padding_side=padding_side,
                   lora={"r": 4, "alpha": 8, "dropout": dropout, "init_lora_weights": False})
    encoder = backbone.build_encoder().double().train()
    return backbone.build_processor(), encoder


def loss_fn(mode: str = "shared") -> ContrastiveLoss:
    return ContrastiveLoss(temperature=0.05, learnable_temperature=True, hard_negatives=mode).double()


def reference(encoder, loss, batch, chunk: int | None, seed: int = 3) -> list[torch.Tensor]:
    """Gradients of the full-batch loss, forwarded in ``chunk``-sized pieces (None: in one go)."""
    torch.manual_seed(seed)
    reps = {}
    for side, method in (("query", encoder.encode_queries), ("positive", encoder.encode_candidates),
                         ("negative", encoder.encode_candidates)):
        pieces = encoder.split_inputs(batch[side], chunk) if chunk else [batch[side]]
        reps[side] = torch.cat([method(p) for p in pieces])
    b, k = batch["negative_mask"].shape
    grid = reps["positive"].new_zeros(b * k, reps["positive"].shape[1])
    negatives = grid.index_copy(0, batch["negative_slot"], reps["negative"]).view(b, k, -1)
    out = loss(reps["query"], reps["positive"], negatives, negative_mask=batch["negative_mask"],
               positive_ids=batch["positive_ids"], negative_ids=batch["negative_ids"],
               query_positive_ids=batch["query_positive_ids"])
    return grads_of(encoder, loss, out.loss.backward)


def grads_of(encoder, loss, run) -> list[torch.Tensor]:
    params = [p for p in encoder.parameters() if p.requires_grad] + [loss.logit_scale]
    for p in params:
        p.grad = None
    run()
    grads = [p.grad.detach().clone() for p in params]
    for p in params:
        p.grad = None
    return grads


def gradcache(encoder, loss, batch, chunk: int, seed: int = 3, **kwargs) -> list[torch.Tensor]:
    def run():
        torch.manual_seed(seed)
        gradcache_backward(encoder, loss, batch, chunk, backward=lambda t: t.backward(), **kwargs)
    return grads_of(encoder, loss, run)


def assert_all_close(got, expected):
    assert len(got) == len(expected) > 10
    assert sum(bool(torch.count_nonzero(g)) for g in expected) > len(expected) // 2
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10 * (1 + e.abs().max().item()))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_gradcache_equals_full_batch_with_lora_dropout(name, tokenizer):
    processor, encoder = build(BACKBONES[name], tokenizer, dropout=0.2)
    batch = rank_batch(processor, 0)
    loss = loss_fn()
    assert_all_close(gradcache(encoder, loss, batch, chunk=2), reference(encoder, loss, batch, chunk=2))


def test_without_rng_replay_the_gradients_differ(tokenizer):
    """The test above can fail: drop the replay and dropout draws new masks in the second pass."""
    processor, encoder = build(LlavaNextBackbone, tokenizer, dropout=0.2)
    batch = rank_batch(processor, 0)
    loss = loss_fn()
    expected = reference(encoder, loss, batch, chunk=2)
    got = gradcache(encoder, loss, batch, chunk=2, replay_rng=False)
    assert max((g - e).abs().max() / e.abs().max().clamp(min=1e-12) for g, e in zip(got, expected)) > 1e-3


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("mode", ["shared", "own"])
def test_gradcache_equals_one_unchunked_forward(padding_side, mode, tokenizer):
    """No dropout: chunks of 3 vs one forward over the whole batch (so chunking changes nothing,
    padding and positions included)."""
    processor, encoder = build(LlavaNextBackbone, tokenizer, dropout=0.0, padding_side=padding_side)
    batch = rank_batch(processor, 1)
    loss = loss_fn(mode)
    assert_all_close(gradcache(encoder, loss, batch, chunk=3), reference(encoder, loss, batch, chunk=None))


def build_clip(tokenizer: str):
    backbone = ClipSFBackbone(tokenizer=tokenizer, tiny=TinyClip(), max_text_length=32)
    torch.manual_seed(0)
    return backbone.build_processor(), backbone.build_encoder().double().train()


@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("mode", ["shared", "own"])
def test_clip_sf_gradcache_equals_one_unchunked_forward(chunk, mode, tokenizer):
    """CLIP_SF: chunks (some with no text or no image item: the dummy rows) vs one forward over the
    whole batch."""
    processor, encoder = build_clip(tokenizer)
    batch = rank_batch(processor, 1)
    pieces = [p for side in ("positive", "negative") for p in encoder.split_inputs(batch[side], chunk)]
    assert any(p["text_index"].tolist() == [-1] for p in pieces) or chunk == 3
    assert any(p["image_index"].tolist() == [-1] for p in pieces) or chunk == 3
    loss = loss_fn(mode)
    assert_all_close(gradcache(encoder, loss, batch, chunk=chunk), reference(encoder, loss, batch, chunk=None))


def tiny_llava(tokenizer: str):
    return LlavaNextBackbone(tokenizer=tokenizer, tiny=TinyMLLM(), dtype="float32",
                             lora={"r": 4, "alpha": 8, "dropout": 0.0, "init_lora_weights": False})


@pytest.mark.parametrize("make", [tiny_llava, lambda tok: ClipSFBackbone(tokenizer=tok, tiny=TinyClip())],
                         ids=["llava_next", "clip_sf"])
def test_lightning_manual_optimisation_step(make, tokenizer):
    """One step of GradCacheRetrievalModule under a Trainer with SGD(lr=1): the parameter change is
    the full-batch gradient (zero_grad, backward, step, scheduler wired the right way)."""
    backbone = make(tokenizer)
    batch = rank_batch(backbone.build_processor(), 0)
    ref = RetrievalModule(backbone, ContrastiveLoss(temperature=0.05), partial(torch.optim.SGD, lr=1.0))
    torch.manual_seed(0)  # CLIP_SF's from-config weights come from the global generator
    ref.configure_model()
    ref.train()
    ref.training_step(batch, 0).backward()
    expected = {n: p.grad.clone() for n, p in ref.named_parameters() if p.requires_grad}

    module = GradCacheRetrievalModule(backbone, ContrastiveLoss(temperature=0.05),
                                      partial(torch.optim.SGD, lr=1.0), lr_schedule="constant", chunk_size=3)
    torch.manual_seed(0)
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=DataLoader([batch], batch_size=None))
    assert trainer.global_step == 1
    for name, grad in expected.items():
        delta = before[name] - dict(module.named_parameters())[name].detach()
        torch.testing.assert_close(delta, grad, rtol=1e-4, atol=1e-6 * (1 + grad.abs().max().item()))
