"""Benchmark: GradCache's peak memory and time on CPU (the acceptance check of issue 4).

    python -m mmtrain.bench.gradcache_memory [--batch 256] [--chunk 16] [--small 16] [--steps 3]
                                             [--threads 1] [--plot docs/img/gradcache_memory.png]

Three training steps' worth of work per configuration, each in a fresh process so its memory peak
is its own:
  plain-small   full forward/backward over ``--small`` queries (+ positives): the memory reference
  gradcache     ``--batch`` queries through GradCache in chunks of ``--chunk``
  plain-large   the same ``--batch`` without GradCache: what GradCache avoids, and its time base
The model is a from-config LLaVA-Next (Mistral text side, CLIP vision side; LoRA r=8, dropout 0.1,
projector trained) sized so activations dominate: ~100 tokens per query (64 image tokens of the
global view + instruction + caption), ~30-90 per positive. Memory is the process's resident set
(sampled every 2 ms from /proc) above its level once the model and batches exist, i.e. the step's
activations, gradients and optimiser state; time is the median step after one warm-up step.
The pass criterion of the issue: gradcache peak <= 1.3 x plain-small peak.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
WORDS = "red blue green small large circle square triangle left right top bottom scene image the a of".split()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakSampler:
    """Max resident set size while running, sampled from a thread (the GIL is released in torch ops)."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, rss_bytes(), threading.Event()

    def __enter__(self) -> PeakSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def make_backbone(tokenizer_dir: str):
    from mmtrain.models.mllm import LlavaNextBackbone, TinyMLLM
    shape = TinyMLLM(hidden_size=128, intermediate_size=512, num_layers=4, num_heads=4, num_kv_heads=2,
                     vision_hidden_size=128, vision_intermediate_size=256, vision_layers=2, vision_heads=4,
                     image_size=64, patch_size=8)
    return LlavaNextBackbone(tokenizer=tokenizer_dir, tiny=shape, lora={"r": 8, "alpha": 64, "dropout": 0.1},
                             max_query_length=128, max_candidate_length=128)


def make_batch(processor, n: int, seed: int) -> dict:
    import numpy as np
    from PIL import Image

    from mmtrain.data.collate import TrainCollator
    from mmtrain.data.schema import Item, TrainExample
    rng = np.random.default_rng(seed)

    def jpeg() -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
        return buf.getvalue()

    def caption(k: int) -> str:
        return " ".join(rng.choice(WORDS, size=k))

    examples = []
    for i in range(n):
        query = Item(caption(16), jpeg(), "image,text", instruction="Find an everyday image that matches the caption.")
        positive = Item(caption(24), jpeg() if i % 2 else None, "image,text" if i % 2 else "text", id=i)
        examples.append(TrainExample(query, positive, [], [i]))
    return TrainCollator(processor)(examples)


def run_one(mode: str, batch_size: int, chunk: int, steps: int, threads: int, tokenizer_dir: str) -> dict:
    import torch

    from mmtrain.lightning.gradcache import gradcache_backward
    from mmtrain.models.loss import ContrastiveLoss
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    backbone = make_backbone(tokenizer_dir)
    processor = backbone.build_processor()
    encoder = backbone.build_encoder().train()
    loss_fn = ContrastiveLoss(temperature=0.02)
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=1e-4)
    batches = [make_batch(processor, batch_size, seed) for seed in range(steps + 1)]

    def plain(batch: dict) -> None:
        q = encoder.encode_queries(batch["query"])
        p = encoder.encode_candidates(batch["positive"])
        loss_fn(q, p, positive_ids=batch["positive_ids"], query_positive_ids=batch["query_positive_ids"]).loss.backward()

    def cached(batch: dict) -> None:
        gradcache_backward(encoder, loss_fn, batch, chunk, backward=lambda t: t.backward())

    step = cached if mode == "gradcache" else plain
    baseline = rss_bytes()
    times = []
    with PeakSampler() as sampler:
        for batch in batches:
            start = time.perf_counter()
            step(batch)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
    tokens = int(batches[0]["query"]["attention_mask"].sum() + batches[0]["positive"]["attention_mask"].sum())
    return {"mode": mode, "batch": batch_size, "chunk": chunk if mode == "gradcache" else None,
            "baseline_mb": baseline / 2**20, "peak_mb": sampler.peak / 2**20,
            "step_peak_mb": (sampler.peak - baseline) / 2**20, "step_s": statistics.median(times[1:]),
            "tokens_per_step": tokens, "threads": threads,
            "params": sum(p.numel() for p in encoder.parameters()),
            "trainable": sum(p.numel() for p in encoder.parameters() if p.requires_grad)}


