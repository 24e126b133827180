"""The toy world: a small, seeded multimodal retrieval dataset in the real M-BEIR on-disk layout.

It is the project's embedded default data: the same M-BEIR reader serves it and real M-BEIR, and a
tiny model learns from it on CPU in a minute (environment.md §12). Four datasets, eight tasks:

    0 toycap   task 0 text->image, task 3 image->text              (like MSCOCO)
    1 toyqa    task 1 text->text,  task 2 text->image,text         (like WebQA)
    2 toysim   task 4 image->image (jittered re-render -> canonical render, like NIGHTS)
    3 toyedit  tasks 6/7/8 (image,text) -> text / image / image,text (like CIRR / OVEN)

Every dataset and split draws its own scenes (no scene key is used twice in the world), so the only
candidates that show a query's content are its labelled positives, plus, on purpose, the same scene
in the other modalities of its dataset (the modality-bias distractors MM-Embed measures).

Layout written under ``out_dir``: ``mbeir/`` (an M-BEIR root, data-formats.md §1), ``beir/`` (a small
text set, §6.1), ``tokenizer/`` (a BPE trained on all texts), ``stats.json`` and ``.complete`` (last).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mmtrain.data.schema import TASKS, format_string, hash_qid
from mmtrain.io import atomic_dir, is_complete, remove_dir
from mmtrain.toy import scenes as ts
from mmtrain.toy.text import instructions_tsv, make_beir
from mmtrain.toy.tokenizer import train_bpe_tokenizer

VERSION = 1  # bump when the generator's output changes, so cached worlds are rebuilt
DATASETS: dict[str, tuple[int, tuple[int, ...]]] = {
    "toycap": (0, (0, 3)), "toyqa": (1, (1, 2)), "toysim": (2, (4,)), "toyedit": (3, (6, 7, 8)),
}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ToySizes:
    """How big the world is. Queries are per (dataset, task) pair; every query scene also puts its
    candidates in the pool, and ``n_distractors`` pool-only scenes per dataset pad the val/test pools."""

    n_train: int = 1200
    n_val: int = 120
    n_test: int = 150
    n_distractors: int = 50
    # toycap: caption texts per image (task 3 queries have this many positives). 5, as MSCOCO: then a
    # text->image model with modality bias fills its top 5 with captions of the right scene, the
    # effect MM-Embed measures and modality-aware hard negatives fix (docs/stages.md).
    captions_per_image: int = 5
    # toyqa: passages per scene (task 1 queries have this many positives). 5 as well, for the same
    # reason on text->(image,text): a biased model's top 5 is then the scene's passages, not its titled
    # image (with one passage the pair came second and R@5 hid the bias; docs/stages.md).
    passages_per_scene: int = 5
    beir_passages: int = 1500
    beir_train: int = 1000
    beir_test: int = 200
    vocab_size: int = 1000


class _Split:
    """Records of one split while they are generated."""

    def __init__(self) -> None:
        self.queries: dict[str, list[dict]] = {ds: [] for ds in DATASETS}
        self.cands: dict[str, list[dict]] = {ds: [] for ds in DATASETS}


class _World:
    """Generates the records and images of all splits, in one fixed order from one RNG."""

    def __init__(self, root: Path, seed: int, sizes: ToySizes) -> None:
        self.root, self.sizes = root, sizes
        self.rng = random.Random(seed)
        self.book = ts.SceneBook()
        self.next_qid = {ds: 1 for ds in DATASETS}
        self.next_did = {ds: 1 for ds in DATASETS}  # one counter per dataset over all splits: no collisions
        self.splits = {s: _Split() for s in SPLITS}

    def image(self, ds: str, split: str, name: str, data: bytes) -> str:
        rel = f"mbeir_images/{ds}_images/{split}/{name}.jpg"
        (self.root / rel).write_bytes(data)
        return rel

    def cand(self, ds: str, split: str, txt: str | None, img: str | None) -> str:
        did = f"{DATASETS[ds][0]}:{self.next_did[ds]}"
        self.next_did[ds] += 1
        modality = "image,text" if txt and img else ("image" if img else "text")
        self.splits[split].cands[ds].append({"did": did, "txt": format_string(txt) if txt else None,
                                             "img_path": img, "modality": modality, "src_content": None})
        return did

    def query(self, ds: str, split: str, task: int, txt: str | None, img: str | None,
              pos: list[str], src: dict) -> None:
        qid = f"{DATASETS[ds][0]}:{self.next_qid[ds]}"
        self.next_qid[ds] += 1
        modality = TASKS[task][0]
        self.splits[split].queries[ds].append({
            "qid": qid, "query_txt": format_string(txt) if txt else None, "query_img_path": img,
            "query_modality": modality, "query_src_content": json.dumps(src), "pos_cand_list": pos,
            "neg_cand_list": [], "task_id": task})

    def build(self) -> None:
        s = self.sizes
        for ds in DATASETS:
            for split in SPLITS:
                (self.root / f"mbeir_images/{ds}_images/{split}").mkdir(parents=True, exist_ok=True)
        for split, n in (("train", s.n_train), ("val", s.n_val), ("test", s.n_test)):
            extra = 0 if split == "train" else s.n_distractors
            for k in range(n + extra):
                self.toycap(split, k, with_query=k < n)
            for k in range(n + extra):
                self.toyqa(split, k, with_query=k < n)
            for k in range(n + extra):
                self.toysim(split, k, with_query=k < n)
            for k in range(n + extra):
                self.toyedit(split, k, with_query=k < n)

    def toycap(self, split: str, k: int, with_query: bool) -> None:
        rng, scene = self.rng, self.book.fresh(self.rng)
        img = self.image("toycap", split, f"s{k:05d}", ts.render(scene))
        img_did = self.cand("toycap", split, None, img)
        used: set[int] = set()
        cap_dids = []
        for _ in range(self.sizes.captions_per_image):
            text, t = ts.caption(scene, rng, avoid=used)
            used.add(t)
            cap_dids.append(self.cand("toycap", split, text, None))
        if with_query:
            text, _ = ts.caption(scene, rng, avoid=used)  # another template: a paraphrase, not a copy
            self.query("toycap", split, 0, text, None, [img_did], {"scene": scene.key})
            self.query("toycap", split, 3, None, img, cap_dids, {"scene": scene.key})

    def toyqa(self, split: str, k: int, with_query: bool) -> None:
        rng, scene = self.rng, self.book.fresh(self.rng)
        img = self.image("toyqa", split, f"s{k:05d}", ts.render(scene))
        passage_dids = [self.cand("toyqa", split, ts.passage(scene, rng), None)
                        for _ in range(self.sizes.passages_per_scene)]
        pair_did = self.cand("toyqa", split, ts.title(scene, rng), img)
        if with_query:
            self.query("toyqa", split, 1, ts.question(scene, rng), None, passage_dids, {"scene": scene.key})
            self.query("toyqa", split, 2, ts.question(scene, rng), None, [pair_did], {"scene": scene.key})

    def toysim(self, split: str, k: int, with_query: bool) -> None:
        scene = self.book.fresh(self.rng)
        img = self.image("toysim", split, f"s{k:05d}", ts.render(scene))
        did = self.cand("toysim", split, None, img)
        if with_query:
            jittered = ts.render(scene, jitter=self.rng)
            qimg = self.image("toysim", split, f"s{k:05d}_q", jittered)
            self.query("toysim", split, 4, None, qimg, [did], {"scene": scene.key})

    def toyedit(self, split: str, k: int, with_query: bool) -> None:
        rng, target = self.rng, self.book.fresh(self.rng)
        img = self.image("toyedit", split, f"s{k:05d}", ts.render(target))
        dids = {6: self.cand("toyedit", split, ts.caption(target, rng)[0], None),
                7: self.cand("toyedit", split, None, img),
                8: self.cand("toyedit", split, ts.caption(target, rng)[0], img)}
        if not with_query:
            return
        # One query per task, each from its own reference scene and edit, all leading to this target.
        for task in (6, 7, 8):
            ref, text, kind = ts.make_edit(target, rng, self.book)
            rimg = self.image("toyedit", split, f"s{k:05d}_ref{task}", ts.render(ref))
            self.query("toyedit", split, task, text, rimg, [dids[task]],
                       {"reference": ref.key, "target": target.key, "edit": kind})


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def _write_qrels(path: Path, queries: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for q in queries:
            for did in q["pos_cand_list"]:
                f.write(f"{q['qid']} 0 {did} 1 {q['task_id']}\n")


def _modality_counts(cands: list[dict]) -> dict[str, int]:
    out = {m: sum(c["modality"] == m for c in cands) for m in ("text", "image", "image,text")}
    return out | {"total": len(cands)}


def _write_mbeir(world: _World, root: Path) -> dict:
    """Write query files, pools, qrels and instructions under ``root``; return the split statistics."""
    stats: dict = {}
    for split in SPLITS:
        sp = world.splits[split]
        pairs: dict[str, int] = {}
        for ds, (_, tasks) in DATASETS.items():
            if split == "train":
                _write_jsonl(root / f"query/train/mbeir_{ds}_train.jsonl", sp.queries[ds])
                _write_qrels(root / f"qrels/train/mbeir_{ds}_train_qrels.txt", sp.queries[ds])
            for task in tasks:
                qs = [q for q in sp.queries[ds] if q["task_id"] == task]
                pairs[f"{ds}_task{task}"] = len(qs)
                if split != "train":
                    _write_jsonl(root / f"query/{split}/mbeir_{ds}_task{task}_{split}.jsonl", qs)
                    _write_qrels(root / f"qrels/{split}/mbeir_{ds}_task{task}_{split}_qrels.txt", qs)
        all_cands = [c for ds in DATASETS for c in sp.cands[ds]]
        if split == "test":
            # Local pools are homogeneous: only the task's target modality; the global test pool is
            # their union (each candidate belongs to exactly one (dataset, task) by its modality).
            union: list[dict] = []
            local_sizes = {}
            for ds, (_, tasks) in DATASETS.items():
                for task in tasks:
                    pool = [c for c in sp.cands[ds] if c["modality"] == TASKS[task][1]]
                    _write_jsonl(root / f"cand_pool/local/mbeir_{ds}_task{task}_cand_pool.jsonl", pool)
                    local_sizes[f"{ds}_task{task}"] = len(pool)
                    union += pool
            assert len(union) == len(all_cands), "a test candidate is in no local pool"
            all_cands = union
            stats["local_pools"] = local_sizes
        _write_jsonl(root / f"cand_pool/global/mbeir_union_{split}_cand_pool.jsonl", all_cands)
        stats[split] = {"queries": pairs, "queries_total": sum(pairs.values()),
                        "pool": _modality_counts(all_cands)}
    train = [q for ds in DATASETS for q in world.splits["train"].queries[ds]]
    random.Random(world.rng.random()).shuffle(train)  # derived from the seed: deterministic
    _write_jsonl(root / "query/union_train/mbeir_union_up_train.jsonl", train)
    val = sorted((q for ds in DATASETS for q in world.splits["val"].queries[ds]), key=lambda q: hash_qid(q["qid"]))
    _write_jsonl(root / "query/union_val/mbeir_union_val.jsonl", val)
    (root / "instructions").mkdir(parents=True, exist_ok=True)
    (root / "instructions/query_instructions.tsv").write_text(instructions_tsv(), encoding="utf-8")
    return stats


def _write_beir(root: Path, rng: random.Random, sizes: ToySizes) -> tuple[dict, list[str]]:
    corpus, queries, train, test = make_beir(rng, sizes.beir_passages, sizes.beir_train, sizes.beir_test)
    _write_jsonl(root / "corpus.jsonl", corpus)
    _write_jsonl(root / "queries.jsonl", queries)
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, d in rows]
        (root / f"qrels/{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    texts = [d["title"] + " " + d["text"] for d in corpus] + [q["text"] for q in queries]
    return {"corpus": len(corpus), "queries": len(queries), "train_qrels": len(train), "test_qrels": len(test)}, texts


def _build(tmp: Path, seed: int, sizes: ToySizes) -> dict:
    """Generate the whole world into ``tmp``; return stats.json's content."""
    if sizes.captions_per_image >= len(ts.CAPTION_TEMPLATES):
        raise ValueError("captions_per_image must leave a caption template for the query")
    world = _World(tmp / "mbeir", seed, sizes)
    world.build()
    stats = {"version": VERSION, "seed": seed, "sizes": asdict(sizes)}
    stats["mbeir"] = _write_mbeir(world, tmp / "mbeir")
    stats["beir"], beir_texts = _write_beir(tmp / "beir", random.Random(f"beir-{seed}"), sizes)
    texts = [r["query_txt"] for sp in world.splits.values() for qs in sp.queries.values() for r in qs if r["query_txt"]]
    texts += [c["txt"] for sp in world.splits.values() for cs in sp.cands.values() for c in cs if c["txt"]]
    texts += [p for line in instructions_tsv().splitlines()[1:] for p in line.split("\t")[4:]]
    tok = train_bpe_tokenizer(texts + beir_texts, vocab_size=sizes.vocab_size)
    tok.save_pretrained(str(tmp / "tokenizer"))
    stats["tokenizer"] = {"vocab_size": len(tok), "eos_token_id": tok.eos_token_id}
    (tmp / "stats.json").write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    return stats


