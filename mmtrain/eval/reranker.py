"""Zero-shot MLLM reranker (MM-Embed §4.2): an MLLM judges each of a retriever's top-k candidates.

For every (query, candidate) pair the MLLM reads a True/False question built from the paper's Table 13
prompt for the task (recipes.md §9.4); the relevance score is P("True") from a softmax over the logits
of the "True" and "False" tokens at the last position. The top-k of each query is re-sorted by that
score (stable: equal scores keep the retriever's order); ranks below k are untouched.

The prompts are verbatim, including the paper's quirks: tasks 3 and 8 ((i,t) candidates) show no
candidate image; task 7 (composed image retrieval) shows the candidate image and the modification
text but not the reference image; tasks 6/8 have no newline before "Does". Datasets outside Table 13
(toy world, CIRCO) use the prompt of a Table 13 dataset of the same task (``DEFAULT_DATASET``).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmtrain.data.schema import Item

log = logging.getLogger(__name__)

_QA = "Question: <q_txt>\nAnswer: <c_txt>\nDoes the answer correctly answer the question? True or False"
_VQA = "<q_img>\nQuestion:<q_txt>\nAnswer:<c_txt>Does the answer correctly answer the question? True or False"
_CIR = "<c_img>\nCaption:<q_txt>\nDoes the above caption describe the modification of the image? True or False"
# (UniIR task id, M-BEIR dataset) -> MM-Embed Table 13 prompt. Paper task numbers are UniIR id + 1
# for ids 0-4 and equal for 6-8.
RERANK_PROMPTS: dict[tuple[int, str], str] = {
    (0, "visualnews"): "<c_img>\nNews:<q_txt>\nDoes the above News image match the News story? True or False",
    (0, "mscoco"): "<c_img>\nCaption:<q_txt>\nDoes the above daily-life image match the caption? True or False",
    (0, "fashion200k"): "<c_img>\nDescription:<q_txt>\nDoes the above image match the cloth style description? "
                        "True or False",
    (1, "webqa"): _QA, (2, "edis"): _QA, (2, "webqa"): _QA,
    (3, "visualnews"): "<q_img>\nNews:<c_txt>\nDoes the above News image match the News story? True or False",
    (3, "mscoco"): "<q_img>\nCaption:<c_txt>\nDoes the above daily-life image match the caption? True or False",
    (3, "fashion200k"): "<q_img>\nDescription:<c_txt>\nDoes the above image match the cloth style description? "
                        "True or False",
    (4, "nights"): "<q_img>\n<c_img>\nDoes the above two images have the same scene? True or False",
    (6, "oven"): _VQA, (6, "infoseek"): _VQA,
    (7, "fashioniq"): _CIR, (7, "cirr"): _CIR,
    (8, "oven"): _VQA, (8, "infoseek"): _VQA,
}
DEFAULT_DATASET = {0: "mscoco", 1: "webqa", 2: "webqa", 3: "mscoco", 4: "nights", 6: "oven", 7: "cirr", 8: "oven"}
MULTIMODAL_QUERY_TASKS = (6, 7, 8)  # MM-Embed Tables 3 and 7: reranking helps only these by default


def prompt_for(task_id: int, dataset: str) -> str:
    """The Table 13 prompt of (task, dataset), or of the task's default dataset."""
    key = (task_id, dataset.lower())
    if key not in RERANK_PROMPTS:
        if task_id not in DEFAULT_DATASET:
            raise KeyError(f"no rerank prompt for task {task_id}")
        key = (task_id, DEFAULT_DATASET[task_id])
    return RERANK_PROMPTS[key]


def build_prompt(template: str, query: Item, cand: Item, image_token: str) -> tuple[str, list[bytes]]:
    """Fill a Table 13 template: text placeholders get the texts (the query text without its
    instruction), image placeholders become ``image_token`` in reading order, with the image bytes
    returned in the same order. A placeholder whose image is missing is dropped."""
    images: list[bytes] = []
    text = template
    # Image placeholders in the order they appear (the images must follow that order).
    for name, item in sorted((("<q_img>", query), ("<c_img>", cand)), key=lambda p: template.find(p[0])):
        if name not in text:
            continue
        if item.image is None:
            text = text.replace(name + "\n", "").replace(name, "")
            continue
        images.append(item.image)
        text = text.replace(name, image_token)
    text = text.replace("<q_txt>", query.text or "").replace("<c_txt>", cand.text or "")
    return text, images


