"""The LightningModule: encode -> contrastive loss in training, encode -> exact search -> metrics in
validation and test. Backbone-agnostic: it only sees the encoder contract
(``encode_queries`` / ``encode_candidates`` -> unit vectors) and the backbone spec that builds it.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                          get_linear_schedule_with_warmup)

from mmtrain.eval.metrics import summarize
from mmtrain.eval.retrieval import RetrievalEvaluator
from mmtrain.models.loss import ContrastiveLoss

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
    """

    def __init__(self, backbone: Any, loss: ContrastiveLoss, optimizer: partial,
                 lr_schedule: str = "cosine", warmup_ratio: float = 0.0, init_from: str | None = None):
        super().__init__()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule {lr_schedule!r} is not one of {sorted(LR_SCHEDULES)}")
        self.backbone = backbone
        self.encoder: torch.nn.Module | None = None
        self.loss = loss
        self.optimizer_factory = optimizer
        self.lr_schedule = lr_schedule
        self.warmup_ratio = warmup_ratio
        self.init_from = init_from
        self.eval_results: dict[str, list] = {}
        self._eval_buffers: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[], []]

    def configure_model(self) -> None:
        if self.encoder is None:
            self.encoder = self.backbone.build_encoder()
            if self.init_from:
                self._load_encoder_weights(self.init_from)

    def _load_encoder_weights(self, path: str) -> None:
        """Start from another run's weights (a staged recipe), not from its optimiser or step."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"stage.init_from={path} does not exist: run the previous stage first "
                                    "(or point stage.init_from at its checkpoint)")
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        weights = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        self.encoder.load_state_dict(weights)

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

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        emb = self.encode_batch(batch)
        out = self.loss(emb["query"], emb["positive"], emb["negatives"],
                        negative_mask=batch.get("negative_mask"),
                        positive_ids=batch["positive_ids"],
                        negative_ids=batch.get("negative_ids"),
                        query_positive_ids=batch["query_positive_ids"])
        bs = emb["query"].shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=bs)
        self.log("train/accuracy", out.accuracy, batch_size=bs)
        self.log("train/logit_scale", out.logit_scale, batch_size=bs)
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
    # Dataloader 0 yields pool candidates, dataloader 1 the split's queries (datamodule order).
    def _eval_step(self, batch: dict[str, Any], dataloader_idx: int) -> None:
        encode = self.encoder.encode_candidates if dataloader_idx == 0 else self.encoder.encode_queries
        emb = encode(batch["inputs"]).float()
        self._eval_buffers[dataloader_idx].append((batch["index"], emb))

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self._eval_step(batch, dataloader_idx)

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self._eval_step(batch, dataloader_idx)

    def _gathered(self, which: int) -> torch.Tensor:
        """All ranks' embeddings of one side, de-duplicated (the sampler pads) and in item order."""
        index = torch.cat([i for i, _ in self._eval_buffers[which]]).to(self.device)
        emb = torch.cat([e for _, e in self._eval_buffers[which]])
        self._eval_buffers[which] = []
        index, emb = self.all_gather(index), self.all_gather(emb)
        index, emb = index.reshape(-1), emb.reshape(-1, emb.shape[-1])
        order = torch.argsort(index, stable=True)
        index, emb = index[order], emb[order]
        keep = torch.ones_like(index, dtype=torch.bool)
        keep[1:] = index[1:] != index[:-1]
        return emb[keep].cpu()

    def _finish_eval(self, split: str) -> None:
        if not self._eval_buffers[0] or not self._eval_buffers[1]:
            self._eval_buffers = [[], []]
            return
        evaluator: RetrievalEvaluator = self.trainer.datamodule.evaluator(split)
        cand, queries = self._gathered(0), self._gathered(1)
        results = evaluator.evaluate(queries, cand)
        self.eval_results[split] = results
        summary = summarize(results)
        flat = {f"R@{k}": v for k, v in summary.pop("recall").items()} | summary
        for key, value in flat.items():
            if isinstance(value, (int, float)):
                self.log(f"{split}/{key}", float(value), rank_zero_only=True)
        for r in results:
            self.log(f"{split}/R@{r.headline_k}/{r.pair}", float(r.headline), rank_zero_only=True)

    def on_validation_epoch_end(self) -> None:
        self._finish_eval(self.trainer.datamodule.val_split)

    def on_test_epoch_end(self) -> None:
        self._finish_eval(self.trainer.datamodule.test_split)
