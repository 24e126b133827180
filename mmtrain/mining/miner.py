"""The hard-negative miner: encode pool and training queries, search exactly, apply a rule, write a table.

Every step is split into parts that any rank can do and that are written atomically, so the work is
shared by all ranks and a killed run resumes where it stopped:

1. encode: the training pool and the training queries are cut into chunks of ``chunk_size`` items;
   chunk c goes to rank c % world_size, which writes ``embeddings/{pool,queries}/chunk-<c>.npy``
   (fp16). Memory stays at one chunk.
2. search: queries in blocks of ``query_block``; block b goes to rank b % world_size, which searches it
   exactly against the pool one pool chunk at a time (``exact_topk`` per chunk, then a merge of the
   per-chunk top-k), so no query x pool matrix and no whole pool is ever in memory; the rule turns
   each query's ranking into negatives; the block's result goes to ``search/block-<b>.json``.
3. table: rank 0 merges the blocks into the negatives table (``table.py``) and writes the statistics.

Finished parts are skipped on a rerun; a part's file exists only once complete. ``work_dir`` holds a
fingerprint (model, data sizes, rule): parts of another model or rule are never reused.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmtrain import dist as ranks
from mmtrain.data.schema import TASKS, Item, task_label
from mmtrain.data.shards import iter_samples, load_pool, read_manifest
from mmtrain.eval.search import exact_topk, merge_topk
from mmtrain.io import atomic_save, atomic_write_text
from mmtrain.models.encoder import Encoder, encode_items
from mmtrain.mining.rules import Negative, NegativeRule, Ranking
from mmtrain.mining.table import NegativesTable, merge_groups, write_table
from mmtrain.run_dir import mined_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MiningQuery:
    qid: str
    qid_hash: int
    item: Item                  # with its instruction: MM-Embed mines "every query with its instruction"
    positives: tuple[int, ...]
    task_id: int


def load_training_queries(shard_dir: str | Path) -> list[MiningQuery]:
    """Every training query of the shards, with its first instruction (deterministic), by qid_hash."""
    root = Path(shard_dir)
    out = []
    for entry in read_manifest(root)["sources"].values():
        if entry["split"] != "train":
            continue
        for s in iter_samples(root / p for p in entry["shards"]):
            j, q = s["json"], s["json"]["query"]
            item = Item(q["text"], s[q["image"]] if q["image"] else None, q["modality"],
                        (j["instructions"] or [None])[0], j["qid_hash"])
            out.append(MiningQuery(j["qid"], j["qid_hash"], item,
                                   tuple(p["did_hash"] for p in j["positives"]), j["task_id"]))
    return sorted(out, key=lambda m: m.qid_hash)


class Dist:
    """Rank, world size and a barrier: torch.distributed when initialised, else one process."""

    def __init__(self, barrier: Callable[[], None] | None = None):
        on = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank, self.world_size = (ranks.rank(), ranks.world_size()) if on else (0, 1)
        self._barrier = barrier or (torch.distributed.barrier if on else (lambda: None))

    def barrier(self) -> None:
        self._barrier()


class HardNegativeMiner:
    def __init__(self, shard_dir: str | Path, work_dir: str | Path, rule: NegativeRule, *, stage: str = "",
                 keep_groups_from: str | Path | None = None, keep_groups: tuple[str, ...] = ("C1",),
                 batch_size: int = 256, chunk_size: int = 8192, query_block: int = 4096,
                 num_workers: int = 0):
        self.shard_dir = Path(shard_dir)
        self.work_dir = Path(work_dir)
        self.rule = rule
        self.stage = stage
        self.keep_groups_from = keep_groups_from
        self.keep_groups = tuple(keep_groups)
        self.batch_size, self.chunk_size, self.query_block = batch_size, chunk_size, query_block
        self.num_workers = num_workers

    # -- 1. encode ------------------------------------------------------------------------------
    def _encode(self, name: str, items: list[Item], encoder: Encoder, processor: Callable,
                device: torch.device, dist: Dist) -> None:
        out = self.work_dir / "embeddings" / name
        out.mkdir(parents=True, exist_ok=True)
        chunks = range(0, len(items), self.chunk_size)
        mine = [c for i, c in enumerate(chunks) if i % dist.world_size == dist.rank
                and not (out / f"chunk-{i:05d}.npy").exists()]
        for c in tqdm(mine, desc=f"encode {name} (rank {dist.rank})", disable=not mine, mininterval=2):
            emb = encode_items(encoder, processor, items[c:c + self.chunk_size], query=name == "queries",
                               batch_size=self.batch_size, device=device, num_workers=self.num_workers)
            atomic_save(out / f"chunk-{c // self.chunk_size:05d}.npy", lambda p: np.save(p, emb.numpy().astype(np.float16)))

    def _chunks(self, name: str, n: int) -> list[np.ndarray]:
        return [np.load(self.work_dir / "embeddings" / name / f"chunk-{i:05d}.npy", mmap_mode="r")
                for i in range((n + self.chunk_size - 1) // self.chunk_size)]

    # -- 2. search ------------------------------------------------------------------------------
    def _search_block(self, q: np.ndarray, pool: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, index, start = [], [], 0
        for chunk in pool:
            s, i = exact_topk(q, np.asarray(chunk, dtype=np.float32), k)
            scores.append(s)
            index.append(i + start)
            start += len(chunk)
        return merge_topk(scores, index, k)

    def _search(self, queries: list[MiningQuery], pool: list[Item], dist: Dist) -> None:
        out = self.work_dir / "search"
        out.mkdir(parents=True, exist_ok=True)
        q_chunks, p_chunks = self._chunks("queries", len(queries)), self._chunks("pool", len(pool))
        q_emb = np.concatenate([np.asarray(c, dtype=np.float32) for c in q_chunks])
        ids = np.array([c.id for c in pool], dtype=np.int64)
        row_of = {int(d): r for r, d in enumerate(ids)}
        modalities = [c.modality for c in pool]
        blocks = range(0, len(queries), self.query_block)
        mine = [b for j, b in enumerate(blocks) if j % dist.world_size == dist.rank
                and not (out / f"block-{j:05d}.json").exists()]
        k = min(self.rule.depth, len(pool))
        for b in tqdm(mine, desc=f"search (rank {dist.rank})", disable=not mine, mininterval=2):
            j = b // self.query_block
            scores, index = self._search_block(q_emb[b:b + self.query_block], p_chunks, k)
            rows = []
            for qi, (s, ix) in enumerate(zip(scores, index)):
                m = queries[b + qi]
                pos_rows = [row_of[p] for p in m.positives if p in row_of]
                pos_scores = tuple(float(q_emb[b + qi] @ _row(p_chunks, r, self.chunk_size)) for r in pos_rows)
                ranking = Ranking(ids[ix], s, [modalities[x] for x in ix], frozenset(m.positives),
                                  TASKS[m.task_id][1], pos_scores)
                negs = self.rule(ranking)
                rows.append({"q": m.qid_hash, "top1": modalities[ix[0]],
                             "n": [[n.id, n.rank, n.score, n.group] for n in negs]})
            atomic_write_text(out / f"block-{j:05d}.json", json.dumps(rows), fsync=False)

    # -- 3. table -------------------------------------------------------------------------------
    def _table(self, queries: list[MiningQuery], pool_size: int, provenance: dict) -> tuple[Path, dict]:
        mined: dict[int, list[Negative]] = {}
        top1: dict[int, str] = {}
        for j in range((len(queries) + self.query_block - 1) // self.query_block):
            for row in json.loads((self.work_dir / "search" / f"block-{j:05d}.json").read_text()):
                mined[row["q"]] = [Negative(int(d), int(r), float(s), g) for d, r, s, g in row["n"]]
                top1[row["q"]] = row["top1"]
        if self.keep_groups_from is not None:
            mined = merge_groups(NegativesTable(self.keep_groups_from), self.keep_groups, mined)
        stats = mining_stats(queries, mined, top1)
        meta = {"stage": self.stage, "rule": self.rule.name, "rule_params": self.rule.params(),
                "pool": {"shard_dir": str(Path(self.shard_dir).resolve()), "split": "train", "size": pool_size},
                "kept_groups": list(self.keep_groups) if self.keep_groups_from else [],
                "kept_from": str(self.keep_groups_from) if self.keep_groups_from else None,
                "stats": stats, **provenance}
        table = write_table(mined_table(self.work_dir), mined, meta)
        return table, stats

    def run(self, encoder: Encoder, processor: Callable, device: torch.device | str = "cpu", *,
            provenance: dict | None = None, dist: Dist | None = None) -> tuple[Path, dict]:
        """Mine with ``encoder`` (``encode_queries`` / ``encode_candidates``); returns the table path
        and the statistics. Every rank must call it."""
        dist = dist or Dist()
        provenance = provenance or {}
        pool, _ = load_pool(self.shard_dir, "train")
        queries = load_training_queries(self.shard_dir)
        self._check_fingerprint(len(pool), len(queries), provenance, dist)
        was_training = encoder.training
        encoder.eval()
        try:
            self._encode("pool", pool, encoder, processor, torch.device(device), dist)
            self._encode("queries", [m.item for m in queries], encoder, processor, torch.device(device), dist)
        finally:
            encoder.train(was_training)
        dist.barrier()
        self._search(queries, pool, dist)
        dist.barrier()
        table, stats = (mined_table(self.work_dir), {})
        if dist.rank == 0:
            table, stats = self._table(queries, len(pool), provenance)
            log.info("negatives table %s\n%s", table, format_stats(stats))
        dist.barrier()
        if dist.rank != 0:
            stats = NegativesTable(table).meta["stats"]
        return table, stats

    def _check_fingerprint(self, n_pool: int, n_queries: int, provenance: dict, dist: Dist) -> None:
        fp = {"pool": n_pool, "queries": n_queries, "rule": self.rule.name, "params": self.rule.params(),
              "chunk_size": self.chunk_size, "query_block": self.query_block,
              "model": provenance.get("checkpoint"), "step": provenance.get("global_step")}
        path = self.work_dir / "fingerprint.json"
        if dist.rank == 0:
            if path.is_file() and json.loads(path.read_text()) != json.loads(json.dumps(fp)):
                log.warning("%s holds parts of another mining run; starting over", self.work_dir)
                for sub in ("embeddings", "search"):
                    shutil.rmtree(self.work_dir / sub, ignore_errors=True)
            self.work_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(fp))
        dist.barrier()


def _row(chunks: list[np.ndarray], r: int, size: int) -> np.ndarray:
    return np.asarray(chunks[r // size][r % size], dtype=np.float32)


def mining_stats(queries: list[MiningQuery], mined: dict[int, list[Negative]], top1: dict[int, str]) -> dict:
    """Per task: queries, share with >= 1 C1 negative, mean |C1| and |C2|, share with no negative,
    and the mining model's top-1 modality accuracy (the bias the negatives are meant to correct)."""
    by_task: dict[int, list[MiningQuery]] = defaultdict(list)
    for m in queries:
        by_task[m.task_id].append(m)
    out = {}
    for t in sorted(by_task):
        qs = by_task[t]
        c1 = [sum(n.group == "C1" for n in mined.get(m.qid_hash, [])) for m in qs]
        c2 = [sum(n.group == "C2" for n in mined.get(m.qid_hash, [])) for m in qs]
        out[task_label(t)] = {
            "task_id": t, "queries": len(qs),
            "share_with_c1": float(np.mean([c > 0 for c in c1])),
            "mean_c1": float(np.mean(c1)), "mean_c2": float(np.mean(c2)),
            "share_without_negative": float(np.mean([not mined.get(m.qid_hash) for m in qs])),
            "top1_modality_acc": float(np.mean([top1.get(m.qid_hash) == TASKS[t][1] for m in qs])),
        }
    return out


def format_stats(stats: dict) -> str:
    lines = ["| task | queries | with C1 | mean C1 | mean C2 | no negative | top-1 M.A. |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in stats.items():
        lines.append(f"| {name} [{s['task_id']}] | {s['queries']} | {100 * s['share_with_c1']:.1f} % | "
                     f"{s['mean_c1']:.2f} | {s['mean_c2']:.2f} | {100 * s['share_without_negative']:.1f} % | "
                     f"{100 * s['top1_modality_acc']:.1f} % |")
    return "\n".join(lines)