class MLLMReranker:
    """An image-text-to-text model from a hub id or local directory, scoring (query, candidate) pairs.

    ``prompt_template`` wraps the Table 13 prompt in the model's chat format, e.g.
    ``"[INST] {prompt} [/INST]"`` for llava-v1.6-mistral; ``"{prompt}"`` leaves it raw.
    ``true_token`` / ``false_token``: the answer words; their first token ids are compared.
    """

    def __init__(self, model: str, *, prompt_template: str = "{prompt}", true_token: str = "True",
                 false_token: str = "False", batch_size: int = 8, top_k: int = 10,
                 tasks: Sequence[int] = MULTIMODAL_QUERY_TASKS, torch_dtype: str = "float32",
                 device: str | torch.device = "cpu", trust_remote_code: bool = False):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if "{prompt}" not in prompt_template:
            raise ValueError("prompt_template must contain '{prompt}'")
        self.name = model
        self.prompt_template = prompt_template
        self.batch_size, self.top_k, self.tasks = batch_size, top_k, tuple(tasks)
        self.device = torch.device(device)
        self.processor = AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
        # Left padding: the last position of every row is its last real token, where the answer starts.
        self.processor.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(
            model, dtype=getattr(torch, torch_dtype), trust_remote_code=trust_remote_code).to(self.device).eval()
        self.image_token = getattr(self.processor, "image_token", "<image>")
        tok = self.processor.tokenizer
        self.true_id = tok.encode(true_token, add_special_tokens=False)[0]
        self.false_id = tok.encode(false_token, add_special_tokens=False)[0]
        if self.true_id == self.false_id:
            raise ValueError(f"{true_token!r} and {false_token!r} start with the same token")

    def config(self) -> dict[str, Any]:
        return {"model": self.name, "prompt_template": self.prompt_template, "top_k": self.top_k,
                "tasks": list(self.tasks), "true_id": self.true_id, "false_id": self.false_id}

    def render(self, task_id: int, dataset: str, query: Item, cand: Item) -> tuple[str, list[bytes]]:
        text, images = build_prompt(prompt_for(task_id, dataset), query, cand, self.image_token)
        return self.prompt_template.format(prompt=text), images

    @torch.inference_mode()
    def score(self, pairs: Sequence[tuple[int, str, Item, Item]]) -> np.ndarray:
        """P("True") for each (task id, dataset, query, candidate), in batches."""
        out = np.empty(len(pairs), dtype=np.float32)
        for start in range(0, len(pairs), self.batch_size):
            chunk = [self.render(*p) for p in pairs[start:start + self.batch_size]]
            images = [Image.open(io.BytesIO(b)).convert("RGB") for _, imgs in chunk for b in imgs]
            batch = self.processor(text=[t for t, _ in chunk], images=images or None,
                                   return_tensors="pt", padding=True)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            # Positions count real tokens only, so a left-padded row scores as it would alone.
            position_ids = (batch["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
            logits = self.model(**batch, position_ids=position_ids).logits[:, -1].float()
            pair = torch.stack([logits[:, self.true_id], logits[:, self.false_id]], dim=-1)
            out[start:start + len(chunk)] = torch.softmax(pair, dim=-1)[:, 0].cpu().numpy()
        return out


def rerank_rows(ranked: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Re-sort the first ``scores.shape[1]`` columns of each row of ``ranked`` by descending score;
    equal scores keep their retrieval order; later columns stay."""
    k = scores.shape[1]
    order = np.argsort(-scores, axis=1, kind="stable")
    out = ranked.copy()
    out[:, :k] = np.take_along_axis(ranked[:, :k], order, axis=1)
    return out


def rerank_topk(ctx: Any, reranker: MLLMReranker, ranked: np.ndarray, queries: Sequence[Item],
                candidates: Sequence[Item], task_ids: Sequence[int], datasets: Sequence[str]) -> np.ndarray:
    """Rerank the top-k of each row of ``ranked`` (indices into ``candidates``); all ranks score a
    shard of the (query, candidate) pairs (``ctx.map_sharded``), so every rank gets the new order."""
    k = min(reranker.top_k, ranked.shape[1])
    pairs = [(r, j) for r in range(len(ranked)) for j in range(k)]

    def score(idx: np.ndarray) -> np.ndarray:
        sel = [pairs[i] for i in idx]
        return reranker.score([(task_ids[r], datasets[r], queries[r], candidates[int(ranked[r, j])])
                               for r, j in sel])

    scores = ctx.map_sharded(len(pairs), score).reshape(len(ranked), k)
    return rerank_rows(ranked, scores)