def spawn(mode: str, batch: int, args: argparse.Namespace, tokenizer_dir: str) -> dict:
    cmd = [sys.executable, "-m", "mmtrain.bench.gradcache_memory", "--one", mode, "--batch", str(batch),
           "--chunk", str(args.chunk), "--steps", str(args.steps), "--threads", str(args.threads),
           "--tokenizer", tokenizer_dir]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{r['mode']}\nbatch {r['batch']}" + (f", chunk {r['chunk']}" if r["chunk"] else "") for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.bar(labels, [r["step_peak_mb"] for r in rows], color=["#4c72b0", "#55a868", "#c44e52"][: len(rows)])
    a.set_ylabel("step peak memory above baseline (MiB)")
    b.bar(labels, [r["step_s"] for r in rows], color=["#4c72b0", "#55a868", "#c44e52"][: len(rows)])
    b.set_ylabel("median step time (s)")
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("GradCache on CPU: tiny LLaVA-Next + LoRA", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--small", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-plain-large", action="store_true", help="do not run the large batch without GradCache")
    ap.add_argument("--plot", default=None, help="write a PNG figure here")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.batch, args.chunk, args.steps, args.threads, args.tokenizer)))
        return
    from mmtrain.toy.tokenizer import train_bpe_tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 4
        corpus.append("Find an everyday image that matches the caption. Query:")
        train_bpe_tokenizer(corpus, vocab_size=400).save_pretrained(tmp)
        rows = [spawn("plain", args.small, args, tmp), spawn("gradcache", args.batch, args, tmp)]
        if not args.skip_plain_large:
            rows.append(spawn("plain", args.batch, args, tmp))
    small, gc = rows[0], rows[1]
    print(f"\ntiny LLaVA-Next ({small['params'] / 1e6:.2f} M parameters, {small['trainable'] / 1e6:.2f} M trainable), "
          f"{args.steps} timed steps after 1 warm-up, {args.threads} thread(s)")
    print("| run | queries/step | chunk | tokens/step | step peak above baseline (MiB) | process peak (MiB) | "
          "median step (s) | s per 1k tokens |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['batch']} | {r['chunk'] or '-'} | {r['tokens_per_step']} | {r['step_peak_mb']:.0f} | "
              f"{r['peak_mb']:.0f} | {r['step_s']:.2f} | {1000 * r['step_s'] / r['tokens_per_step']:.3f} |")
    ratio = gc["step_peak_mb"] / small["step_peak_mb"]
    total_ratio = gc["peak_mb"] / small["peak_mb"]
    print(f"\ngradcache({args.batch}, chunk {args.chunk}) / plain({args.small}) step peak: {ratio:.2f}x "
          f"(process peak {total_ratio:.2f}x) -> {'PASS' if ratio <= 1.3 else 'FAIL'} (<= 1.3x)")
    per_token = lambda r: r["step_s"] / r["tokens_per_step"]  # noqa: E731
    print(f"time per token, gradcache vs plain({args.small}): {100 * (per_token(gc) / per_token(small) - 1):+.0f} %")
    if len(rows) > 2:
        print(f"time per step, gradcache vs plain({args.batch}) (same work + one re-forward): "
              f"{100 * (gc['step_s'] / rows[2]['step_s'] - 1):+.0f} %; plain({args.batch}) step peak "
              f"{rows[2]['step_peak_mb'] / small['step_peak_mb']:.1f}x plain({args.small})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.plot:
        plot(rows, args.plot)
        print(f"figure: {args.plot}")


if __name__ == "__main__":
    main()
