"""MTEB retrieval (and mteb's image tasks, MIEB) through the ``mteb`` package (evaluation.md §3).

``MtebEncoder`` implements mteb v2's encoder protocol (``encode(inputs: DataLoader[BatchedInput], *,
task_metadata, hf_split, hf_subset, prompt_type)``) over any mmtrain backbone: each batch's ``text`` /
``image`` columns become ``Item``s (text+image fused, image only, or text only, as the batch has), and
queries get the MM-Embed Table 11 instruction of the task (recipes.md §9.1-9.2), documents none.
Encoding goes through ``EvalContext.encode``: sharded over ranks and cached. Every rank runs the same
mteb evaluation (the collectives need it); rank 0 reports. mteb scores it: nDCG@10 main score per task.

``data_root`` points mteb's task definitions at local copies in the Hugging Face layout they load
(``<data_root>/<task name>/``: README.md ``configs`` for ``corpus``, ``queries`` and ``default`` qrels).
``beir_to_hf_layout`` and ``mbeir_pair_to_hf_layout`` write that layout from a BEIR or M-BEIR tree.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mmtrain.data.schema import Item, modality_of
from mmtrain.eval.benchmarks import paper
from mmtrain.eval.benchmarks.context import EvalContext
from mmtrain.eval.report import BenchmarkResult, Table, pct

log = logging.getLogger(__name__)

# MM-Embed Table 11, MTEB rows (from NV-Embed), keyed by mteb task name.
MTEB_INSTRUCTIONS = {
    "ArguAna": "Given a claim, find documents that refute the claim",
    "ClimateFEVER": "Given a claim about climate change, retrieve documents that support or refute the claim",
    "CQADupstack": "Given a question, retrieve detailed question descriptions from StackExchange that are "
                   "duplicates to the given question",
    "DBPedia": "Given a query, retrieve relevant entity descriptions from DBPedia",
    "FEVER": "Given a claim, retrieve documents that support or refute the claim",
    "FiQA2018": "Given a financial question, retrieve user replies that best answer the question",
    "HotpotQA": "Given a multi-hop question, retrieve documents that can help answer the question",
    "MSMARCO": "Given a web search query, retrieve relevant passages that answer the query",
    "NFCorpus": "Given a question, retrieve relevant documents that best answer the question",
    "NQ": "Given a question, retrieve Wikipedia passages that answer the question",
    "QuoraRetrieval": "Find questions that have the same meaning as the input question",
    "SCIDOCS": "Given a scientific paper title, retrieve paper abstracts that are cited by the given paper",
    "SciFact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "Touche2020": "Given a question, retrieve detailed and persuasive arguments that answer the question",
    "TRECCOVID": "Given a query on COVID-19, retrieve documents that answer the query",
}
# MM-Embed Table 11, M-BEIR rows, for mteb's tasks built from M-BEIR pairs (MIEB).
MIEB_INSTRUCTIONS = {
    "VisualNewsT2IRetrieval": "Identify the news-related image in line with the described event.",
    "MSCOCOT2IRetrieval": "Find me an everyday image that matches the given caption.",
    "Fashion200kT2IRetrieval": "Based on the following fashion description, retrieve the best matching image.",
    "WebQAT2TRetrieval": "Retrieve passages from Wikipedia that provide answers to the following question.",
    "EDIST2ITRetrieval": "Find a news image that matches the provided caption.",
    "WebQAT2ITRetrieval": "Find a Wikipedia image that answers this question.",
    "VisualNewsI2TRetrieval": "Find a caption for the news in the given photo.",
    "MSCOCOI2TRetrieval": "Find an image caption describing the following everyday image.",
    "Fashion200kI2TRetrieval": "Find a product description for the fashion item in the image.",
    "NIGHTSI2IRetrieval": "Find a day-to-day image that looks similar to the provided image.",
    "OVENIT2TRetrieval": "Retrieve a Wikipedia paragraph that provides an answer to the given query about the image.",
    "InfoSeekIT2TRetrieval": "Retrieve a Wikipedia paragraph that provides an answer to the given query about the image.",
    "FashionIQIT2IRetrieval": "Find a fashion image that aligns with the reference image and style note.",
    "CIRRIT2IRetrieval": "Retrieve a day-to-day image that aligns with the modification instructions of the "
                         "provided image.",
    "OVENIT2ITRetrieval": "Retrieve a Wikipedia image-description pair that provides evidence for the question of "
                          "this image.",
    "InfoSeekIT2ITRetrieval": "Retrieve a Wikipedia image-description pair that provides evidence for the question "
                              "of this image.",
}


def task_instruction(name: str, task_prompt: Any = None) -> str | None:
    """The query instruction of an mteb task: Table 11, else the task's own query prompt."""
    if name in MTEB_INSTRUCTIONS:
        return MTEB_INSTRUCTIONS[name]
    if name.startswith("CQADupstack"):  # 12 sub-forum tasks averaged into CQADupstackRetrieval
        return MTEB_INSTRUCTIONS["CQADupstack"]
    if name in MIEB_INSTRUCTIONS:
        return MIEB_INSTRUCTIONS[name]
    if isinstance(task_prompt, dict):
        return task_prompt.get("query")
    return task_prompt or None


