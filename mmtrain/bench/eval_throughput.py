"""Benchmark: encode and search throughput of the evaluation path on a pool of 100K toy candidates.

    python -m mmtrain.bench.eval_throughput [--candidates 100000] [--queries 2000] [--out DIR]

The pool mixes text, image and image+text candidates in thirds (like the toy world's global pool), drawn
with the toy world's scene generator; the queries are captions. The encoder is the tiny CLIP_SF of the
default run (untrained: throughput does not depend on the weights). Measured through ``EvalContext``
(DataLoader, the backbone's processor, the model; one process), then the cached re-read, then exact
top-k search with both backends of ``exact_topk`` (torch matmul + topk, faiss ``IndexFlatIP``).
Writes ``eval_throughput.json`` and ``eval_throughput.png`` into ``--out``. Not a test: timings depend
on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmtrain.toy import scenes as ts
from mmtrain.data.schema import Item
from mmtrain.toy.world import ensure_toy_world
from mmtrain.eval.benchmarks.context import EvalContext
from mmtrain.eval.embed_cache import EmbeddingCache
from mmtrain.eval.search import exact_topk
from mmtrain.models.clip_sf import ClipSFBackbone, TinyClip


def toy_pool(n: int, n_queries: int, seed: int = 0) -> tuple[list[Item], list[Item], float]:
    """(candidates, queries, seconds spent drawing): candidates cycle text / image / image+text."""
    start = time.perf_counter()
    rng, book = random.Random(seed), ts.SceneBook()
    cands = []
    for i in range(n):
        scene = book.fresh(rng)
        kind = i % 3
        text = ts.caption(scene, rng)[0] if kind != 1 else None
        image = ts.render(scene) if kind != 0 else None
        cands.append(Item(text, image, ["text", "image", "image,text"][kind], None, i))
    queries = [Item(ts.caption(book.fresh(rng), rng)[0], None, "text", "Find me a drawn scene that matches the "
                    "given caption.", i) for i in range(n_queries)]
    return cands, queries, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "mmtrain"))
    parser.add_argument("--out", default="outputs/bench/eval_throughput")
    args = parser.parse_args(argv)

    world = ensure_toy_world(Path(args.cache_dir) / "toy_world" / "seed0")
    torch.manual_seed(0)
    backbone = ClipSFBackbone(tokenizer=str(world / "tokenizer"), tiny=TinyClip(), max_text_length=64)
    cands, queries, t_draw = toy_pool(args.candidates, args.queries)
    print(f"drew {len(cands)} candidates + {len(queries)} queries in {t_draw:.1f} s")
    out: dict = {"candidates": len(cands), "queries": len(queries), "dim": TinyClip().projection_dim,
                 "batch_size": args.batch_size, "num_workers": args.num_workers,
                 "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                 "cpus": os.cpu_count(), "load_avg_before": os.getloadavg()}  # other jobs skew timings
    with tempfile.TemporaryDirectory() as tmp:
        ctx = EvalContext(backbone.build_encoder().eval(), backbone.build_processor(), model_fp="bench",
                          cache=EmbeddingCache(tmp), batch_size=args.batch_size, num_workers=args.num_workers)
        start = time.perf_counter()
        c_emb = ctx.encode(cands, "candidate", "bench/pool")
        t_enc = time.perf_counter() - start
        q_emb = ctx.encode(queries, "query", "bench/queries")
        start = time.perf_counter()
        ctx.encode(cands, "candidate", "bench/pool")  # a cache hit: fingerprint + read
        t_hit = time.perf_counter() - start
    out["encode"] = {"seconds": t_enc, "items_per_s": len(cands) / t_enc}
    out["cache_hit"] = {"seconds": t_hit, "items_per_s": len(cands) / t_hit}
    print(f"encode: {len(cands)} candidates in {t_enc:.1f} s = {len(cands) / t_enc:.0f} items/s; "
          f"cache hit {t_hit:.2f} s")
    out["search"] = {}
    results = {}
    for backend in ("torch", "faiss"):
        exact_topk(q_emb[:64], c_emb, args.k, backend=backend)  # warm-up (faiss index build, allocator)
        start = time.perf_counter()
        _, idx = exact_topk(q_emb, c_emb, args.k, backend=backend)
        dt = time.perf_counter() - start
        results[backend] = idx
        out["search"][backend] = {"seconds": dt, "queries_per_s": len(q_emb) / dt}
        print(f"search ({backend}): {len(q_emb)} queries x {len(c_emb)} candidates, top-{args.k}, "
              f"{dt:.2f} s = {len(q_emb) / dt:.0f} queries/s")
    out["search"]["top1_agreement"] = float(np.mean(results["torch"][:, 0] == results["faiss"][:, 0]))
    out["load_avg_after"] = os.getloadavg()
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "eval_throughput.json").write_text(json.dumps(out, indent=2) + "\n")
    (dest / "eval_throughput.png").write_bytes(_plot(out))
    print(f"wrote {dest}/eval_throughput.{{json,png}}")
    return out


def _plot(out: dict) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    enc = [out["encode"]["items_per_s"]]
    ax1.bar(["encode (tiny CLIP_SF)"], enc, color="#4292c6")
    ax1.set_ylabel("items / s")
    ax1.set_title(f"encode {out['candidates']:,} candidates\n(cache hit: {out['cache_hit']['seconds']:.1f} s)",
                  fontsize=10)
    names = ["torch", "faiss"]
    vals = [out["search"][n]["queries_per_s"] for n in names]
    ax2.bar(names, vals, color=["#9ecae1", "#08519c"])
    ax2.set_ylabel("queries / s")
    ax2.set_title(f"exact top-10 over {out['candidates']:,} x d={out['dim']}", fontsize=10)
    for ax, v in ((ax1, enc), (ax2, vals)):
        for i, x in enumerate(v):
            ax.text(i, x, f"{x:,.0f}", ha="center", va="bottom", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


if __name__ == "__main__":
    main()
