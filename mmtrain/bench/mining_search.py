"""Benchmark: the miner's search vs a brute-force top-k, and vs the time to encode what it searches.

    python -m mmtrain.bench.mining_search [--pool 108000] [--queries 9600] [--dim 64] [--k 50]

A pool 10x the toy world's training pool (108K candidates) and the toy world's 9.6K training queries,
random unit vectors of the tiny CLIP's width, fp16 on disk as the miner stores them. Three ways to
the same top-k, each in a fresh subprocess so peak memory (max RSS) is its own:

- brute force: the full query x pool score matrix in numpy, ``argpartition`` + sort per row;
- the miner's search: query blocks x pool chunks (``exact_topk`` per chunk, merged), never the full
  matrix; the pool is memory-mapped chunk by chunk;
- encoding: the tiny CLIP encoding toy-world candidates, timed on 2,048 and scaled to the pool, for
  the share of a mining round that search takes.
The top-k of the first two must agree (checked), and the ratios are printed. Not a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_data(root: Path, n_pool: int, n_queries: int, dim: int, chunk: int) -> None:
    rng = np.random.default_rng(0)
    for name, n in (("pool", n_pool), ("queries", n_queries)):
        (root / name).mkdir(parents=True)
        for i, start in enumerate(range(0, n, chunk)):
            x = rng.standard_normal((min(chunk, n - start), dim)).astype(np.float32)
            np.save(root / name / f"chunk-{i:05d}.npy", (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16))


def load(root: Path, name: str, mmap: bool) -> list[np.ndarray]:
    return [np.load(p, mmap_mode="r" if mmap else None) for p in sorted((root / name).glob("chunk-*.npy"))]


def brute_force(root: Path, k: int) -> np.ndarray:
    q = np.concatenate(load(root, "queries", False)).astype(np.float32)
    p = np.concatenate(load(root, "pool", False)).astype(np.float32)
    s = q @ p.T                                              # the whole matrix
    part = np.argpartition(-s, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def miner_search(root: Path, k: int, block: int) -> np.ndarray:
    from mmtrain.mining.miner import HardNegativeMiner
    from mmtrain.mining.rules import ModalityAwareRule
    miner = HardNegativeMiner(root, root, ModalityAwareRule(top_k=k), query_block=block)
    q_chunks, p_chunks = load(root, "queries", True), load(root, "pool", True)
    out = []
    for qc in q_chunks:
        qc = np.asarray(qc, dtype=np.float32)
        for b in range(0, len(qc), block):
            out.append(miner._search_block(qc[b:b + block], p_chunks, k)[1])
    return np.concatenate(out)


def encode_seconds_per_item(n: int = 2048) -> float:
    import os
    import torch
    from mmtrain.data.convert import ensure_converted
    from mmtrain.data.shards import load_pool
    from mmtrain.toy.world import ensure_toy_world
    from mmtrain.models.clip_sf import ClipSFBackbone, TinyClip
    cache = Path(os.environ.get("MMTRAIN_CACHE", Path.home() / ".cache" / "mmtrain"))
    world = ensure_toy_world(cache / "toy_world" / "seed0", seed=0)
    shards = cache / "shards" / "toy_world_seed0"
    ensure_converted(shards, "mbeir", root=world / "mbeir", samples_per_shard=200, rebuild_stale=True)
    items = load_pool(shards, "train")[0][:n]
    bb = ClipSFBackbone(tokenizer=str(world / "tokenizer"), tiny=TinyClip(), max_text_length=64)
    enc, proc = bb.build_encoder().eval(), bb.build_processor()
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(items), 256):
            enc.encode_candidates(proc(items[i:i + 256]))
    return (time.perf_counter() - start) / len(items)


def child(args: argparse.Namespace) -> None:
    root = Path(args.root)
    start = time.perf_counter()
    if args.child == "brute":
        idx = brute_force(root, args.k)
    elif args.child == "miner":
        idx = miner_search(root, args.k, args.block)
    else:
        print(json.dumps({"seconds_per_item": encode_seconds_per_item(),
                          "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    seconds = time.perf_counter() - start
    np.save(root / f"{args.child}.npy", idx)
    print(json.dumps({"seconds": seconds, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_child(root: Path, which: str, args: argparse.Namespace) -> dict:
    out = subprocess.run([sys.executable, "-m", "mmtrain.bench.mining_search", "--child", which, "--root", str(root),
                          "--k", str(args.k), "--block", str(args.block)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=108_000)
    ap.add_argument("--queries", type=int, default=9_600)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--block", type=int, default=4096)
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--child", default=None)
    ap.add_argument("--root", default=None)
    args = ap.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_data(root, args.pool, args.queries, args.dim, args.chunk)
        brute, miner, enc = (run_child(root, w, args) for w in ("brute", "miner", "encode"))
        a, b = np.load(root / "brute.npy"), np.load(root / "miner.npy")
        agree = float((a == b).mean())
    encode_s = enc["seconds_per_item"] * (args.pool + args.queries)
    print(f"\npool {args.pool:,} x queries {args.queries:,}, d={args.dim}, top-{args.k}, fp16 on disk")
    print("| step | seconds | queries/s | peak RSS (MB) |\n|---|---:|---:|---:|")
    for name, r in (("brute force (full matrix)", brute), ("mmtrain miner search", miner)):
        print(f"| {name} | {r['seconds']:.2f} | {args.queries / r['seconds']:,.0f} | {r['max_rss_mb']:,.0f} |")
    print(f"| encoding pool + queries (tiny CLIP, extrapolated) | {encode_s:.1f} | | {enc['max_rss_mb']:,.0f} |")
    print(f"\nsearch speed vs brute force: {brute['seconds'] / miner['seconds']:.2f}x; peak memory "
          f"{miner['max_rss_mb'] / brute['max_rss_mb']:.2f}x; search = {100 * miner['seconds'] / (miner['seconds'] + encode_s):.1f} % "
          f"of a mining round; top-{args.k} agreement with brute force {100 * agree:.2f} %")


if __name__ == "__main__":
    main()