def _matches(out_dir: Path, seed: int, sizes: ToySizes) -> bool:
    """Whether ``out_dir`` holds a complete world made by this version with this seed and sizes."""
    try:
        if not is_complete(out_dir):
            return False
        stats = json.loads((out_dir / "stats.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stats.get("version") == VERSION and stats.get("seed") == seed and stats.get("sizes") == asdict(sizes)


def _generate(out_dir: Path, seed: int, sizes: ToySizes, accept_existing: bool) -> Path:
    out_dir = Path(out_dir).absolute()
    if accept_existing and not _matches(out_dir, seed, sizes):
        remove_dir(out_dir)  # a world of other settings: generated data, regenerated
    try:
        with atomic_dir(out_dir, overwrite=not accept_existing, marker={"version": VERSION, "seed": seed}) as tmp:
            _build(tmp, seed, sizes)
    except FileExistsError:
        if not _matches(out_dir, seed, sizes):
            raise
    return out_dir  # or another process won the race with an identical world


def generate_toy_world(out_dir: str | os.PathLike, *, seed: int = 0, **sizes: int) -> Path:
    """(Re)generate the toy world into ``out_dir`` (atomically: built in a temp dir, then renamed).
    ``sizes``: fields of ``ToySizes`` to change (an unknown name is a TypeError)."""
    return _generate(Path(out_dir), seed, ToySizes(**sizes), accept_existing=False)


def ensure_toy_world(out_dir: str | os.PathLike, *, seed: int = 0, **sizes: int) -> Path:
    """Return ``out_dir`` at once if it holds a complete world with this seed and these sizes;
    otherwise generate it. Safe under races: a process that loses the rename uses the winner's copy."""
    sizes = ToySizes(**sizes)
    out = Path(out_dir).absolute()
    if _matches(out, seed, sizes):
        return out
    return _generate(out, seed, sizes, accept_existing=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the toy world (M-BEIR + BEIR layout).")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="regenerate even if a matching world exists")
    for name, default in asdict(ToySizes()).items():
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=default)
    args = vars(parser.parse_args(argv))
    out_dir, seed, force = args.pop("out_dir"), args.pop("seed"), args.pop("force")
    start = time.perf_counter()
    out = (generate_toy_world if force else ensure_toy_world)(out_dir, seed=seed, **args)
    elapsed = time.perf_counter() - start
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    for split in SPLITS:
        st = stats["mbeir"][split]
        print(f"{split}: {st['queries_total']} queries {st['queries']}")
        print(f"{split}: pool {st['pool']}")
    print(f"beir: {stats['beir']}")
    print(f"tokenizer: {stats['tokenizer']}")
    print(f"{out} ready in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
