"""CIRCO zero-shot composed image retrieval (data-formats.md §10, evaluation.md §5).

A query is the reference image plus its ``relative_caption`` (optionally with ``shared_concept``),
encoded with M-BEIR's CIRR instruction (MM-Embed §5.2); the gallery is COCO 2017 unlabeled
(``image_info_unlabeled2017.json``). The reference image is excluded from its own ranking. Metrics as
CIRCO ``src/evaluation.py``: AP@k = sum_{i<=k} prec@i * rel_i / min(|GT|, k), mAP@5/10/25/50 over
``gt_img_ids``; Recall@k of the single ``target_img_id``; mAP@10 per semantic aspect. The test split
has no ground truth: the top-50 are written as the server's submission file ``{query_id: [ids]}``.
With a reranker (task 7 in its tasks), the top-10 are reranked with the Table 13 CIR prompt.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmtrain.eval.benchmarks import paper
from mmtrain.eval.benchmarks.context import EvalContext, LazyItems
from mmtrain.eval.report import BenchmarkResult, Table, pct
from mmtrain.eval.reranker import rerank_topk

RANKS = (5, 10, 25, 50)
ASPECTS = ("cardinality", "addition", "negation", "direct_addressing", "compare_change",
           "comparative_statement", "statement_with_conjunction", "spatial_relations_background", "viewpoint")
CIR_TASK = 7  # (image, text) -> image, M-BEIR / MM-Embed task 7


def average_precision_at_k(predictions: Sequence[int], gt_ids: Sequence[int], k: int) -> float:
    """CIRCO's AP@k: precision at each relevant position of the top k, summed, over min(|GT|, k)."""
    labels = np.isin(np.asarray(predictions[:k]), np.asarray(list(gt_ids)))
    precisions = np.cumsum(labels) * labels / np.arange(1, len(labels) + 1)
    return float(precisions.sum() / min(len(gt_ids), k))


def circo_metrics(predictions: dict[int, list[int]], annotations: dict[int, dict]) -> dict[str, Any]:
    """mAP@k, Recall@k (target image only) and per-aspect mAP@10 over the predicted queries."""
    aps, recalls, aspects = defaultdict(list), defaultdict(list), defaultdict(list)
    for qid, pred in predictions.items():
        ann = annotations[qid]
        gt = ann["gt_img_ids"]
        for k in RANKS:
            aps[k].append(average_precision_at_k(pred, gt, k))
            recalls[k].append(float(ann["target_img_id"] in pred[:k]))
        for aspect in ann.get("semantic_aspects", []):
            aspects[aspect].append(average_precision_at_k(pred, gt, 10))
    return {"map": {k: float(np.mean(aps[k])) for k in RANKS},
            "recall": {k: float(np.mean(recalls[k])) for k in RANKS},
            "aspect_map10": {a: float(np.mean(aspects[a])) if aspects[a] else None for a in ASPECTS}}


