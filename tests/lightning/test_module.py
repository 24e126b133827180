"""RetrievalModule pieces that the toy default does not exercise: hard negatives in the batch."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from mmtrain.data.collate import TrainCollator
from mmtrain.data.schema import Item, TrainExample
from mmtrain.lightning.module import RetrievalModule
from mmtrain.models.clip_sf import ClipSFBackbone, TinyClip
from mmtrain.models.loss import ContrastiveLoss
from mmtrain.toy.tokenizer import train_bpe_tokenizer


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


class _Passthrough(torch.nn.Module):
    """An encoder whose inputs are already the embeddings (the test chooses every score)."""

    def encode_queries(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def encode_candidates(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_evaluation_batches_are_routed_by_set_and_side_not_by_position(backbone):
    from types import SimpleNamespace

    from mmtrain.data.schema import EvalQuery
    from mmtrain.eval.retrieval import EvalSet

    eye = torch.eye(4)
    pool = EvalSet("pool", [Item(None, b"img", "image", None, 100 + i) for i in range(4)],
                   [EvalQuery(Item(f"q{i}", None, "text", None, i), [100 + i], 0, "toy", 1) for i in range(4)])
    text = EvalSet("beir", [Item(f"d{i}", None, "text", None, 200 + i) for i in range(12)],
                   [EvalQuery(Item(f"t{i}", None, "text", None, i), [200 + i], 1, "beir", 9) for i in range(12)],
                   metric="ndcg")
    eye12 = torch.eye(12)
    embeddings = {("pool", "candidate"): eye, ("pool", "query"): eye,
                  ("text", "candidate"): eye12, ("text", "query"): 0.5 * eye12 + torch.roll(eye12, 1, dims=1)}
    module = RetrievalModule(backbone, ContrastiveLoss(), partial(torch.optim.AdamW, lr=1e-3))
    module.encoder = _Passthrough()
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value)
    module.all_gather = lambda t: t
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(
        POOL="pool", TEXT="text", test_split="test", eval_sets=lambda split: {"pool": pool, "text": text}))
    # Halves of every side, interleaved, all from "dataloader 0": only the batch's own tags count.
    for first in (False, True):
        for (name, side), emb in reversed(embeddings.items()):
            half = slice(0, len(emb) // 2) if first else slice(len(emb) // 2, None)
            batch = {"inputs": emb[half], "index": torch.arange(len(emb))[half], "eval_set": name, "side": side}
            module.test_step(batch, 0, dataloader_idx=0)
    module.on_test_epoch_end()

    results = module.eval_results["test"]
    assert results["pool"].pairs[0].recall == {1: 1.0, 5: 1.0, 10: 1.0} and results["pool"].pairs[0].modality_acc == 1.0
    assert results["text"].summary["ndcg@10"] == pytest.approx(1 / np.log2(3))   # own document second
    assert logged["test/R@1"] == 1.0 and logged["test/R@5/toy_task0"] == 1.0
    assert logged["test/text/ndcg@10"] == pytest.approx(1 / np.log2(3)) and logged["test/text/hit_rate@12"] == 1.0
    assert not any(k.startswith("test/pool/") for k in logged) and module._eval_buffers == {}
