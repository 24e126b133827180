"""TrainCollator's id bookkeeping, checked against hand-written expectations."""

from __future__ import annotations

import torch

from mmtrain.data.collate import IndexedItems, ItemCollator, TrainCollator
from mmtrain.data.schema import Item, TrainExample


def fake_processor(items: list[Item]) -> dict:
    return {"texts": [i.text for i in items]}


def example(q: str, pos: tuple[str, int], negs: list[tuple[str, int]], pos_ids: list[int]) -> TrainExample:
    return TrainExample(query=Item(q, None, "text", instruction="find"), positive=Item(pos[0], None, "text", id=pos[1]),
                        negatives=[Item(t, None, "text", id=i) for t, i in negs], positive_ids=pos_ids, task_id=1)


def test_negative_slots_mask_and_ids():
    batch = TrainCollator(fake_processor, num_negatives=2)([
        example("q0", ("p0", 10), [("n0a", 20), ("n0b", 21), ("n0c", 22)], [10, 11]),   # more than K: first K
        example("q1", ("p1", 12), [], [12]),                                            # none
        example("q2", ("p2", 13), [("n2a", 23)], [13, 14, 15]),                         # fewer than K
    ])
    assert batch["query"]["texts"] == ["q0", "q1", "q2"]
    assert batch["negative"]["texts"] == ["n0a", "n0b", "n2a"]
    assert batch["negative_slot"].tolist() == [0, 1, 4]
    assert batch["negative_mask"].tolist() == [[True, True], [False, False], [True, False]]
    assert batch["negative_ids"].tolist() == [[20, 21], [-1, -1], [23, -1]]
    assert batch["positive_ids"].tolist() == [10, 12, 13]
    assert batch["query_positive_ids"].tolist() == [[10, 11, -1], [12, -1, -1], [13, 14, 15]]
    assert batch["task_id"].tolist() == [1, 1, 1]


def test_no_negatives_requested_means_no_negative_keys():
    batch = TrainCollator(fake_processor)([example("q", ("p", 1), [("n", 2)], [1])])
    assert "negative_mask" not in batch and "negative" not in batch


def test_all_negative_slots_empty():
    batch = TrainCollator(fake_processor, num_negatives=1)([example("q", ("p", 1), [], [1])])
    assert batch["negative"] is None and batch["negative_mask"].tolist() == [[False]]


def test_item_collator_keeps_indices():
    data = IndexedItems([Item(f"t{i}", None, "text") for i in range(5)])
    out = ItemCollator(fake_processor)([data[3], data[1]])
    assert out["index"].tolist() == [3, 1] and out["inputs"]["texts"] == ["t3", "t1"]
    assert isinstance(out["index"], torch.Tensor) and len(data) == 5