class CircoBenchmark:
    name = "circo"

    def __init__(self, root: str, image_dir: str, image_info: str | None = None, split: str = "val",
                 use_shared_concept: bool = False, instruction: str | None = None, title: str | None = None):
        if split not in ("val", "test"):
            raise ValueError(f"CIRCO split must be val or test, got {split!r}")
        self.root, self.image_dir = Path(root), Path(image_dir)
        self.image_info = Path(image_info) if image_info else self.root / "annotations" / "image_info_unlabeled2017.json"
        self.split, self.use_shared_concept, self.instruction = split, use_shared_concept, instruction
        self.title = title or f"CIRCO {split}"

    def _query_text(self, ann: dict) -> str:
        if self.use_shared_concept and ann.get("shared_concept"):
            return f"{ann['shared_concept']}, {ann['relative_caption']}"
        return ann["relative_caption"]

    def run(self, ctx: EvalContext) -> BenchmarkResult:
        images = json.loads(self.image_info.read_text())["images"]
        gallery_ids = np.array([int(im["id"]) for im in images], dtype=np.int64)
        row_of = {int(i): r for r, i in enumerate(gallery_ids.tolist())}
        gallery = LazyItems([(None, im["file_name"], "image", None, int(im["id"])) for im in images], self.image_dir)
        anns = json.loads((self.root / "annotations" / f"{self.split}.json").read_text())
        queries = LazyItems([(self._query_text(a), images[row_of[int(a["reference_img_id"])]]["file_name"],
                              "image,text", self.instruction, int(a["id"])) for a in anns], self.image_dir)
        c_emb = ctx.encode(gallery, "candidate", "circo/gallery")
        q_emb = ctx.encode(queries, "query", f"circo/{self.split}")
        # One extra result, so that dropping the reference image still leaves 50.
        _, idx = ctx.search(q_emb, c_emb, max(RANKS) + 1)
        depth = min(max(RANKS), len(gallery) - 1)
        idx = _drop_reference(idx, [row_of[int(a["reference_img_id"])] for a in anns], depth)
        runs = {"retrieval": idx}
        if ctx.reranker is not None and CIR_TASK in ctx.reranker.tasks:
            q_items = [queries[i] for i in range(len(queries))]
            runs["rerank"] = rerank_topk(ctx, ctx.reranker, idx, q_items, gallery, [CIR_TASK] * len(anns),
                                         ["circo"] * len(anns))
        predictions = {name: {int(a["id"]): gallery_ids[r].tolist() for a, r in zip(anns, ix)}
                       for name, ix in runs.items()}
        files = {f"submission_{self.split}_{name}.json": json.dumps({str(q): p for q, p in pred.items()}) + "\n"
                 for name, pred in predictions.items()}
        if self.split == "test":  # scored by the CIRCO server
            return BenchmarkResult(self.name, self.title, {"num_queries": len(anns)},
                                   [Table("CIRCO test", ["Note"], [["submission files written; score on the server"]])],
                                   {}, {}, files=files)
        by_id = {int(a["id"]): a for a in anns}
        metrics = {name: circo_metrics(pred, by_id) for name, pred in predictions.items()}
        return self._result(metrics, len(anns), files)

    def _result(self, metrics: dict[str, dict], n: int, files: dict[str, str]) -> BenchmarkResult:
        ret, rr = metrics["retrieval"], metrics.get("rerank")
        rows = [["ours", pct(ret["map"][5]), pct(rr["map"][5]) if rr else None]]
        rows += [[m, *v] for m, v in paper.CIRCO_TABLE4.items()]
        t4 = Table("CIRCO val mAP@5 (MM-Embed Table 4 layout)", ["Model", "Ret.", "+ Rerank"], rows,
                   [f"{n} queries; reference image excluded; rerank = MLLM over the top-10."])
        cols = ["Run", *[f"mAP@{k}" for k in RANKS], *[f"R@{k}" for k in RANKS]]
        full = Table("CIRCO val, all metrics", cols,
                     [[name, *[pct(m["map"][k]) for k in RANKS], *[pct(m["recall"][k]) for k in RANKS]]
                      for name, m in metrics.items()])
        aspects = Table("CIRCO val mAP@10 per semantic aspect", ["Aspect", *metrics],
                        [[a, *[pct(m["aspect_map10"][a]) for m in metrics.values()]] for a in ASPECTS])
        headline = {f"{name}/mAP@{k}": m["map"][k] for name, m in metrics.items() for k in RANKS}
        chart = {f"ours {name}": {f"mAP@{k}": pct(m["map"][k]) for k in RANKS} for name, m in metrics.items()}
        chart["MM-Embed (paper)"] = {"mAP@5": paper.CIRCO_TABLE4["MM-Embed"][0]}
        return BenchmarkResult(self.name, self.title, metrics, [t4, full, aspects], chart, headline, files=files)


def _drop_reference(idx: np.ndarray, reference_rows: list[int], depth: int) -> np.ndarray:
    out = np.empty((len(idx), depth), dtype=np.int64)
    for q, (row, ref) in enumerate(zip(idx, reference_rows)):
        out[q] = row[row != ref][:depth]
    return out
