"""Benchmark: samples/s of the shard stream vs a naive per-record jsonl + PIL loader (UniIR style).

    python -m mmtrain.bench.data_stream [--records 800] [--batches 40] [--batch-size 32] [--workers 2]
                                        [--resume-step 2000] [--no-throughput]

Both sides do the same work per sample: decode the query image, resize it to CLIP's 224 px, tokenise
the query and positive text (the same ``ClipSFProcessor``), and collate (the same ``TrainCollator``),
in 2 DataLoader workers. The data is an MMEB-style set of photo-sized images (640 x 480 JPEG) written
once to a temporary directory.

- naive: UniIR's ``MBEIRMainDataset`` pattern: the jsonl loaded into memory, every ``__getitem__``
  opens the record's original image file from disk; a shuffled map-style DataLoader.
- shards: the same set converted once by ``python -m mmtrain.data convert mmeb`` (images re-encoded
  to short side 256, 8 shards), read by ``TrainStream`` (sequential tar reads, shuffle buffer).

The two alternate ``--repeats`` times; the median throughput after one warm-up batch is compared.
Conversion time is printed too (a one-off cost). Not a test: timings depend on the machine.

Resume (``--resume-step N``, 0 = off): seconds from creating the DataLoader of a stream resumed at
global batch N to its first batch, for ``TrainStream`` (skips by counting the batch plans and reading at
most one pass of raw samples per reader) and ``ReplayStream`` (the earlier behaviour, kept here only:
every example before N is read and built, then dropped); both must yield the same first batch.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mmtrain.data.collate import TrainCollator
from mmtrain.data.convert import convert
from mmtrain.data.schema import Item, TrainExample
from mmtrain.data.stream import TrainStream
from mmtrain.models.clip_sf import ClipSFBackbone, TinyClip
from mmtrain.toy.tokenizer import train_bpe_tokenizer

class ReplayStream(TrainStream):
    """The stream's resume before the skip-by-count: every worker builds each of its batches from batch
    0 and drops those before ``start_batch`` (what finite mode still does)."""

    def _resume_point(self, residue: int, num_workers: int) -> tuple[int, list[int]]:
        return residue, [0] * len(self.sources)


WORDS = "red green blue small large cat dog car tree house river bird boat city street beach".split()


def make_dataset(root: Path, n: int, seed: int = 0) -> None:
    """``n`` MMEB-train rows (jsonl) with a 640 x 480 photo-like JPEG query image and a caption."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        # smooth random colour field + noise: compresses like a photo (~40-70 kB), not like a flat image
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((640, 480), Image.BICUBIC)
        noisy = np.clip(np.asarray(img, dtype=np.int16) + rng.integers(-12, 12, (480, 640, 3)), 0, 255)
        Image.fromarray(noisy.astype(np.uint8)).save(root / f"images/{i:06d}.jpg", quality=90)
        caption = " ".join(rng.choice(WORDS, 8))
        rows.append({"qry": "<|image_1|>\nFind a caption describing the given image.", "qry_image_path":
                     f"images/{i:06d}.jpg", "pos_text": caption, "pos_image_path": "", "neg_text": "",
                     "neg_image_path": ""})
    (root / "train/Bench").mkdir(parents=True)
    (root / "train/Bench/original.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


class NaiveDataset(Dataset):
    """UniIR style: records in memory, one image file opened per ``__getitem__``."""

    def __init__(self, jsonl: Path, image_root: Path):
        self.rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
        self.image_root = image_root

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> TrainExample:
        r = self.rows[i]
        image = (self.image_root / r["qry_image_path"]).read_bytes()
        text = r["qry"].replace("<|image_1|>\n", "")
        return TrainExample(Item(text, image, "image,text"), Item(r["pos_text"], None, "text"), key=str(i))


def endless(loader):
    """Epoch after epoch of a map-style loader (the shard stream is endless already)."""
    while True:
        yield from loader


def throughput(loader, n_batches: int, batch_size: int) -> float:
    it = endless(loader)
    next(it)  # warm-up: worker start, first shard / file open
    start = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * batch_size / (time.perf_counter() - start)


def first_batch_seconds(stream: TrainStream, workers: int) -> tuple[float, Any]:
    start = time.perf_counter()
    batch = next(iter(DataLoader(stream, batch_size=None, num_workers=workers)))
    return time.perf_counter() - start, batch


def resume_table(shards: Path, args: argparse.Namespace, collate: TrainCollator) -> None:
    """Time to the first batch of a stream resumed at ``--resume-step``, skip-by-count vs replay."""
    times: dict[str, list[float]] = {"skip by count (TrainStream)": [], "replay (old)": []}
    first: dict[str, Any] = {}
    for _ in range(args.repeats):
        for name, cls in zip(times, (TrainStream, ReplayStream)):
            stream = cls(shards, batch_size=args.batch_size, collate_fn=collate, shuffle_buffer=256, seed=0,
                         start_batch=args.resume_step)
            seconds, first[name] = first_batch_seconds(stream, args.workers)
            times[name].append(seconds)
    same = all(torch.equal(a, b) for a, b in zip(*(
        [v for v in batch.values() if isinstance(v, torch.Tensor)] for batch in first.values())))
    passes = args.resume_step * args.batch_size / args.records
    print(f"\n| resume at step {args.resume_step} (batch {args.batch_size}, {passes:.0f} passes over "
          f"{args.records} records, {args.workers} workers) | median s to first batch | per repeat |")
    print("|---|---:|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    print(f"\nsame first batch: {same}; replay / skip: "
          f"{statistics.median(times['replay (old)']) / statistics.median(times['skip by count (TrainStream)']):.1f}x")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=800)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--resume-step", type=int, default=0, help="also time a resume at this step (0: off)")
    p.add_argument("--no-throughput", action="store_true", help="skip the throughput comparison")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "mmeb"
        t0 = time.perf_counter()
        make_dataset(root, args.records)
        t1 = time.perf_counter()
        convert("mmeb", Path(tmp) / "shards", train_root=root / "train", image_root=root, workers=args.workers,
                samples_per_shard=max(1, args.records // 8), check_images=True)
        t2 = time.perf_counter()
        words = [" ".join(random.Random(i).choices(WORDS, k=8)) for i in range(200)]
        tok = train_bpe_tokenizer(words + ["Find a caption describing the given image."], vocab_size=300)
        tok.save_pretrained(str(Path(tmp) / "tok"))
        backbone = ClipSFBackbone(tokenizer=str(Path(tmp) / "tok"), tiny=TinyClip(image_size=224), max_text_length=64)
        collate = TrainCollator(backbone.build_processor())
        src_mb = sum(f.stat().st_size for f in (root / "images").iterdir()) / 1e6
        shard_mb = sum(f.stat().st_size for f in (Path(tmp) / "shards").rglob("*.tar")) / 1e6
        print(f"data: {args.records} records, {src_mb:.1f} MB of 640x480 JPEGs (made in {t1 - t0:.1f} s); "
              f"converted to {shard_mb:.1f} MB of shards in {t2 - t1:.1f} s")
        if args.resume_step:
            resume_table(Path(tmp) / "shards", args, collate)
        if args.no_throughput:
            return
        results: dict[str, list[float]] = {"naive jsonl + PIL": [], "shard stream": []}
        for _ in range(args.repeats):
            naive = DataLoader(NaiveDataset(root / "train/Bench/original.jsonl", root), batch_size=args.batch_size,
                               shuffle=True, num_workers=args.workers, collate_fn=collate)
            results["naive jsonl + PIL"].append(throughput(naive, args.batches, args.batch_size))
            stream = TrainStream(Path(tmp) / "shards", batch_size=args.batch_size, collate_fn=collate,
                                 shuffle_buffer=256, seed=0)
            shards = DataLoader(stream, batch_size=None, num_workers=args.workers)
            results["shard stream"].append(throughput(shards, args.batches, args.batch_size))
        print(f"\n| loader ({args.workers} workers, batch {args.batch_size}) | median samples/s | per repeat |")
        print("|---|---:|---|")
        for name, values in results.items():
            print(f"| {name} | {statistics.median(values):.0f} | {', '.join(f'{v:.0f}' for v in values)} |")
        ratio = statistics.median(results["shard stream"]) / statistics.median(results["naive jsonl + PIL"])
        print(f"\nspeed-up of the shard stream: {ratio:.2f}x (target >= 2x)")


if __name__ == "__main__":
    main()
