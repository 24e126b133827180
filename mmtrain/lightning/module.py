"""The LightningModule: encode -> contrastive loss in training; in validation and test, encode each named
evaluation set of the datamodule and score it with the one evaluator (``EvalSet.score``). Backbone-agnostic: it only sees the encoder contract
(``encode_queries`` / ``encode_candidates`` -> unit vectors) and the backbone spec that builds it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import torch
from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                          get_linear_schedule_with_warmup)

from mmtrain.checkpoint import load_encoder
from mmtrain.eval.retrieval import EvalResult
from mmtrain.data.robust import RobustConfig
from mmtrain.models.loss import ContrastiveLoss, ExtraNegatives

LR_SCHEDULES = {
    "cosine": get_cosine_schedule_with_warmup,
    "linear": get_linear_schedule_with_warmup,
    "constant": lambda opt, num_warmup_steps, num_training_steps: get_constant_schedule_with_warmup(
        opt, num_warmup_steps),
}


class RetrievalModule(L.LightningModule):
    """Bi-encoder training with in-batch (and hard) negatives; retrieval evaluation in the loop.

    ``backbone``: a spec with ``build_encoder()``; the encoder is built in ``configure_model`` so
    large models are created under the strategy. ``optimizer``: a partial taking param groups.
    Weight decay skips 1-d parameters and the temperature (UniIR ``train.py``).
    ``robust``: the ``robust`` config group (RoCOCO SC / VC terms on the collator's synthesised
    negatives, mmtrain/data/perturb.py); None or ``enabled: false`` trains with the plain loss.
    """

    def __init__(self, backbone: Any, loss: ContrastiveLoss, optimizer: partial,
                 lr_schedule: str = "cosine", warmup_ratio: float = 0.0, init_from: str | None = None,
                 robust: Any = None):
        super().__init__()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule {lr_schedule!r} is not one of {sorted(LR_SCHEDULES)}")
        self.robust = RobustConfig.from_config(robust)
        if self.robust is not None and type(self).training_step is not RetrievalModule.training_step:
            raise NotImplementedError(f"robust losses are added in RetrievalModule.training_step; "
                                      f"{type(self).__name__} trains with its own step (e.g. GradCache)")
        self.backbone = backbone
        self.encoder: torch.nn.Module | None = None
        self.loss = loss
        self.optimizer_factory = optimizer
        self.lr_schedule = lr_schedule
        self.warmup_ratio = warmup_ratio
        self.init_from = init_from
        self.eval_results: dict[str, dict[str, EvalResult]] = {}  # split -> evaluation set -> scores
        # Per (evaluation set, side): (item index, embedding) batches until the epoch ends.
        self._eval_buffers: dict[tuple[str, str], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def configure_model(self) -> None:
        # init_from: start from another run's weights (a staged recipe), not from its optimiser or step.
        if self.encoder is None:
            self.encoder = load_encoder(self.backbone, self.init_from, what="stage.init_from")

    # ---------------------------------------------------------------- training
    def encode_batch(self, batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        """Embeddings of a training batch: query (B,d), positive (B,d), negatives (B,K,d) or None."""
        q = self.encoder.encode_queries(batch["query"])
        p = self.encoder.encode_candidates(batch["positive"])
        neg = None
        if "negative_mask" in batch:
            b, k = batch["negative_mask"].shape
            neg = p.new_zeros(b * k, p.shape[-1])
            if batch["negative"] is not None:
                real = self.encoder.encode_candidates(batch["negative"])
                neg = neg.index_copy(0, batch["negative_slot"], real)
            neg = neg.view(b, k, -1)
        return {"query": q, "positive": p, "negatives": neg}

    def encode_extra_negatives(self, batch: dict[str, Any], like: torch.Tensor) -> dict[str, ExtraNegatives]:
        """The collator's synthesised negatives (``batch["extra_negatives"]``: {kind: {"inputs", "rows"}})
        as (B, d) embeddings with a row mask, weighted by the robust settings."""
        extras = batch.get("extra_negatives") or {}
        if extras and self.robust is None:
            raise ValueError(f"the batch carries extra negatives {sorted(extras)} but this module has no "
                             f"robust settings: pass the same `robust` config to the module and the data")
        out = {}
        for kind, entry in extras.items():
            if kind not in self.robust.weights:
                raise KeyError(f"extra negatives of kind {kind!r} have no weight; weighted kinds: "
                               f"{sorted(self.robust.weights)}")
            rows = entry["rows"].to(like.device)
            emb = like.new_zeros(like.shape).index_copy(0, rows, self.encoder.encode_candidates(entry["inputs"]))
            mask = torch.zeros(like.shape[0], dtype=torch.bool, device=like.device).index_fill(0, rows, True)
            out[kind] = ExtraNegatives(emb, mask, self.robust.weights[kind], self.robust.form, self.robust.margin)
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        emb = self.encode_batch(batch)
        out = self.loss(emb["query"], emb["positive"], emb["negatives"],
                        negative_mask=batch.get("negative_mask"),
                        positive_ids=batch["positive_ids"],
                        negative_ids=batch.get("negative_ids"),
                        query_positive_ids=batch["query_positive_ids"],
                        extra_negatives=self.encode_extra_negatives(batch, emb["positive"]) or None)
        bs = emb["query"].shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=bs)
        self.log("train/accuracy", out.accuracy, batch_size=bs)
        self.log("train/logit_scale", out.logit_scale, batch_size=bs)
        for kind, term in out.terms.items():
            self.log(f"train/robust/{kind}", term, batch_size=bs)
        return out.loss

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim < 2 or "logit_scale" in name else decay).append(param)
        optimizer = self.optimizer_factory([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
        total = self.trainer.max_steps
        if total is None or total <= 0:
            raise ValueError("trainer.max_steps must be set: training streams are endless")
        schedule = LR_SCHEDULES[self.lr_schedule](
            optimizer, num_warmup_steps=int(self.warmup_ratio * total), num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ---------------------------------------------------------------- evaluation
    # Every evaluation batch says which set and side it holds (datamodule._eval_loaders); the module
    # buffers the embeddings per (set, side) and scores each set of the split at the epoch's end.
    def _eval_step(self, batch: dict[str, Any]) -> None:
        encode = self.encoder.encode_queries if batch["side"] == "query" else self.encoder.encode_candidates
        emb = encode(batch["inputs"]).float()
        self._eval_buffers.setdefault((batch["eval_set"], batch["side"]), []).append((batch["index"], emb))

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self._eval_step(batch)

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self._eval_step(batch)

    def _gathered(self, buffers: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """All ranks' embeddings of one side, de-duplicated (the sampler pads) and in item order."""
        index = torch.cat([i for i, _ in buffers]).to(self.device)
        emb = torch.cat([e for _, e in buffers])
        index, emb = self.all_gather(index), self.all_gather(emb)
        index, emb = index.reshape(-1), emb.reshape(-1, emb.shape[-1])
        order = torch.argsort(index, stable=True)
        index, emb = index[order], emb[order]
        keep = torch.ones_like(index, dtype=torch.bool)
        keep[1:] = index[1:] != index[:-1]
        return emb[keep].cpu()

    def _finish_eval(self, split: str) -> None:
        """Score every evaluation set of ``split`` that was encoded (both sides); log its scalars, the
        split's own pool (``datamodule.POOL``) as ``<split>/<metric>``, other sets as ``<split>/<set>/<metric>``."""
        buffered, self._eval_buffers = self._eval_buffers, {}
        results = {}
        for name, eval_set in self.trainer.datamodule.eval_sets(split).items():
            if (name, "query") not in buffered or (name, "candidate") not in buffered:
                continue
            cand, queries = self._gathered(buffered[name, "candidate"]), self._gathered(buffered[name, "query"])
            results[name] = eval_set.score(queries, cand)
            prefix = f"{split}/" if name == self.trainer.datamodule.POOL else f"{split}/{name}/"
            for key, value in results[name].scalars().items():
                self.log(prefix + key, value, rank_zero_only=True)
        if results:
            self.eval_results[split] = results

    def on_validation_epoch_end(self) -> None:
        self._finish_eval(self.trainer.datamodule.val_split)

    def on_test_epoch_end(self) -> None:
        self._finish_eval(self.trainer.datamodule.test_split)
