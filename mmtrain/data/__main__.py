"""``python -m mmtrain.data``: convert released datasets to shards, write the toy world in other layouts,
combine manifests for mixed training.

    python -m mmtrain.data convert mbeir          --root M-BEIR [--union-train] --out shards/mbeir
    python -m mmtrain.data convert mmeb           --train-root MMEB-train [--eval-root MMEB-eval] --image-root imgs --out ...
    python -m mmtrain.data convert mme5-hardneg   --root mmE5-MMEB-hardneg --image-root imgs --out ...
    python -m mmtrain.data convert mme5-synthetic --root mmE5-synthetic --image-root images --out ...
    python -m mmtrain.data convert beir           --root msmarco --out ...
    python -m mmtrain.data convert tevatron       --train train.jsonl [--test test.jsonl] [--corpus corpus.jsonl] --out ...
    python -m mmtrain.data toy-layout {mmeb,tevatron} --toy-world DIR --out DIR
    python -m mmtrain.data mix --out DIR MANIFEST_DIR=WEIGHT [...]

Common options: ``--max-bad 0.001`` (share of bad input records tolerated; default 0: any fails),
``--workers 2``, ``--max-short-side 256`` (0: keep images as they are), ``--samples-per-shard``,
``--min-shards``, ``--no-check-images``. A killed conversion, run again, resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from mmtrain.data.convert import ConversionError, convert


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory (shards + manifest.json)")
    p.add_argument("--max-bad", type=float, default=0.0, help="tolerated share of bad input records (default 0)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-short-side", type=int, default=256, help="re-encode larger images (0: never)")
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--min-shards", type=int, default=8, help="minimum shards per source (ranks x workers)")
    p.add_argument("--no-check-images", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mmtrain.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="convert a released dataset to shards")
    sources = conv.add_subparsers(dest="source", required=True)

    p = sources.add_parser("mbeir", help="M-BEIR layout (TIGER-Lab/M-BEIR)")
    p.add_argument("--root", required=True)
    p.add_argument("--splits", default="train,val,test")
    p.add_argument("--union-train", action="store_true", help="train on query/union_train/mbeir_union_up_train.jsonl")
    _common(p)
    p = sources.add_parser("mmeb", help="MMEB-train and/or MMEB-eval tables")
    p.add_argument("--train-root")
    p.add_argument("--eval-root")
    p.add_argument("--image-root")
    p.add_argument("--eval-image-root")
    p.add_argument("--split", default="original", help="MMEB-train split: original | diverse_instruction | train")
    _common(p)
    p = sources.add_parser("mme5-hardneg", help="intfloat/mmE5-MMEB-hardneg")
    p.add_argument("--root", required=True)
    p.add_argument("--image-root")
    p.add_argument("--split", default="train")
    _common(p)
    p = sources.add_parser("mme5-synthetic", help="intfloat/mmE5-synthetic")
    p.add_argument("--root", required=True)
    p.add_argument("--image-root")
    _common(p)
    p = sources.add_parser("beir", help="BEIR layout: corpus.jsonl, queries.jsonl, qrels/*.tsv")
    p.add_argument("--root", required=True)
    p.add_argument("--dataset")
    p.add_argument("--language", default="en")
    _common(p)
    p = sources.add_parser("tevatron", help="Tevatron jsonl rows (legacy or id-based) + corpus")
    for name in ("train", "val", "test", "corpus", "val-pool", "test-pool", "image-root"):
        p.add_argument(f"--{name}")
    p.add_argument("--dataset", default="tevatron")
    p.add_argument("--language", default="en")
    _common(p)

    toy = sub.add_parser("toy-layout", help="write the toy world's M-BEIR files in another layout")
    toy.add_argument("layout", choices=["mmeb", "tevatron"])
    toy.add_argument("--toy-world", required=True, help="a toy world directory (python -m mmtrain.toy.world)")
    toy.add_argument("--out", required=True)

    mix = sub.add_parser("mix", help="one manifest over several converted sources, weighted")
    mix.add_argument("--out", required=True)
    mix.add_argument("--eval-from", help="manifest dir whose val/test sources and pools are evaluated (default: first)")
    mix.add_argument("parts", nargs="+", metavar="MANIFEST_DIR=WEIGHT")
    return parser


def _reader_kwargs(args: argparse.Namespace) -> dict:
    a = vars(args)
    if args.source == "mbeir":
        return {"root": a["root"], "splits": a["splits"].split(","), "union_train": a["union_train"]}
    if args.source == "mmeb":
        return {"train_root": a["train_root"], "eval_root": a["eval_root"], "image_root": a["image_root"],
                "eval_image_root": a["eval_image_root"], "split": a["split"]}
    if args.source == "mme5-hardneg":
        return {"root": a["root"], "image_root": a["image_root"], "split": a["split"]}
    if args.source == "mme5-synthetic":
        return {"root": a["root"], "image_root": a["image_root"]}
    if args.source == "beir":
        return {"root": a["root"], "dataset": a["dataset"], "language": a["language"]}
    pools = {s: a[f"{s}_pool"] for s in ("val", "test") if a[f"{s}_pool"]}
    return {"train": a["train"], "val": a["val"], "test": a["test"], "corpus": a["corpus"], "pools": pools,
            "dataset": a["dataset"], "image_root": a["image_root"], "language": a["language"]}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    if args.command == "toy-layout":
        from mmtrain.toy.layouts import write_toy_layout

        print(write_toy_layout(args.layout, args.toy_world, args.out))
        return 0
    if args.command == "mix":
        from mmtrain.data.mix import write_mix

        parts = {}
        for part in args.parts:
            path, _, weight = part.rpartition("=")
            parts[path] = float(weight)
        print(json.dumps(write_mix(args.out, parts, eval_from=args.eval_from)["weights"], indent=1))
        return 0
    try:
        manifest = convert(args.source, args.out, **_reader_kwargs(args), max_bad=args.max_bad, workers=args.workers,
                           max_short_side=args.max_short_side or None, samples_per_shard=args.samples_per_shard,
                           min_shards_per_source=args.min_shards, check_images=not args.no_check_images)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, datasets in sorted(manifest["counts"].items()):
        print(f"{split}: {sum(sum(t.values()) for t in datasets.values())} queries {datasets}")
    for split, pool in sorted(manifest["pools"].items()):
        print(f"pool/{split}: {pool['count']} candidates {pool['count_per_modality']}")
    report = manifest["bad_input"]
    print(f"skipped {report['skipped_records']} of {report['input_records']} records "
          f"{ {k: v['count'] for k, v in report['kinds'].items()} }; repairs {report['repairs']}")
    print(f"{args.out}: {manifest['bytes'] / 1e6:.1f} MB, {manifest['images']} images, "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
