"""GradCache: the full-batch contrastive gradient in memory-sized chunks (recipes.md §8).

MM-Embed puts 128 queries per GPU (each with a positive, and a hard negative in stage 2, ~700
tokens each with an image) into one in-batch-negatives loss; one forward/backward over all of them
does not fit in 80 GB. GradCache (Gao et al. 2021) gives the same gradient in chunks:

1. forward every chunk without grad, keeping its representations and its RNG state;
2. compute the loss on the full (gathered) batch of cached representations and take
   d loss / d representation (and d loss / d loss-parameters, e.g. a learnable temperature);
3. re-forward each chunk with grad under its saved RNG state (so dropout, LoRA dropout included,
   draws the same masks, GC-DPR #12) and back-propagate ``(reps * cached_grad).sum()``;
4. one optimiser step.

Memory is one chunk's activations plus (n, d) cached vectors; compute is one extra forward.

Strategy-aware gradient reduction (recipes.md §8.3-8.4):
- DDP: every chunk's backward but the last runs under ``no_sync``; the last one all-reduces the
  accumulated gradients once.
- DeepSpeed ZeRO-2: ``no_sync`` is refused ("incompatible with gradient partitioning") and ZeRO-2
  reduce-scatters after every backward. With ``gradient_accumulation_steps = 1`` it would treat
  every chunk as a step boundary and keep only the last chunk's gradient, so the boundary is set
  explicitly: ``set_gradient_accumulation_boundary(False)`` for all chunks but the last, ``True``
  for the last, then one ``step()``: one reduce-scatter per chunk (cheap for LoRA-sized gradients,
  performance.md §3), gradients accumulated in ZeRO's partitions. The surrogate loss is not
  rescaled (``engine.backward`` divides by gradient_accumulation_steps, which is 1 here).
- One device: nothing to synchronise.
Tested against full-batch gradients in tests/lightning/test_gradcache*.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager

import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy, Strategy
from torch.utils.checkpoint import get_device_states, set_device_states

from mmtrain.lightning.module import RetrievalModule
from mmtrain.models.encoder import Encoder
from mmtrain.models.loss import LossOutput


class RandContext:
    """The CPU and device RNG states at construction, replayable any number of times (GC-DPR's
    ``RandContext``): ``with ctx:`` runs its block from those states and restores the global RNG."""

    def __init__(self, *tensors: torch.Tensor):
        self.cpu_state = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(*tensors)

    @contextmanager
    def replay(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu_state)
            set_device_states(self.devices, self.device_states)
            yield


@dataclass
class _Chunk:
    side: str                 # query | positive | negative
    inputs: dict[str, Any]
    rng: RandContext
    start: int                # rows of the side's representation matrix
    stop: int


SIDES = (("query", "encode_queries"), ("positive", "encode_candidates"), ("negative", "encode_candidates"))


def _tensors(inputs: dict[str, Any]) -> list[torch.Tensor]:
    return [v for v in inputs.values() if torch.is_tensor(v)]


def gradcache_backward(encoder: Encoder, loss_fn: torch.nn.Module, batch: dict[str, Any],
                       chunk_size: int, backward: Callable[[torch.Tensor], None],
                       chunk_sync: Callable[[bool], ContextManager] = lambda last: nullcontext(),
                       replay_rng: bool = True) -> LossOutput:
    """Steps 1-3 above for one training batch (the ``TrainCollator`` layout), through the encoder
    contract only (``split_inputs``, ``encode_queries`` / ``encode_candidates``); leaves the gradients
    in the parameters' ``.grad`` (or the strategy's buffers) and returns the loss output.

    ``backward(t)`` back-propagates a scalar (``Tensor.backward`` or Lightning's
    ``manual_backward``); ``chunk_sync(is_last)`` is entered around each chunk's backward.
    ``replay_rng=False`` exists only to show the test fails without the replay.
    """
    # 1. Representations, chunk by chunk, without a graph.
    chunks: list[_Chunk] = []
    reps: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for side, method in SIDES:
            inputs = batch.get(side)
            if inputs is None:
                continue
            parts, row = [], 0
            for piece in encoder.split_inputs(inputs, chunk_size):
                rng = RandContext(*_tensors(piece))
                out = getattr(encoder, method)(piece)
                chunks.append(_Chunk(side, piece, rng, row, row + out.shape[0]))
                parts.append(out)
                row += out.shape[0]
            reps[side] = torch.cat(parts)

    # 2. The full-batch loss on cached representations, and its gradient with respect to them.
    leaves = {side: r.detach().requires_grad_() for side, r in reps.items()}
    negatives = None
    if "negative_mask" in batch:
        b, k = batch["negative_mask"].shape
        positive = leaves["positive"]
        negatives = positive.new_zeros(b * k, positive.shape[-1])
        if "negative" in leaves:
            negatives = negatives.index_copy(0, batch["negative_slot"], leaves["negative"])
        negatives = negatives.view(b, k, -1)
    out = loss_fn(leaves["query"], leaves["positive"], negatives,
                  negative_mask=batch.get("negative_mask"), positive_ids=batch["positive_ids"],
                  negative_ids=batch.get("negative_ids"), query_positive_ids=batch["query_positive_ids"])
    sides = list(leaves)
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.loss, [leaves[s] for s in sides] + loss_params, allow_unused=True)
    rep_grads = dict(zip(sides, grads[: len(sides)]))
    param_grads = grads[len(sides):]

    # 3. Re-forward with grad under the saved RNG; back-propagate the cached gradients.
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        method = dict(SIDES)[chunk.side]
        with chunk_sync(last):
            with chunk.rng.replay() if replay_rng else nullcontext():
                rep = getattr(encoder, method)(chunk.inputs)
            surrogate = (rep * rep_grads[chunk.side][chunk.start:chunk.stop].to(rep.dtype)).sum()
            if last:  # loss parameters get their gradient through the same (synchronised) backward
                for p, g in zip(loss_params, param_grads):
                    if g is not None:
                        surrogate = surrogate + (p * g).sum()
            backward(surrogate)
    return LossOutput(loss=out.loss.detach(), accuracy=out.accuracy, logit_scale=out.logit_scale,
                      num_candidates=out.num_candidates)


def chunk_sync_for(strategy: Strategy) -> Callable[[bool], ContextManager]:
    """How chunk backward passes meet the strategy's gradient reduction (module docstring)."""
    if isinstance(strategy, DeepSpeedStrategy):
        engine = strategy.model

        @contextmanager
        def boundary(last: bool) -> Iterator[None]:
            engine.set_gradient_accumulation_boundary(last)
            yield

        return boundary
    if isinstance(strategy, DDPStrategy):
        return lambda last: nullcontext() if last else strategy.block_backward_sync()
    if isinstance(strategy, SingleDeviceStrategy):
        return lambda last: nullcontext()
    raise NotImplementedError(f"GradCache supports single-device, DDP and DeepSpeed strategies, not "
                              f"{type(strategy).__name__}")