def _image_bytes(image: Any) -> bytes | None:
    if image is None:
        return None
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")  # lossless: the backbone's processor sees mteb's pixels
    return buf.getvalue()


def _encoder_class() -> type:
    """Built on first use: importing mteb takes seconds, and only this benchmark needs it."""
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction
    from mteb.types import PromptType

    class MtebEncoder(AbsEncoder):
        def __init__(self, ctx: EvalContext, name: str = "mmtrain"):
            self.ctx = ctx
            self.mteb_model_meta = ModelMeta.create_empty(overwrites=dict(
                name=f"mmtrain/{name}", revision=ctx.model_fp[:12], similarity_fn_name=ScoringFunction.COSINE,
                modalities=["text", "image"], use_instructions=True, framework=["PyTorch"]))

        def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str,
                   prompt_type: Any = None, **kwargs: Any) -> np.ndarray:
            features = inputs.dataset.features
            has_text, has_image = "text" in features, "image" in features
            is_query = prompt_type == PromptType.query
            instruction = task_instruction(task_metadata.name, task_metadata.prompt) if is_query else None
            items = []
            for batch in inputs:
                # Queries: the raw "query" column (mteb's "text" may have its own instruction appended).
                texts = batch.get("query", batch.get("text")) if has_text else None
                n = len(texts) if texts is not None else len(batch["image"])
                for i in range(n):
                    text = (texts[i] or None) if texts is not None else None
                    image = _image_bytes(batch["image"][i]) if has_image else None
                    items.append(Item(text, image, modality_of(text, image), instruction))
            side = "query" if is_query else "candidate"
            return self.ctx.encode(items, side, f"mteb/{task_metadata.name}/{hf_subset}/{hf_split}/{side}")

    return MtebEncoder


def make_mteb_encoder(ctx: EvalContext, name: str = "mmtrain") -> Any:
    return _encoder_class()(ctx, name)


