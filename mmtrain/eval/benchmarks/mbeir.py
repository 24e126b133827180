"""M-BEIR (UniIR layout, data-formats.md §1): the (dataset, task) pairs against their local pools and
the global (union) pool, scored as UniIR scores them (evaluation.md §1).

- Queries ``query/<split>/mbeir_<pair>_<split>.jsonl``, relevance from the qrels (relevance > 0),
  deterministic instructions (index 0, or a seeded per-query choice that is recorded).
- Pools: ``cand_pool/local/...`` per pair (MSCOCO's ``_test_cand_pool`` special case) and
  ``cand_pool/global/mbeir_union_<split>_cand_pool.jsonl``. The global pool is encoded once; a local
  pool whose candidates are all in it reuses those rows instead of encoding again.
- Every qrel target must be in the searched pool (``missing_qrels``: ``error``; ``keep`` = UniIR's
  behaviour, the unreachable target stays relevant and counts as a miss; ``drop`` = remove it, and a
  query left without targets). The counts are recorded either way.
- Recall@k is UniIR's hit rate; headline R@5 (R@10 for Fashion200K / FashionIQ); Avg. All, Single-
  and Multi-modal Qry group means; M.A.@1 (``mmtrain.eval.metrics``).
- Writes UniIR's TSV columns (``TaskID Task Dataset Split Metric CandPool Value UnionPool UnionValue``)
  and optionally run files (``qid Q0 did rank score run_id task_id``).
- With a reranker: the top-k of the tasks it covers is reranked, retrieval and reranked side by side.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmtrain.data.mbeir import (INSTRUCTIONS_FILE, discover_query_files, instruction_key, local_pool_path, pool_path,
                                qrels_path, read_instructions, read_pool, read_qrels, read_queries)
from mmtrain.data.schema import TASK_NAMES, TASKS, EvalQuery, Item, hash_did, hash_qid
from mmtrain.eval.benchmarks import paper
from mmtrain.eval.benchmarks.context import EvalContext, LazyItems
from mmtrain.eval.metrics import PairResult, evaluate_rankings, headline_k, hit_rate_at_k, summarize
from mmtrain.eval.report import BenchmarkResult, Table, pct
from mmtrain.eval.reranker import rerank_topk
from mmtrain.io import file_sha256

log = logging.getLogger(__name__)
UNIIR_R10_PAIRS = {"fashion200k_task0", "fashion200k_task3", "fashioniq_task7"}  # metric list R@10/20/50
ABSENT = "absent"  # modality placeholder of a qrel target kept under missing_qrels=keep (never retrieved)


class Pair:
    """One (dataset, task) pair of a split: its queries as items and EvalQuery records."""

    def __init__(self, name: str, dataset: str, task_id: int, items: LazyItems, queries: list[EvalQuery],
                 files: list[Path]):
        self.name, self.dataset, self.task_id = name, dataset, task_id
        self.items, self.queries, self.files = items, queries, files


@dataclass
class Pool:
    """A searched candidate pool: its file, items (pool order), string dids and embeddings."""

    path: Path
    items: LazyItems
    dids: list[str]
    emb: np.ndarray


@dataclass
class _Collected:
    """What the per-pair scoring accumulates over pools."""

    results: dict[str, list[PairResult]] = field(default_factory=dict)
    extra_cutoffs: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    missing: dict[str, dict[str, int]] = field(default_factory=dict)
    pool_files: dict[str, dict[str, str]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


class MBeirBenchmark:
    name = "mbeir"

    def __init__(self, root: str, split: str = "test", pools: tuple[str, ...] | list[str] = ("local", "global"),
                 pairs: list[str] | None = None, instruction: str = "first", instruction_seed: int = 0,
                 ks: tuple[int, ...] | list[int] = (1, 5, 10), missing_qrels: str = "error",
                 write_run_files: bool = False, run_file_depth: int = 50, title: str | None = None):
        if instruction not in ("first", "seeded"):
            raise ValueError(f"instruction must be 'first' or 'seeded', got {instruction!r}")
        if missing_qrels not in ("error", "keep", "drop"):
            raise ValueError(f"missing_qrels must be error, keep or drop, got {missing_qrels!r}")
        if not set(pools) <= {"local", "global"} or not pools:
            raise ValueError(f"pools must be a non-empty subset of [local, global], got {list(pools)}")
        self.root, self.split = Path(root), split
        self.pools = tuple(pools)
        self.pair_filter = set(pairs) if pairs else None
        self.instruction, self.instruction_seed = instruction, instruction_seed
        self.ks = tuple(sorted(set(ks)))
        self.missing_qrels = missing_qrels
        self.write_run_files, self.run_file_depth = write_run_files, run_file_depth
        self.title = title or f"M-BEIR {split}"

    # ------------------------------------------------------------ loading
    def _instruction(self, prompts: list[str], qid: str) -> str | None:
        if not prompts:
            return None
        if self.instruction == "first":
            return prompts[0]
        return random.Random(f"{self.instruction_seed}:{qid}").choice(prompts)

    def load_pairs(self) -> list[Pair]:
        prompts = read_instructions(self.root / INSTRUCTIONS_FILE)
        out = []
        for dataset, task_id, path in discover_query_files(self.root, self.split):
            name = f"{dataset}_task{task_id}"
            if self.pair_filter is not None and name not in self.pair_filter:
                continue
            qrels_file = qrels_path(self.root, dataset, task_id, self.split)
            qrels = read_qrels(qrels_file)
            c_mod = TASKS[task_id][1]
            rows, queries = [], []
            for q in read_queries(path):
                relevant = qrels.get(q.qid, [])
                if not relevant:
                    raise ValueError(f"{path}: query {q.qid} has no qrels row with relevance > 0")
                instr = self._instruction(prompts.get(instruction_key(q.dataset_id, q.modality, c_mod), []), q.qid)
                rows.append((q.text or None, q.img_path, q.modality, instr, hash_qid(q.qid)))
                queries.append(EvalQuery(Item(q.text or None, None, q.modality, instr, hash_qid(q.qid)),
                                         [hash_did(d) for d in relevant], task_id, dataset, q.dataset_id, q.qid))
            out.append(Pair(name, dataset, task_id, LazyItems(rows, self.root), queries, [path, qrels_file]))
        if not out:
            raise FileNotFoundError(f"no query files for split {self.split!r} under {self.root / 'query'}"
                                    + (f" matching {sorted(self.pair_filter)}" if self.pair_filter else ""))
        return out

    def _pool(self, ctx: EvalContext, path: Path, name: str, reuse: Pool | None = None) -> Pool:
        """A candidate pool with its embeddings; rows of ``reuse`` (the global pool) when it holds every
        candidate unchanged (UniIR builds the union pool from the local embeddings), else encoded."""
        if not path.is_file():
            raise FileNotFoundError(f"candidate pool {path} not found")
        records = read_pool(path)
        items = LazyItems([(c.text, c.img_path, c.modality, None, hash_did(c.did)) for c in records.values()], self.root)
        if reuse is not None:
            row = {r[4]: i for i, r in enumerate(reuse.items.rows)}
            if all(r[4] in row and reuse.items.rows[row[r[4]]][:3] == r[:3] for r in items.rows):
                return Pool(path, items, list(records), reuse.emb[[row[r[4]] for r in items.rows]])
        return Pool(path, items, list(records), ctx.encode(items, "candidate", f"mbeir/{self.split}/{name}"))

    def _check_qrels(self, pair: Pair, dids: set[int], pool: str) -> tuple[list[EvalQuery], dict[int, str], int]:
        """Apply the missing-qrels policy; returns (queries, extra modality entries, #missing)."""
        missing = [(q.qid, d) for q in pair.queries for d in q.relevant if d not in dids]
        if missing and self.missing_qrels == "error":
            raise ValueError(f"{pair.name}: {len(missing)} qrel targets are not in the {pool} pool "
                             f"(e.g. {missing[:3]} as (qid, hashed did)); every target must be searchable "
                             f"(evaluation.md §0). Set eval.missing_qrels=keep (UniIR: count as misses) or drop.")
        if not missing or self.missing_qrels == "keep":
            return pair.queries, {d: ABSENT for _, d in missing}, len(missing)
        kept = []
        for q in pair.queries:
            rel = [d for d in q.relevant if d in dids]
            if rel:
                kept.append(EvalQuery(q.item, rel, q.task_id, q.dataset, q.dataset_id, q.qid))
        return kept, {}, len(missing)

    def _depth(self, pairs: list[Pair], rerank_k: int) -> int:
        extra = [50] if any(p.name in UNIIR_R10_PAIRS for p in pairs) else []
        return max([*self.ks, *extra, rerank_k, *(headline_k(p.dataset) for p in pairs),
                    self.run_file_depth if self.write_run_files else 1])

    def run(self, ctx: EvalContext) -> BenchmarkResult:
        pairs = self.load_pairs()
        depth = self._depth(pairs, ctx.reranker.top_k if ctx.reranker is not None else 1)
        q_emb = {p.name: ctx.encode(p.items, "query", f"mbeir/{self.split}/{p.name}") for p in pairs}
        glob = self._pool(ctx, pool_path(self.root, self.split), "global") if "global" in self.pools else None
        out = _Collected()
        for pool in self.pools:
            for p in pairs:
                cands = glob if pool == "global" else self._pool(
                    ctx, local_pool_path(self.root, p.dataset, p.task_id, self.split), f"local/{p.name}", glob)
                out.pool_files.setdefault(pool, {})[p.name] = str(cands.path)
                rerank = ctx.reranker is not None and p.task_id in ctx.reranker.tasks and pool == self.pools[-1]
                self._score(ctx, p, pool, cands, q_emb[p.name], depth, rerank, out)
        local_names = {n: Path(f).stem for n, f in out.pool_files.get("local", {}).items()}
        out.files["eval_results.tsv"] = _uniir_tsv(out.results, out.extra_cutoffs, self.split, local_names)
        meta = {"split": self.split, "instruction": self.instruction, "instruction_seed": self.instruction_seed,
                "missing_qrels_policy": self.missing_qrels, "missing_qrels": out.missing,
                "pool_files": out.pool_files,
                "files_sha256": self._hashes(pairs, out.pool_files) if ctx.is_global_zero else {}}
        return self._result(out.results, meta, out.files)

    def _score(self, ctx: EvalContext, p: Pair, pool: str, cands: Pool, q_emb: np.ndarray, depth: int,
               rerank: bool, out: _Collected) -> None:
        """Search one pair's queries in one pool and record its metrics (and reranked metrics)."""
        ids = np.array([hash_did(d) for d in cands.dids], dtype=np.int64)
        queries, absent, n_missing = self._check_qrels(p, set(ids.tolist()), pool)
        out.missing.setdefault(pool, {})[p.name] = n_missing
        kept_qids = {q.qid for q in queries}
        keep = [i for i, q in enumerate(p.queries) if q.qid in kept_qids]
        modality_by_id = dict(zip(ids.tolist(), (r[2] for r in cands.items.rows))) | absent
        scores, idx = ctx.search(q_emb[keep], cands.emb, depth)
        ranked = ids[idx]
        out.results.setdefault(pool, []).extend(evaluate_rankings(ranked, queries, modality_by_id, len(ids), self.ks))
        relevant = [set(q.relevant) for q in queries]
        out.extra_cutoffs.setdefault(pool, {})[p.name] = {
            k: float(hit_rate_at_k(ranked, relevant, min(k, ranked.shape[1])).mean())
            for k in (10, 20, 50) if p.name in UNIIR_R10_PAIRS}
        if self.write_run_files and ctx.is_global_zero:
            out.files[f"runs/{pool}/{p.name}.run"] = _run_file(queries, cands.dids, idx, scores, p.task_id,
                                                               self.run_file_depth)
        if rerank:
            new = rerank_topk(ctx, ctx.reranker, idx, [p.items[i] for i in keep], cands.items,
                              [p.task_id] * len(keep), [p.dataset] * len(keep))
            out.results.setdefault(f"{pool}_rerank", []).extend(
                evaluate_rankings(ids[new], queries, modality_by_id, len(ids), self.ks))

    def _hashes(self, pairs: list[Pair], pool_files: dict[str, dict[str, str]]) -> dict[str, str]:
        """SHA-256 of every query, qrels and pool file read (evaluation.md §0: record pool hashes)."""
        files = dict.fromkeys([f for p in pairs for f in p.files]
                              + [Path(f) for per_pool in pool_files.values() for f in per_pool.values()])
        return {str(f.relative_to(self.root)): file_sha256(f) for f in files}

    # ------------------------------------------------------------ report
    def _result(self, results: dict[str, list[PairResult]], meta: dict, files: dict[str, str]) -> BenchmarkResult:
        summaries = {pool: summarize(res) for pool, res in results.items()}
        metrics = {"pools": {pool: {"pairs": [r.to_dict() for r in res],
                                    "summary": {**s, "recall": {str(k): v for k, v in s["recall"].items()}}}
                             for (pool, res), s in zip(results.items(), summaries.values())}, **meta}
        headline = {}
        for pool, s in summaries.items():
            for key in ("headline", "single_modal_query", "multi_modal_query", "modality_acc"):
                if s[key] is not None:
                    headline[f"{pool}/{key}"] = s[key]
        chart = {f"ours ({pool})": {r.pair: pct(r.headline) for r in res} for pool, res in results.items()}
        if any(r.pair in paper.MBEIR_TABLE1 for res in results.values() for r in res):
            for model in ("CLIP_SF rand", "MM-Embed"):
                col = paper.MBEIR_MODELS.index(model)
                chart[f"{model} (paper)"] = {k: v[2][col] for k, v in paper.MBEIR_TABLE1.items()}
        return BenchmarkResult(self.name, self.title, metrics, mbeir_tables(results, summaries), chart,
                               headline, pair_reports=results, files=files)


def mbeir_tables(results: dict[str, list[PairResult]], summaries: dict[str, dict]) -> list[Table]:
    """MM-Embed Table 1 layout (task, dataset, headline metric), our pools first, then the paper's
    columns for the pairs the paper reports; Table 3 layout for reranking."""
    pools = [p for p in results if not p.endswith("_rerank")]
    by_pool = {pool: {r.pair: r for r in res} for pool, res in results.items()}
    names = list(dict.fromkeys(r.pair for pool in pools for r in results[pool]))
    first_of = {n: next(by_pool[p][n] for p in pools if n in by_pool[p]) for n in names}
    others = sorted((n for n in names if n not in paper.MBEIR_TABLE1), key=lambda n: (first_of[n].task_id, n))
    in_paper = [n for n in paper.MBEIR_TABLE1 if n in names] + others
    with_paper = any(n in paper.MBEIR_TABLE1 for n in names)
    columns = ["Task", "Dataset", "Metric", *[f"ours {p}" for p in pools], *[f"M.A.@1 {p}" for p in pools]]
    columns += list(paper.MBEIR_MODELS) if with_paper else []
    rows: list[list[Any]] = []
    for n in in_paper:
        first = first_of[n]
        task_no = first.task_id + 1 if first.task_id <= 4 else first.task_id  # MM-Embed numbering
        row: list[Any] = [f"{task_no}. {first.task} [{first.task_id}]", first.dataset, f"R@{first.headline_k}"]
        row += [pct(by_pool[p][n].headline) if n in by_pool[p] else None for p in pools]
        row += [pct(by_pool[p][n].modality_acc) if n in by_pool[p] else None for p in pools]
        if with_paper:
            row += list(paper.MBEIR_TABLE1[n][2]) if n in paper.MBEIR_TABLE1 else [None] * len(paper.MBEIR_MODELS)
        rows.append(row)
    for label, key, i in (("Avg. All", "headline", 0), ("Single-modal Qry", "single_modal_query", 1),
                          ("Multi-modal Qry", "multi_modal_query", 2)):
        row = ["", label, ""] + [pct(summaries[p][key]) for p in pools]
        row += [pct(summaries[p]["modality_acc"]) if i == 0 else None for p in pools]
        if with_paper:
            row += [paper.MBEIR_TABLE1_AVERAGES[m][i] for m in paper.MBEIR_MODELS]
        rows.append(row)
    notes = ["Recall = UniIR hit rate (%); headline R@5, R@10 for Fashion200K and FashionIQ. Task numbers as "
             "MM-Embed (UniIR id in brackets)." + (" Paper columns: MM-Embed Table 1, global 5.6M pool."
                                                   if with_paper else "")]
    if with_paper and len(names) < len(paper.MBEIR_TABLE1):
        notes.append(f"Only {len(names)} of the paper's 16 pairs were evaluated: our averages cover those only.")
    tables = [Table("M-BEIR (MM-Embed Table 1 layout)", columns, rows, notes)]
    for pool in [p for p in results if p.endswith("_rerank")]:
        base = pool[: -len("_rerank")]
        rr = [["%s [%d]" % (r.task, r.task_id), r.dataset, f"R@{r.headline_k}", pct(by_pool[base][r.pair].headline),
               pct(r.headline), *sum((list(paper.MBEIR_TABLE3_RERANK.get(r.pair, {}).get(m, (None, None)))
                                      for m in ("NV-Emb hard", "MM-Embed")), [])]
              for r in results[pool]]
        tables.append(Table(f"Zero-shot reranking, {base} pool (MM-Embed Table 3 layout)",
                            ["Task", "Dataset", "Metric", "ours ret.", "ours + rerank", "NV-Emb hard ret.",
                             "NV-Emb hard + rerank", "MM-Embed ret.", "MM-Embed + rerank"], rr,
                            ["Top-10 reranked by the MLLM; paper: M-BEIR test, global pool."]))
    return tables


def _run_file(queries: list[EvalQuery], dids: list[str], idx: np.ndarray, scores: np.ndarray,
              task_id: int, depth: int) -> str:
    lines = []
    for q, row, srow in zip(queries, idx[:, :depth], scores[:, :depth]):
        lines += [f"{q.qid} Q0 {dids[c]} {rank} {s:.6f} mmtrain {task_id}"
                  for rank, (c, s) in enumerate(zip(row.tolist(), srow.tolist()), 1)]
    return "\n".join(lines) + "\n"


def _uniir_tsv(results: dict[str, list[PairResult]], extra: dict[str, dict], split: str,
               local_names: dict[str, str]) -> str:
    """UniIR ``eval_results_*.tsv``: one row per (pair, metric) with the local and union values."""
    header = "TaskID\tTask\tDataset\tSplit\tMetric\tCandPool\tValue\tUnionPool\tUnionValue"
    local = {r.pair: r for r in results.get("local", [])}
    union = {r.pair: r for r in results.get("global", [])}
    lines = [header]
    for pair in dict.fromkeys([*local, *union]):
        r = local.get(pair) or union[pair]
        ks = (10, 20, 50) if pair in UNIIR_R10_PAIRS else (1, 5, 10)

        def value(pool: str, res: dict[str, PairResult], k: int) -> str:
            if pair not in res:
                return ""
            v = extra.get(pool, {}).get(pair, {}).get(k, res[pair].recall.get(k))
            return "" if v is None else f"{100 * v:.2f}"

        for k in ks:
            lines.append("\t".join([str(r.task_id), TASK_NAMES[r.task_id], r.dataset, split, f"Recall@{k}",
                                    local_names.get(pair, ""),
                                    value("local", local, k), f"mbeir_union_{split}_cand_pool" if pair in union else "",
                                    value("global", union, k)]))
    return "\n".join(lines) + "\n"



class ToyBenchmark(MBeirBenchmark):
    """The toy world through the M-BEIR adapter (it is written in the M-BEIR layout); generated first
    when missing (rank 0 generates, the others wait and then find it)."""

    name = "toy"

    def __init__(self, root: str, toy_world: dict[str, Any] | None = None, **kw: Any):
        super().__init__(root, **kw)
        self.toy_world = dict(toy_world or {})
        self.title = kw.get("title") or f"Toy world {self.split}"

    def run(self, ctx: EvalContext) -> BenchmarkResult:
        if self.toy_world:
            ensure_toy(ctx, self.toy_world)
        return super().run(ctx)


def ensure_toy(ctx: EvalContext, toy_world: dict[str, Any]) -> Path:
    """Generate (or find) the toy world described by a ``data.toy_world`` node, rank 0 first."""
    from mmtrain.toy.world import ensure_toy_world

    toy = {k: v for k, v in toy_world.items() if v is not None}
    out_dir = toy.pop("dir")
    if ctx.is_global_zero:
        ensure_toy_world(out_dir, **toy)
    ctx.barrier()
    return ensure_toy_world(out_dir, **toy)
