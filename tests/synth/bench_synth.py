"""Throughput of the synthesis pipeline against the local fake endpoint (docs/synthesis.md, "Measured").

    python tests/synth/bench_synth.py [--samples 400] [--images 64]

Runs the whole pipeline (configuration, retrieval, image encoding, the openai client over loopback,
validation, part files, shards) with the server answering after 0 s (pipeline overhead) and after
0.5 s (a latency-bound endpoint) at several concurrencies, then a resume of a finished run.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from conftest import synth_cfg  # noqa: E402
from fake_openai import FakeChatServer  # noqa: E402

from mmtrain.synth.pipeline import synthesize  # noqa: E402


def corpus(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):  # LAION-like sizes: sent as they are (short side <= 512), re-encoded for the shards
        base = rng.integers(0, 256, (1, 1, 3))
        noise = rng.integers(-40, 41, (480, 640, 3))
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(root / f"{i:04d}.jpg", quality=90)
    return root


def run(tmp: Path, images: Path, name: str, n: int, delay: float, concurrency: int) -> tuple[float, float]:
    with FakeChatServer(delay=delay) as server:
        cfg = synth_cfg(tmp / name, images, n, f"generator.base_url={server.base_url}",
                        f"generator.max_concurrency={concurrency}", "output.min_shards_per_source=8",
                        "output.flush_every=32")
        t0 = time.perf_counter()
        synthesize(cfg)
        total = time.perf_counter() - t0
        t0 = time.perf_counter()
        synthesize(cfg)  # everything done: the resume path only
        return total, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=400)
    p.add_argument("--images", type=int, default=64)
    args = p.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "corpus").mkdir()
        images = corpus(tmp / "corpus", args.images)
        rows = []
        for delay, concurrency in ((0.0, 1), (0.0, 8), (0.5, 8), (0.5, 32)):
            total, resume = run(tmp, images, f"d{delay}c{concurrency}", args.samples, delay, concurrency)
            rows.append((delay, concurrency, total, args.samples / total, resume))
    print(f"\n{args.samples} samples, {args.images} corpus images of 640x480")
    print("| server latency | concurrency | wall (s) | samples/s | resume of the finished run (s) |")
    print("| -------------: | ----------: | -------: | --------: | -----------------------------: |")
    for delay, c, total, rate, resume in rows:
        print(f"| {delay:.1f} s | {c} | {total:.1f} | {rate:.1f} | {resume:.2f} |")


if __name__ == "__main__":
    main()