class MtebBenchmark:
    name = "mteb"

    def __init__(self, tasks: list[str], data_root: str | None = None, eval_splits: list[str] | None = None,
                 batch_size: int = 64, title: str | None = None):
        self.tasks, self.data_root = list(tasks), Path(data_root) if data_root else None
        self.eval_splits, self.batch_size = eval_splits, batch_size
        self.title = title or "MTEB retrieval (nDCG@10)"

    def _tasks(self) -> list[Any]:
        import mteb

        tasks = list(mteb.get_tasks(tasks=self.tasks, eval_splits=self.eval_splits))
        if self.data_root is not None:
            for t in tasks:
                local = self.data_root / t.metadata.name
                if local.is_dir():
                    # A copy: the metadata object is shared by every instance of the task class.
                    t.metadata = t.metadata.model_copy(deep=True)
                    t.metadata.dataset["path"] = str(local)
                else:
                    log.warning("%s: no local copy under %s, mteb will load it from the Hub", t.metadata.name,
                                self.data_root)
        return tasks

    def _datasets_cache(self, ctx: EvalContext) -> Path | None:
        """A ``datasets`` cache directory keyed by the local data's files. ``datasets`` (5.2) caches a
        local directory by its name and config only, so an edited or regenerated copy at the same
        name would silently load the old tables."""
        if self.data_root is None:
            return None
        h = hashlib.sha256()
        for f in sorted(p for p in self.data_root.rglob("*") if p.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(self.data_root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        base = ctx.cache.root if ctx.cache is not None else Path(tempfile.gettempdir()) / "mmtrain"
        return base / "hf_datasets" / h.hexdigest()[:16]

    def run(self, ctx: EvalContext) -> BenchmarkResult:
        import datasets
        import mteb

        cache_dir, previous = self._datasets_cache(ctx), datasets.config.HF_DATASETS_CACHE
        if cache_dir is not None:
            datasets.config.HF_DATASETS_CACHE = cache_dir
        try:
            results = mteb.evaluate(make_mteb_encoder(ctx), tasks=self._tasks(), cache=None, show_progress_bar=False,
                                    overwrite_strategy="always", encode_kwargs={"batch_size": self.batch_size})
        finally:
            datasets.config.HF_DATASETS_CACHE = previous
        scores: dict[str, dict[str, Any]] = {}
        for tr in results.task_results:
            # JSON has no NaN (mteb reports NaN for some calibration metrics on tiny sets).
            split_scores = {split: [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                     for k, v in s.items() if isinstance(v, (int, float, str))} for s in subsets]
                            for split, subsets in tr.scores.items()}
            main = float(np.mean([s["main_score"] for subsets in tr.scores.values() for s in subsets]))
            scores[tr.task_name] = {"main_score": main, "scores": split_scores}
        return self._result(scores)

    def _result(self, scores: dict[str, dict[str, Any]]) -> BenchmarkResult:
        cols = list(paper.MTEB_COLUMNS)
        text = {n: s["main_score"] for n, s in scores.items() if n in cols}
        others = {n: s["main_score"] for n, s in scores.items() if n not in cols}
        rows: list[list[Any]] = [["ours", *[pct(text.get(c)) for c in cols],
                                  pct(float(np.mean(list(text.values())))) if len(text) == len(cols) else None]]
        rows += [[m, *v, paper.MTEB_TABLE9_AVG[m]] for m, v in paper.MTEB_TABLE9.items()]
        tables = [Table("MTEB retrieval, nDCG@10 (MM-Embed Table 9 layout)", ["Model", *cols, "Avg"], rows,
                        [f"ours: {len(text)} of the 15 tasks run; Avg only when all 15 ran."])]
        if others:
            tables.append(Table("Other mteb tasks (main score)", ["Task", "ours"],
                                [[n, pct(v)] for n, v in others.items()]))
        chart = {"ours": {n: pct(s["main_score"]) for n, s in scores.items()},
                 "MM-Embed (paper)": {c: v for c, v in zip(cols, paper.MTEB_TABLE9["MM-Embed"]) if c in text}}
        return BenchmarkResult(self.name, self.title, {"tasks": scores}, tables, chart,
                               {f"{n}/main_score": s["main_score"] for n, s in scores.items()})


# ---------------------------------------------------------------- local Hugging Face layouts
def _readme(configs: dict[str, tuple[str, str]]) -> str:
    lines = ["---", "configs:"]
    for name, (split, path) in configs.items():
        lines += [f"- config_name: {name}", "  data_files:", f"  - split: {split}", f"    path: {path}"]
    return "\n".join(lines + ["---", ""])


def beir_to_hf_layout(beir_dir: str | Path, out_dir: str | Path, split: str = "test") -> Path:
    """A BEIR tree (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) in the layout of mteb's
    Hub mirrors: configs ``corpus`` / ``queries`` / ``default`` (qrels as jsonl: one builder per repo)."""
    src, out = Path(beir_dir), Path(out_dir)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        (out / name).write_bytes((src / name).read_bytes())
    lines = (src / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
    with open(out / "qrels" / f"{split}.jsonl", "w", encoding="utf-8") as f:
        for line in lines[1:]:  # header: query-id corpus-id score
            q, d, s = line.split("\t")
            f.write(json.dumps({"query-id": q, "corpus-id": d, "score": int(s)}) + "\n")
    (out / "README.md").write_text(_readme({"corpus": ("corpus", "corpus.jsonl"), "queries": ("queries", "queries.jsonl"),
                                            "default": (split, f"qrels/{split}.jsonl")}))
    return out


def mbeir_pair_to_hf_layout(mbeir_root: str | Path, dataset: str, task_id: int, out_dir: str | Path,
                            split: str = "test") -> Path:
    """One M-BEIR pair (queries, local pool, qrels) as mteb's ``mteb/mbeir_<pair>`` datasets hold it:
    parquet with ``id``, ``modality``, ``text`` and an ``image`` column (bytes; None where absent)."""
    from datasets import Dataset, Features, Value
    from datasets import Image as HFImage

    from mmtrain.data.mbeir import local_pool_path, qrels_path, read_pool, read_qrels, read_queries

    root, out = Path(mbeir_root), Path(out_dir)
    features = Features({"id": Value("string"), "modality": Value("string"), "text": Value("string"),
                         "image": HFImage()})

    def table(rows: list[tuple[str, str, str | None, str | None]]) -> Any:
        return Dataset.from_dict({"id": [r[0] for r in rows], "modality": [r[1] for r in rows],
                                  "text": [r[2] for r in rows],
                                  "image": [{"bytes": (root / r[3]).read_bytes(), "path": None} if r[3] else None
                                            for r in rows]}, features=features)

    pool = read_pool(local_pool_path(root, dataset, task_id, split))
    queries = read_queries(root / "query" / split / f"mbeir_{dataset}_task{task_id}_{split}.jsonl")
    qrels = read_qrels(qrels_path(root, dataset, task_id, split))
    for name, rows in (("corpus", [(c.did, c.modality, c.text, c.img_path) for c in pool.values()]),
                       ("queries", [(q.qid, q.modality, q.text or None, q.img_path) for q in queries])):
        (out / name).mkdir(parents=True, exist_ok=True)
        table(rows).to_parquet(str(out / name / f"{split}.parquet"))
    qrel_rows = [{"query-id": q, "corpus-id": d, "score": 1} for q, ds in qrels.items() for d in ds]
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    Dataset.from_list(qrel_rows).to_parquet(str(out / "qrels" / f"{split}.parquet"))
    (out / "README.md").write_text(_readme({"corpus": (split, f"corpus/{split}.parquet"),
                                            "queries": (split, f"queries/{split}.parquet"),
                                            "default": (split, f"qrels/{split}.parquet")}))
    return out