class GradCacheRetrievalModule(RetrievalModule):
    """``RetrievalModule`` trained with GradCache under Lightning manual optimisation.

    ``chunk_size``: items per forward (the memory knob; every side is chunked: queries, positives,
    negatives). ``gradient_clip_val``: clipping is done here, Lightning's ``trainer.gradient_clip_val``
    is for automatic optimisation (DeepSpeed clips from its own config). Gradient accumulation is
    what GradCache replaces: keep ``trainer.accumulate_grad_batches = 1``.
    """

    def __init__(self, *args: Any, chunk_size: int = 16, gradient_clip_val: float | None = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.automatic_optimization = False
        self.chunk_size = chunk_size
        self.gradient_clip_val = gradient_clip_val

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        optimizer.zero_grad()
        out = gradcache_backward(self.encoder, self.loss, batch, self.chunk_size,
                                 backward=self.manual_backward,
                                 chunk_sync=chunk_sync_for(self.trainer.strategy))
        if self.gradient_clip_val and not isinstance(self.trainer.strategy, DeepSpeedStrategy):
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val,
                                gradient_clip_algorithm="norm")
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        bs = batch["positive_ids"].shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=bs)
        self.log("train/accuracy", out.accuracy, batch_size=bs)
        self.log("train/logit_scale", out.logit_scale, batch_size=bs)
        return out.loss
