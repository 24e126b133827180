"""Zero-shot MLLM reranker mechanics with a tiny LLaVA-NeXT built from config: Table 13 prompt
assembly per task, the True/False logits, batching, and the reordering of the top-k."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from test_eval_support import build_tiny_llava, fake_context, jpeg

from mmtrain.data.schema import Item
from mmtrain.eval.reranker import RERANK_PROMPTS, MLLMReranker, build_prompt, prompt_for, rerank_rows, rerank_topk

Q_IMG, C_IMG = jpeg((255, 0, 0)), jpeg((0, 0, 255))


@pytest.fixture(scope="module")
def reranker(tmp_path_factory) -> MLLMReranker:
    path = build_tiny_llava(tmp_path_factory.mktemp("llava"))
    return MLLMReranker(str(path), batch_size=3, top_k=3, tasks=[6, 7, 8])


def test_table13_prompts_per_task():
    q = Item("what is this?", Q_IMG, "image,text", "an instruction that must not appear")
    c = Item("a wiki text", C_IMG, "image,text")
    cases = {
        (0, "mscoco"): ("<image>\nCaption:what is this?\nDoes the above daily-life image match the caption? "
                        "True or False", [C_IMG]),
        (3, "visualnews"): ("<image>\nNews:a wiki text\nDoes the above News image match the News story? True or False",
                            [Q_IMG]),
        (2, "webqa"): ("Question: what is this?\nAnswer: a wiki text\nDoes the answer correctly answer the question? "
                       "True or False", []),
        (4, "nights"): ("<image>\n<image>\nDoes the above two images have the same scene? True or False", [Q_IMG, C_IMG]),
        # Task 6/8: no newline before "Does"; task 8 shows no candidate image (verbatim Table 13).
        (8, "infoseek"): ("<image>\nQuestion:what is this?\nAnswer:a wiki textDoes the answer correctly answer the "
                          "question? True or False", [Q_IMG]),
        # Task 7: the candidate image and the modification text, not the reference image.
        (7, "cirr"): ("<image>\nCaption:what is this?\nDoes the above caption describe the modification of the "
                      "image? True or False", [C_IMG]),
    }
    for (task, dataset), (text, images) in cases.items():
        assert build_prompt(prompt_for(task, dataset), q, c, "<image>") == (text, images), (task, dataset)
    assert len(RERANK_PROMPTS) == 16  # Table 13: every M-BEIR (task, dataset) pair
    assert prompt_for(0, "toycap") == RERANK_PROMPTS[(0, "mscoco")] and prompt_for(7, "circo") == RERANK_PROMPTS[(7, "cirr")]
    # A missing image drops its placeholder instead of leaving an image token without pixels.
    assert build_prompt(prompt_for(4, "nights"), Item(None, None, "text"), c, "<image>")[1] == [C_IMG]


def test_reorder_is_stable_and_keeps_the_tail():
    ranked = np.array([[5, 6, 7, 8], [1, 2, 3, 4]])
    scores = np.array([[0.1, 0.9, 0.5], [0.5, 0.5, 0.9]])
    assert rerank_rows(ranked, scores).tolist() == [[6, 7, 5, 8], [3, 1, 2, 4]]


def test_true_false_logits_batching_and_reranking(reranker):
    tok = reranker.processor.tokenizer
    assert reranker.true_id == tok.encode("True", add_special_tokens=False)[0] != reranker.false_id
    q = Item("what is this?", Q_IMG, "image,text")
    pairs = [(6, "oven", q, Item(f"wiki text {i}", None, "text")) for i in range(3)]
    pairs += [(7, "cirr", q, Item(None, jpeg((0, 40 * i, 200)), "image")) for i in range(2)]
    pairs += [(2, "webqa", Item("a question", None, "text"), Item("a passage", None, "text"))]
    batched = reranker.score(pairs)
    one_by_one = np.concatenate([reranker.score([p]) for p in pairs])
    assert np.allclose(batched, one_by_one, atol=1e-5)  # left padding + positions: same as alone
    assert ((batched > 0) & (batched < 1)).all()
    # P(True) = softmax over the True / False logits at the last position.
    text, images = reranker.render(*pairs[3])
    inputs = reranker.processor(text=[text], images=[Image.open(io.BytesIO(b)).convert("RGB") for b in images],
                                return_tensors="pt")
    with torch.inference_mode():
        logits = reranker.model(**inputs).logits[0, -1]
    want = torch.softmax(torch.stack([logits[reranker.true_id], logits[reranker.false_id]]), 0)[0].item()
    assert batched[3] == pytest.approx(want, abs=1e-5)

    ctx, _ = fake_context()
    queries = [q, Item("who?", Q_IMG, "image,text")]
    cands = [Item(f"wiki text {i}", None, "text") for i in range(5)]
    ranked = np.array([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])
    out = rerank_topk(ctx, reranker, ranked, queries, cands, [6, 6], ["oven", "oven"])
    for before, after in zip(ranked, out):
        assert sorted(after[:3]) == sorted(before[:3]) and (after[3:] == before[3:]).all()
    scores = reranker.score([(6, "oven", queries[0], cands[j]) for j in ranked[0, :3]])
    assert out[0, :3].tolist() == ranked[0, :3][np.argsort(-scores, kind="stable")].tolist()
