"""RetrievalModule pieces that the toy default does not exercise: hard negatives in the batch."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from mmtrain.data.collate import TrainCollator
from mmtrain.data.schema import Item, TrainExample
from mmtrain.lightning.module import RetrievalModule
from mmtrain.models.clip_sf import ClipSFBackbone, TinyClip
from mmtrain.models.loss import ContrastiveLoss
from mmtrain.models.tokenizer import train_bpe_tokenizer


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    train_bpe_tokenizer(["red circle blue square green triangle find match"] * 20, vocab_size=300).save_pretrained(path)
    return ClipSFBackbone(tokenizer=str(path), tiny=TinyClip(), max_text_length=16)


def ex(i: int, negs: list[str]) -> TrainExample:
    return TrainExample(query=Item(f"query {i}", None, "text", instruction="find"),
                        positive=Item(f"red circle {i}", None, "text", id=100 + i),
                        negatives=[Item(t, None, "text", id=200 + 10 * i + j) for j, t in enumerate(negs)],
                        positive_ids=[100 + i], task_id=1)


@pytest.mark.parametrize("mode", ["shared", "own"])
def test_negatives_land_in_their_slots_and_train(backbone, mode):
    torch.manual_seed(0)
    module = RetrievalModule(backbone, ContrastiveLoss(temperature=0.05, hard_negatives=mode),
                             partial(torch.optim.AdamW, lr=1e-3))
    module.configure_model()
    processor = backbone.build_processor()
    examples = [ex(0, ["blue square", "green triangle"]), ex(1, []), ex(2, ["blue circle"])]
    batch = TrainCollator(processor, num_negatives=2)(examples)
    module.eval()
    with torch.no_grad():
        emb = module.encode_batch(batch)
        single = {t: module.encoder.encode_candidates(processor([Item(t, None, "text")]))[0]
                  for t in ("blue square", "green triangle", "blue circle")}
    neg = emb["negatives"]
    assert neg.shape == (3, 2, emb["query"].shape[1])
    torch.testing.assert_close(neg[0, 0], single["blue square"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(neg[0, 1], single["green triangle"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(neg[2, 0], single["blue circle"], atol=1e-5, rtol=1e-4)
    assert torch.count_nonzero(neg[1]) == 0 and torch.count_nonzero(neg[2, 1]) == 0
    module.train()
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in module.encoder.parameters())
