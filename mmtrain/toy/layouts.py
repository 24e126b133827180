"""The toy world's M-BEIR files written again in MMEB layout and in Tevatron layout.

So the MMEB and Tevatron converters can be trained and evaluated end to end on CPU, with results
comparable to the M-BEIR path. Images are not copied: paths are relative to the toy world's M-BEIR
root, which the converter gets as its image root (``convert_kwargs``).

MMEB (data-formats.md §2, §3): ``train/<ds>_<tag>/original-00000-of-00001.parquet`` (``qry`` = the
pair's first instruction + the query text, with ``<|image_1|>\\n`` first when the query has an image, as
VLM2Vec's data is written; ``pos_text`` / ``pos_image_path`` = the first positive; empty ``neg_*``), and
``eval/<ds>_<tag>/{val,test}-00000-of-00001.parquet`` (``tgt_text`` / ``tgt_img_path``: the first relevant
candidate, then every other candidate of that modality in the split's pool; the query's other relevant
candidates are left out of its row). MMEB has one positive per row, M-BEIR several: that is the one
difference of content (toycap i->t queries have 2 captions; the second one is an unlabelled candidate).

Tevatron (§6.3, id-based form): ``{train,val,test}.jsonl`` rows (``query_id``, ``query_text``,
``query_image``, ``positive_document_ids``, ``negative_document_ids``), ``corpus.jsonl`` (the train pool)
and ``corpus_{val,test}.jsonl`` (each split's pool: ``docid``, ``title``, ``text``, ``image``). Tevatron rows
carry no instruction, so none is written.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from mmtrain.data.mbeir import SPLITS
from mmtrain.data.mbeir_tree import MBeirData, load_mbeir
from mmtrain.io import atomic_dir, is_complete

TAGS = {0: "t2i", 1: "t2t", 2: "t2it", 3: "i2t", 4: "i2i", 6: "it2t", 7: "it2i", 8: "it2it"}
PLACEHOLDER = "<|image_1|>\n"


def _with_placeholder(text: str | None, image: str | None) -> str:
    return (PLACEHOLDER if image else "") + (text or "")


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _write_mmeb(data: MBeirData, out: Path, seed: int) -> None:
    rng = random.Random(seed)
    for split, sp in data.splits.items():
        by_modality: dict[str, list[str]] = {}
        for did, c in sp.pool.items():
            by_modality.setdefault(c.modality, []).append(did)
        for src in sp.sources:
            subset = f"{src.dataset}_{TAGS[src.task_id]}"
            rows = []
            for q in src.queries:
                instruction = q.instructions[0] if q.instructions else ""
                qry = _with_placeholder(f"{instruction} {q.text}".strip(), q.img_path)
                if split == "train":
                    pos = sp.pool[q.pos_dids[0]]
                    rows.append({"qry": qry, "qry_image_path": q.img_path or "",
                                 "pos_text": _with_placeholder(pos.text, pos.img_path),
                                 "pos_image_path": pos.img_path or "", "neg_text": "", "neg_image_path": ""})
                    continue
                first = sp.pool[q.relevant[0]]
                others = [d for d in by_modality[first.modality] if d not in q.relevant]
                rng.shuffle(others)
                cands = [first] + [sp.pool[d] for d in others]
                rows.append({"qry_text": qry, "qry_img_path": q.img_path or "",
                             "tgt_text": [_with_placeholder(c.text, c.img_path) for c in cands],
                             "tgt_img_path": [c.img_path or "" for c in cands]})
            name = "original" if split == "train" else split
            _write_parquet(out / ("train" if split == "train" else "eval") / subset
                           / f"{name}-00000-of-00001.parquet", rows)


def _write_tevatron(data: MBeirData, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for split, sp in data.splits.items():
        corpus = [{"docid": c.did, "title": "", "text": c.text or "", "image": c.img_path}
                  for c in sp.pool.values()]
        name = "corpus.jsonl" if split == "train" else f"corpus_{split}.jsonl"
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in corpus), encoding="utf-8")
        rows = [{"query_id": q.qid, "query_text": q.text, "query_image": q.img_path,
                 "positive_document_ids": q.pos_dids if split == "train" else q.relevant,
                 "negative_document_ids": q.neg_dids if split == "train" else []}
                for src in sp.sources for q in src.queries]
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def convert_kwargs(layout: str, layout_dir: str | Path, mbeir_root: str | Path) -> dict[str, Any]:
    """The converter and its arguments for a written layout (``convert(source, out, **kwargs)``)."""
    d = Path(layout_dir)
    if layout == "mmeb":
        return {"source": "mmeb", "train_root": str(d / "train"), "eval_root": str(d / "eval"),
                "image_root": str(mbeir_root)}
    return {"source": "tevatron", "train": str(d / "train.jsonl"), "val": str(d / "val.jsonl"),
            "test": str(d / "test.jsonl"), "corpus": str(d / "corpus.jsonl"), "dataset": "toy",
            "pools": {s: str(d / f"corpus_{s}.jsonl") for s in ("val", "test")}, "image_root": str(mbeir_root)}


def write_toy_layout(layout: str, toy_world: str | Path, out: str | Path, *, seed: int = 0) -> dict[str, Any]:
    """Write ``layout`` (``mmeb`` | ``tevatron``) of the toy world at ``toy_world`` into ``out``
    (atomically: built beside it, then renamed); return :func:`convert_kwargs`. An existing complete
    ``out`` is kept."""
    if layout not in ("mmeb", "tevatron"):
        raise ValueError(f"layout must be mmeb or tevatron, got {layout!r}")
    mbeir_root = Path(toy_world) / "mbeir"
    out = Path(out).absolute()
    if not is_complete(out):
        data = load_mbeir(mbeir_root, SPLITS, check_images=False)
        try:
            with atomic_dir(out, marker=layout) as tmp:
                _write_mmeb(data, tmp, seed) if layout == "mmeb" else _write_tevatron(data, tmp)
        except FileExistsError:  # another process finished first: keep its copy
            if not is_complete(out):
                raise
    return convert_kwargs(layout, out, mbeir_root)
