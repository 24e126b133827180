"""The miner against a brute-force reference, its resume, and distributed mining (2 ranks = 1 rank)."""

from __future__ import annotations

import os
import shutil
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from mmtrain.data.schema import TASKS
from mmtrain.data.shards import load_pool
from mmtrain.mining.miner import HardNegativeMiner, load_training_queries
from mmtrain.mining.rules import ModalityAwareRule, PositiveAwareRule, Ranking
from mmtrain.mining.table import NegativesTable

from mining_helpers import HashEncoder, HashProcessor, item_vector

# Small chunks and blocks, so the per-chunk top-k merge and the block split are exercised.
SMALL_PARTS = dict(batch_size=7, chunk_size=50, query_block=37)


def reference_table(shard_dir, rule) -> dict[int, list[tuple[int, int, str]]]:
    """Full query x pool score matrix, a stable argsort, the rule: no chunking, no blocks, no files."""
    pool, _ = load_pool(shard_dir, "train")
    queries = load_training_queries(shard_dir)
    # The miner stores embeddings in fp16: score the same rounded vectors, in float64.
    P = np.stack([item_vector(c, False) for c in pool]).astype(np.float16).astype(np.float64)
    Q = np.stack([item_vector(m.item, True) for m in queries]).astype(np.float16).astype(np.float64)
    S = Q @ P.T
    ids = np.array([c.id for c in pool])
    row = {c.id: i for i, c in enumerate(pool)}
    out = {}
    for qi, m in enumerate(queries):
        order = np.lexsort((np.arange(len(pool)), -S[qi]))[: rule.depth]
        r = Ranking(ids[order], S[qi, order], [pool[i].modality for i in order], frozenset(m.positives),
                    TASKS[m.task_id][1], tuple(float(S[qi, row[p]]) for p in m.positives if p in row))
        out[m.qid_hash] = [(n.id, n.rank, n.group) for n in rule(r)]
    return out


def table_of(path) -> dict[int, list[tuple[int, int, str]]]:
    return {q: [(n.id, n.rank, n.group) for n in negs] for q, negs in NegativesTable(path).as_dict().items()}


@pytest.mark.parametrize("rule", [ModalityAwareRule(top_k=50, k_prime=45),
                                  PositiveAwareRule(max_ratio=0.95, num_negatives=3, top_k=20)])
def test_miner_equals_brute_force(toy_shards, tmp_path, rule):
    table, stats = HardNegativeMiner(toy_shards, tmp_path / "m", rule, stage="t", **SMALL_PARTS).run(
        HashEncoder(), HashProcessor())
    expected = reference_table(toy_shards, rule)
    assert table_of(table) == expected
    assert sum(map(len, expected.values())) > 0
    n_queries = len(load_training_queries(toy_shards))
    assert sum(s["queries"] for s in stats.values()) == n_queries == len(expected)
    meta = NegativesTable(table).meta
    assert meta["rule"] == rule.name and meta["rule_params"] == rule.params()


def test_killed_miner_resumes_without_redoing_finished_parts(toy_shards, tmp_path):
    rule = ModalityAwareRule()
    work = tmp_path / "m"
    first = HardNegativeMiner(toy_shards, work, rule, **SMALL_PARTS)
    first.run(HashEncoder(), HashProcessor())
    expected = table_of(work / "table")
    # Simulate a kill: the table, one embedding chunk and one search block never got written.
    shutil.rmtree(work / "table")
    (work / "embeddings" / "pool" / "chunk-00001.npy").unlink()
    (work / "search" / "block-00000.json").unlink()
    encoder = HashEncoder()
    HardNegativeMiner(toy_shards, work, rule, **SMALL_PARTS).run(encoder, HashProcessor())
    assert encoder.encoded == SMALL_PARTS["chunk_size"]          # only the missing chunk was encoded
    assert table_of(work / "table") == expected
    # Another rule is another fingerprint: nothing of the old run is reused.
    encoder = HashEncoder()
    HardNegativeMiner(toy_shards, work, ModalityAwareRule(k_prime=40), **SMALL_PARTS).run(encoder, HashProcessor())
    n_pool, n_q = len(load_pool(toy_shards, "train")[0]), len(load_training_queries(toy_shards))
    assert encoder.encoded == n_pool + n_q


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, shards, work) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        HardNegativeMiner(shards, work, ModalityAwareRule(), **SMALL_PARTS).run(HashEncoder(), HashProcessor())
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_give_the_same_table_as_one(toy_shards, tmp_path):
    HardNegativeMiner(toy_shards, tmp_path / "one", ModalityAwareRule(), **SMALL_PARTS).run(
        HashEncoder(), HashProcessor())
    mp.start_processes(_rank, args=(2, _free_port(), toy_shards, tmp_path / "two"), nprocs=2,
                       start_method="spawn")
    assert table_of(tmp_path / "two" / "table") == table_of(tmp_path / "one" / "table")
    # Both ranks did part of the work: chunks are spread round-robin.
    assert len(list((tmp_path / "two" / "embeddings" / "pool").glob("chunk-*.npy"))) > 1
