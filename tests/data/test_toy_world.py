"""Tests of the toy world generator: layout, id/qrels consistency, modalities, images, BEIR, tokenizer.

Expected names and modalities are written out here from the spec (data-formats.md §1, the toy world
brief), not imported from the code under test, so a drift in the generator fails a test.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmtrain.toy.world import ensure_toy_world, generate_toy_world

SMALL = dict(n_train=40, n_val=12, n_test=12, n_distractors=4, captions_per_image=2, passages_per_scene=3,
             beir_passages=60, beir_train=30, beir_test=10, vocab_size=600)
# dataset -> (dataset id, UniIR task ids)
DATASETS = {"toycap": (0, [0, 3]), "toyqa": (1, [1, 2]), "toysim": (2, [4]), "toyedit": (3, [6, 7, 8])}
QUERY_MOD = {0: "text", 1: "text", 2: "text", 3: "image", 4: "image", 6: "image,text", 7: "image,text", 8: "image,text"}
CAND_MOD = {0: "image", 1: "text", 2: "image,text", 3: "text", 4: "image", 6: "text", 7: "image", 8: "image,text"}
QUERY_FIELDS = ["qid", "query_txt", "query_img_path", "query_modality", "query_src_content",
                "pos_cand_list", "neg_cand_list", "task_id"]
CAND_FIELDS = ["did", "txt", "img_path", "modality", "src_content"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_toy_world(tmp_path_factory.mktemp("toy") / "world", seed=0, **SMALL)


def mbeir(world: Path) -> Path:
    return world / "mbeir"


def queries(world: Path, split: str) -> list[dict]:
    if split == "train":
        return [q for ds in DATASETS for q in read_jsonl(world / f"mbeir/query/train/mbeir_{ds}_train.jsonl")]
    return [q for ds, (_, tasks) in DATASETS.items() for t in tasks
            for q in read_jsonl(world / f"mbeir/query/{split}/mbeir_{ds}_task{t}_{split}.jsonl")]


def pool(world: Path, split: str) -> dict[str, dict]:
    recs = read_jsonl(world / f"mbeir/cand_pool/global/mbeir_union_{split}_cand_pool.jsonl")
    out = {c["did"]: c for c in recs}
    assert len(out) == len(recs), f"duplicate dids in the {split} global pool"
    return out


def test_layout_complete(world: Path) -> None:
    m = mbeir(world)
    expected = ["query/union_train/mbeir_union_up_train.jsonl", "query/union_val/mbeir_union_val.jsonl",
                "instructions/query_instructions.tsv"]
    expected += [f"cand_pool/global/mbeir_union_{s}_cand_pool.jsonl" for s in ("train", "val", "test")]
    for ds, (_, tasks) in DATASETS.items():
        expected += [f"query/train/mbeir_{ds}_train.jsonl", f"qrels/train/mbeir_{ds}_train_qrels.txt"]
        for t in tasks:
            expected.append(f"cand_pool/local/mbeir_{ds}_task{t}_cand_pool.jsonl")
            for s in ("val", "test"):
                expected += [f"query/{s}/mbeir_{ds}_task{t}_{s}.jsonl", f"qrels/{s}/mbeir_{ds}_task{t}_{s}_qrels.txt"]
    missing = [p for p in expected if not (m / p).is_file() or (m / p).stat().st_size == 0]
    assert not missing
    for p in ["beir/corpus.jsonl", "beir/queries.jsonl", "beir/qrels/train.tsv", "beir/qrels/test.tsv",
              "stats.json", ".complete"]:
        assert (world / p).is_file(), p
    assert not list(world.parent.glob(".world.*")), "temporary directories left behind"


def test_same_seed_identical_different_seed_differs(world: Path, tmp_path: Path) -> None:
    again = generate_toy_world(tmp_path / "again", seed=0, **SMALL)
    other = generate_toy_world(tmp_path / "other", seed=1, **SMALL)
    h0, h1, h2 = tree_hashes(world), tree_hashes(again), tree_hashes(other)
    assert h0 == h1
    data = [k for k in h0 if k.endswith((".jsonl", ".tsv", ".txt"))]
    assert len(data) > 40
    assert h0.keys() == h2.keys()  # same layout, other content
    differing = [k for k in data if h0[k] != h2[k]]
    assert "mbeir/query/union_train/mbeir_union_up_train.jsonl" in differing
    assert "beir/corpus.jsonl" in differing


def test_record_fields_and_modalities(world: Path) -> None:
    for split in ("train", "val", "test"):
        for q in queries(world, split):
            assert list(q) == QUERY_FIELDS
            assert q["query_modality"] == QUERY_MOD[q["task_id"]]
            assert (q["query_txt"] is None) == (q["query_modality"] == "image")
            assert (q["query_img_path"] is None) == (q["query_modality"] == "text")
            assert q["neg_cand_list"] == [] and q["pos_cand_list"]
            assert all(isinstance(d, str) for d in q["pos_cand_list"])
            assert q["query_src_content"] is None or isinstance(json.loads(q["query_src_content"]), dict)
            if q["query_txt"] is not None:
                assert q["query_txt"][0].isupper() and q["query_txt"][-1] in ".?!"
        for c in pool(world, split).values():
            assert list(c) == CAND_FIELDS and c["src_content"] is None
            assert (c["txt"] is not None) == ("text" in c["modality"])
            assert (c["img_path"] is not None) == ("image" in c["modality"])


def test_ids_unique_and_prefixed(world: Path) -> None:
    qids: list[str] = []
    dids: list[str] = []
    for split in ("train", "val", "test"):
        qids += [q["qid"] for q in queries(world, split)]
        dids += list(pool(world, split))
    assert len(set(qids)) == len(qids), "qids collide across splits"
    assert len(set(dids)) == len(dids), "dids collide across splits"
    for split in ("train", "val", "test"):
        for q in queries(world, split):
            ds = next(d for d, (_, tasks) in DATASETS.items() if q["task_id"] in tasks)
            assert q["qid"].split(":")[0] == str(DATASETS[ds][0])
            assert all(d.split(":")[0] == str(DATASETS[ds][0]) for d in q["pos_cand_list"])


def test_positives_in_pool_and_qrels_agree(world: Path) -> None:
    m = mbeir(world)
    for split in ("train", "val", "test"):
        p = pool(world, split)
        qs = queries(world, split)
        for q in qs:
            for did in q["pos_cand_list"]:
                assert did in p, f"{q['qid']} -> {did} not in the {split} pool"
                assert p[did]["modality"] == CAND_MOD[q["task_id"]]
        from_queries = {(q["qid"], d, q["task_id"]) for q in qs for d in q["pos_cand_list"]}
        from_qrels = set()
        for f in (m / "qrels" / split).glob("*.txt"):
            for line in f.read_text().splitlines():
                qid, zero, did, rel, task = line.split(" ")
                assert zero == "0" and rel == "1"
                from_qrels.add((qid, did, int(task)))
        assert from_qrels == from_queries
    # most queries have exactly one positive; toycap image->text has one per caption (2 here), toyqa
    # text->text one per passage (3 here)
    for q in queries(world, "test"):
        assert len(q["pos_cand_list"]) == {3: 2, 1: 3}.get(q["task_id"], 1)


def test_all_tasks_and_sizes(world: Path) -> None:
    for split, n in (("train", SMALL["n_train"]), ("val", SMALL["n_val"]), ("test", SMALL["n_test"])):
        qs = queries(world, split)
        for ds, (_, tasks) in DATASETS.items():
            for t in tasks:
                assert sum(q["task_id"] == t for q in qs) == n, (split, ds, t)
    assert {q["task_id"] for q in queries(world, "train")} == {0, 1, 2, 3, 4, 6, 7, 8}
    union = read_jsonl(mbeir(world) / "query/union_train/mbeir_union_up_train.jsonl")
    train = queries(world, "train")
    assert sorted(json.dumps(q) for q in union) == sorted(json.dumps(q) for q in train)
    assert [q["qid"] for q in union] != [q["qid"] for q in train], "union train file is not shuffled"
    union_val = read_jsonl(mbeir(world) / "query/union_val/mbeir_union_val.jsonl")
    keys = [tuple(int(x) for x in q["qid"].split(":")) for q in union_val]
    assert keys == sorted(keys) and len(union_val) == len(queries(world, "val"))


def test_local_pools_homogeneous_and_union(world: Path) -> None:
    union: dict[str, dict] = {}
    for ds, (ds_id, tasks) in DATASETS.items():
        for t in tasks:
            local = read_jsonl(mbeir(world) / f"cand_pool/local/mbeir_{ds}_task{t}_cand_pool.jsonl")
            assert local and all(c["modality"] == CAND_MOD[t] for c in local), (ds, t)
            assert all(c["did"].startswith(f"{ds_id}:") for c in local)
            for c in local:
                assert c["did"] not in union
                union[c["did"]] = c
            # every positive of the pair's test queries is in its local pool
            local_dids = {c["did"] for c in local}
            qs = read_jsonl(mbeir(world) / f"query/test/mbeir_{ds}_task{t}_test.jsonl")
            assert all(d in local_dids for q in qs for d in q["pos_cand_list"])
            # pool-only distractor scenes make the pool larger than the positives
            assert len(local_dids) > len({d for q in qs for d in q["pos_cand_list"]})
    assert union == pool(world, "test")


def test_instructions_cover_used_pairs(world: Path) -> None:
    lines = (mbeir(world) / "instructions/query_instructions.tsv").read_text(encoding="utf-8").splitlines()
    rows = {}
    for line in lines[1:]:
        parts = line.split("\t")
        assert len(parts) == 8, line
        rows[f"{parts[3]}, {parts[0]}, {parts[1]}"] = parts[4:]
    for split in ("train", "val", "test"):
        p = pool(world, split)
        for q in queries(world, split):
            key = f"{q['qid'].split(':')[0]}, {q['query_modality']}, {p[q['pos_cand_list'][0]]['modality']}"
            prompts = rows[key]  # UniIR's lookup key (data-formats.md §1.7)
            assert len(prompts) == 4 and len(set(prompts)) == 4
            assert all(s and s[0].isupper() and s[-1] in ".?!" for s in prompts)
    assert rows["0, text, image"][0] == "Find me a drawn scene that matches the given caption."


def _load_rgb(path: Path) -> np.ndarray:
    img = Image.open(io.BytesIO(path.read_bytes()))
    assert img.format == "JPEG" and img.mode == "RGB" and img.size == (64, 64), path
    return np.asarray(img, dtype=np.float32)


def test_images_decode(world: Path) -> None:
    m = mbeir(world)
    paths = set()
    for split in ("train", "val", "test"):
        paths |= {q["query_img_path"] for q in queries(world, split) if q["query_img_path"]}
        paths |= {c["img_path"] for c in pool(world, split).values() if c["img_path"]}
    assert all(p.startswith("mbeir_images/") for p in paths)
    for p in sorted(paths):
        _load_rgb(m / p)
    for ds in DATASETS:
        for split in ("train", "val", "test"):
            assert all(f"mbeir_images/{ds}_images/{split}/" in p for p in paths
                       if p.startswith(f"mbeir_images/{ds}_images/") and f"/{split}/" in p)


# Rough RGB of each named colour, for a nearest-colour check that images show what texts say.
PALETTE = {"red": (255, 0, 0), "green": (0, 170, 40), "blue": (30, 80, 255), "yellow": (255, 230, 0),
           "purple": (150, 40, 210), "orange": (255, 130, 0), "white": (255, 255, 255),
           "black": (0, 0, 0), "gray": (128, 128, 128), "brown": (105, 60, 20), "navy": (10, 20, 85)}
SYNONYMS = {"violet": "purple", "grey": "gray"}


def _colour_words(text: str) -> set[str]:
    words = text.lower().replace(",", " ").replace(".", " ").replace(";", " ").replace(":", " ").split()
    return {SYNONYMS.get(w, w) for w in words} & set(PALETTE)


def test_images_show_the_caption_colours(world: Path) -> None:
    """For toycap test scenes: every colour a query caption names covers a real area of its image."""
    m = mbeir(world)
    p = pool(world, "test")
    names = list(PALETTE)
    ref = np.array([PALETTE[n] for n in names], dtype=np.float32)
    for q in [q for q in queries(world, "test") if q["task_id"] == 0]:
        pix = _load_rgb(m / p[q["pos_cand_list"][0]]["img_path"]).reshape(-1, 3)
        nearest = np.argmin(((pix[:, None, :] - ref[None]) ** 2).sum(-1), axis=1)
        area = {n: int((nearest == i).sum()) for i, n in enumerate(names)}
        for colour in _colour_words(q["query_txt"].replace("navy blue", "navy")):
            assert area[colour] >= 40, (q["query_txt"], colour, area)


def test_modality_bias_distractor_exists(world: Path) -> None:
    """A toycap text->image query's scene also has caption candidates in the pool (same image, via the
    image->text query): a paraphrase naming the same colours, but not a copy of the query."""
    p = pool(world, "test")
    qs = queries(world, "test")
    captions_of_image = {q["query_img_path"]: q["pos_cand_list"] for q in qs if q["task_id"] == 3}
    for q in (q for q in qs if q["task_id"] == 0):
        img = p[q["pos_cand_list"][0]]["img_path"]
        texts = [p[d]["txt"] for d in captions_of_image[img]]
        assert texts and all(p[d]["modality"] == "text" for d in captions_of_image[img])
        colours = _colour_words(q["query_txt"].replace("navy blue", "navy"))
        for t in texts:
            assert t != q["query_txt"]
            assert _colour_words(t.replace("navy blue", "navy")) == colours


def test_toysim_query_nearest_its_positive(world: Path) -> None:
    """The jittered query image is a re-render: in pixel space it is nearest to its own candidate for
    nearly every query, yet it is not a byte copy."""
    m = mbeir(world)
    p = pool(world, "test")
    qs = [q for q in queries(world, "test") if q["task_id"] == 4]
    dids = [d for d, c in p.items() if c["modality"] == "image" and c["did"].startswith("2:")]
    cands = np.stack([_load_rgb(m / p[d]["img_path"]).ravel() for d in dids])
    hits = 0
    for q in qs:
        assert (m / q["query_img_path"]).read_bytes() != (m / p[q["pos_cand_list"][0]]["img_path"]).read_bytes()
        x = _load_rgb(m / q["query_img_path"]).ravel()
        hits += dids[int(np.argmin(((cands - x) ** 2).sum(1)))] == q["pos_cand_list"][0]
    assert hits >= 0.8 * len(qs)


def test_scenes_disjoint_across_pools(world: Path) -> None:
    """No two image candidates anywhere are the same picture (disjoint scenes per dataset and split),
    except the toyedit image and image+text candidates that deliberately share their target image."""
    m = mbeir(world)
    seen: dict[str, str] = {}
    for split in ("train", "val", "test"):
        for c in pool(world, split).values():
            if c["img_path"]:
                h = hashlib.sha256((m / c["img_path"]).read_bytes()).hexdigest()
                if h in seen:
                    assert seen[h] == c["img_path"] and c["did"].startswith("3:")
                seen[h] = c["img_path"]


def test_beir(world: Path) -> None:
    corpus = read_jsonl(world / "beir/corpus.jsonl")
    qs = read_jsonl(world / "beir/queries.jsonl")
    assert all(set(d) == {"_id", "title", "text"} for d in corpus) and len(corpus) == SMALL["beir_passages"]
    assert all(set(q) == {"_id", "text"} for q in qs)
    doc_ids, q_ids = {d["_id"] for d in corpus}, {q["_id"] for q in qs}
    assert len(doc_ids) == len(corpus) and len(q_ids) == len(qs)
    per_split = {}
    for split, n in (("train", SMALL["beir_train"]), ("test", SMALL["beir_test"])):
        lines = (world / f"beir/qrels/{split}.tsv").read_text().splitlines()
        assert lines[0] == "query-id\tcorpus-id\tscore"
        rows = [line.split("\t") for line in lines[1:]]
        assert len(rows) == n and all(r[0] in q_ids and r[1] in doc_ids and r[2] == "1" for r in rows)
        assert len({r[0] for r in rows}) == n  # exactly one relevant passage per query
        per_split[split] = rows
    assert not {r[0] for r in per_split["train"]} & {r[0] for r in per_split["test"]}


def test_tokenizer_loads(world: Path) -> None:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    for tok in (AutoTokenizer.from_pretrained(str(world / "tokenizer")),
                PreTrainedTokenizerFast.from_pretrained(str(world / "tokenizer"))):
        assert tok.eos_token_id == 3 and tok.pad_token_id == 0
        ids = tok("A big red circle on the left, navy background.")["input_ids"]
        assert ids[-1] == 3 and tok.unk_token_id not in ids
        assert len(ids) <= 16  # whole-word merges of the toy vocabulary, not byte soup


def test_ensure_caches_and_regenerates(tmp_path: Path) -> None:
    small = dict(SMALL, n_train=5, n_val=3, n_test=3, n_distractors=1)
    out = ensure_toy_world(tmp_path / "w", seed=3, **small)
    stamp = (out / ".complete").stat().st_mtime_ns
    start = time.perf_counter()
    assert ensure_toy_world(tmp_path / "w", seed=3, **small) == out
    assert time.perf_counter() - start < 0.5 and (out / ".complete").stat().st_mtime_ns == stamp
    ensure_toy_world(tmp_path / "w", seed=3, **dict(small, n_test=4))  # other sizes: rebuilt
    assert json.loads((out / "stats.json").read_text())["sizes"]["n_test"] == 4
    assert len(queries(out, "test")) == 4 * 8
    (out / ".complete").unlink()  # an incomplete world is rebuilt too
    ensure_toy_world(tmp_path / "w", seed=3, **dict(small, n_test=4))
    assert (out / ".complete").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"], "temporary directories left behind"


def _ensure_in_child(out: str) -> None:
    ensure_toy_world(out, seed=5, **dict(SMALL, n_train=5, n_val=3, n_test=3, n_distractors=1))


def test_ensure_two_processes_race(tmp_path: Path) -> None:
    """Two processes building the same world at once both end with one complete, matching copy."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")  # fork: no re-import, so both start building at the same moment
    procs = [ctx.Process(target=_ensure_in_child, args=(str(tmp_path / "w"),)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (tmp_path / "w/.complete").is_file()
    assert json.loads((tmp_path / "w/stats.json").read_text())["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"], "temporary directories left behind"
