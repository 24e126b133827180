"""CIRCO, RoCOCO, MMEB, XTD and FG adapters on fixtures in their released formats, with metric values
hand-computed from small rankings (the fake backbone of test_eval_support makes them predictable)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_eval_support import fake_context, unit, write_jpeg

from mmtrain.eval.benchmarks.circo import CircoBenchmark, average_precision_at_k
from mmtrain.eval.benchmarks.fg import FgBenchmark, load_filenames
from mmtrain.eval.benchmarks.mmeb import MMEBBenchmark
from mmtrain.eval.benchmarks.rococo import (RococoBenchmark, generate_mixed, i2t_metrics, pre_caption,
                                            split_captions, t2i_metrics)
from mmtrain.eval.benchmarks.xtd import XtdBenchmark

RGB = {"red": (255, 0, 0), "yellow": (255, 255, 0), "orange": (255, 128, 0), "magenta": (255, 0, 255), "green": (0, 255, 0),
       "blue": (0, 0, 255), "cyan": (0, 255, 255), "white": (255, 255, 255)}


# ---------------------------------------------------------------- CIRCO
def test_circo_ap_uses_min_gt_k_normalisation():
    pred = [16, 17, 15, 12, 13, 11]
    # hits at ranks 1, 3, 4: precisions 1, 2/3, 3/4 over min(|GT| = 3, k)
    assert average_precision_at_k(pred, [15, 16, 12], 5) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert average_precision_at_k(pred, [15, 16, 12], 2) == pytest.approx(1 / 2)  # min(3, 2) = 2
    assert average_precision_at_k(pred, [11], 5) == 0.0 and average_precision_at_k(pred, [11], 10) == 1 / 6


def test_circo_ap_vs_trec_map_cut():
    """CIRCO's AP@k equals trec_eval's map_cut_k when |GT| <= k and exceeds it when |GT| > k (trec
    divides by all relevant); mteb's map_at_k follows trec, so CIRCO is scored with our own code."""
    pytrec_eval = pytest.importorskip("pytrec_eval")
    pred, gt = [16, 17, 15, 12, 13, 11], [15, 16, 12]
    run = {"q": {str(d): float(len(pred) - r) for r, d in enumerate(pred)}}
    ev = pytrec_eval.RelevanceEvaluator({"q": {str(g): 1 for g in gt}}, {"map_cut.2,5"})
    trec = ev.evaluate(run)["q"]
    assert trec["map_cut_5"] == pytest.approx(average_precision_at_k(pred, gt, 5))
    assert trec["map_cut_2"] == pytest.approx(1 / 3) and average_precision_at_k(pred, gt, 2) == 0.5


def test_circo_val_end_to_end(tmp_path):
    root, gallery = tmp_path / "CIRCO", tmp_path / "unlabeled2017"
    order = ["red", "orange", "magenta", "green", "blue", "cyan", "white"]  # ids 11..17
    images = [{"id": 11 + i, "file_name": f"{11 + i:012d}.jpg"} for i in range(len(order))]
    for im, c in zip(images, order):
        write_jpeg(gallery / im["file_name"], RGB[c])
    (root / "annotations").mkdir(parents=True)
    (root / "annotations/image_info_unlabeled2017.json").write_text(json.dumps({"images": images}))
    val = [{"reference_img_id": 11, "target_img_id": 13, "relative_caption": "is more red", "shared_concept": "x",
            "gt_img_ids": [13, 17], "id": 0, "semantic_aspects": ["cardinality"]},
           {"reference_img_id": 14, "target_img_id": 15, "relative_caption": "has blue", "shared_concept": "y",
            "gt_img_ids": [15, 16, 12], "id": 1, "semantic_aspects": ["cardinality", "addition"]}]
    (root / "annotations/val.json").write_text(json.dumps(val))
    ctx, bb = fake_context()
    res = CircoBenchmark(str(root), str(gallery), instruction="CIRR instruction").run(ctx)
    # q0 = red: orange .89, magenta .71, white .58 -> ranks 12, 13, 17 (reference 11 removed);
    #   GT {13, 17} at 2, 3: (1/2 + 2/3) / min(2, k)
    # q1 = cyan direction: cyan 1, white .82, blue .71, magenta .5, orange .32 -> 16, 17, 15, 13, 12
    #   (reference 14 removed); GT {15, 16, 12} at 1, 3, 5: (1 + 2/3 + 3/5) / min(3, k)
    ap0, ap1 = (1 / 2 + 2 / 3) / 2, (1 + 2 / 3 + 3 / 5) / 3
    m = res.metrics["retrieval"]
    assert m["map"][5] == pytest.approx((ap0 + ap1) / 2) and m["map"][50] == pytest.approx((ap0 + ap1) / 2)
    assert m["recall"][5] == 1.0
    assert m["aspect_map10"]["cardinality"] == pytest.approx((ap0 + ap1) / 2)
    assert m["aspect_map10"]["addition"] == pytest.approx(ap1) and m["aspect_map10"]["negation"] is None
    sub = json.loads(res.files["submission_val_retrieval.json"])
    assert sub["0"][:3] == [12, 13, 17] and sub["1"][:5] == [16, 17, 15, 13, 12]
    assert 11 not in sub["0"] and 14 not in sub["1"]  # references excluded
    assert {it.instruction for it in bb.log if it.modality == "image,text"} == {"CIRR instruction"}
    assert res.tables[0].rows[0][1] == pytest.approx(100 * (ap0 + ap1) / 2)


# ---------------------------------------------------------------- RoCOCO
def test_rococo_metric_functions_by_hand():
    assert split_captions(list("abcdefghij")) == (list("abcde"), list("fghij"))
    assert split_captions(list("abcdefghijk")) == (list("abcdef"), list("ghijk"))
    assert split_captions(list("abcdef")) == (list("abcdef"), [])
    assert pre_caption('A "Red" car, (parked).') == "a red car, parked"
    i2t = i2t_metrics(np.array([[5, 0], [1, 2]]), [[0, 1], [3]], {5})
    assert (i2t["txt_r1"], i2t["txt_r5"], i2t["false_rate"]) == (0.0, 0.5, 0.5)
    t2i = t2i_metrics(np.array([[0, 3, 1], [4, 1, 0], [2, 5, 1]]), [0, 1, 2], n_original=3)
    assert t2i["img_r1"] == pytest.approx(2 / 3) and t2i["img_r5"] == 1.0 and t2i["false_rate"] == pytest.approx(1 / 3)


def _solid(path: Path, rgb) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), rgb).save(path, format="PNG")
    return path


def test_mixed_images_follow_mix_images_py(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    paths = [_solid(tmp_path / "src" / f"{i}.png", c) for i, c in enumerate(colours)]
    state = torch.get_rng_state()
    out = generate_mixed(paths, tmp_path / "mix_0.9" / "seed1", "mix", 0.9, seed=1)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched
    # The reference's draws: the loader's base seed, the sampler's seed, then one randperm per batch.
    torch.manual_seed(1)
    batch = next(iter(torch.utils.data.DataLoader(range(4), batch_size=64, shuffle=True)))
    partner = torch.randperm(4)
    torch.set_rng_state(state)
    for j, i in enumerate(batch.tolist()):
        got = np.asarray(Image.open(out[i]).convert("RGB"), dtype=float).reshape(-1, 3).mean(0)
        want = 0.9 * np.array(colours[i]) + 0.1 * np.array(colours[int(batch[partner[j]])])
        assert np.allclose(got, want, atol=3), (i, got, want)
        assert Image.open(out[i]).size == (384, 384)
    again = generate_mixed(paths, tmp_path / "again" / "seed1", "mix", 0.9, seed=1)
    assert [p.read_bytes() for p in out] == [p.read_bytes() for p in again]
    patched = generate_mixed(paths, tmp_path / "patch_0.9" / "seed1", "patch", 0.9, seed=1)
    for p, c in zip(patched, colours):
        arr = np.asarray(Image.open(p).convert("RGB"), dtype=float)
        changed = np.mean(np.abs(arr - np.array(c)).max(-1) > 40)
        assert changed <= 0.1 + 0.01  # a CutMix box of area <= 1 - lam from the partner


def test_rococo_end_to_end_on_release_layout(tmp_path):
    ann, coco = tmp_path / "annotations", tmp_path / "coco"
    clean = [{"image": "val2014/COCO_val2014_000000000001.jpg", "caption": [f"A red thing {i}." for i in range(5)]},
             {"image": "val2014/COCO_val2014_000000000002.jpg", "caption": [f"A green thing {i}." for i in range(6)]},
             {"image": "val2014/COCO_val2014_000000000003.jpg", "caption": [f"A blue and white boat {i}." for i in range(5)]}]
    for e, c in zip(clean, ("red", "green", "blue")):
        write_jpeg(coco / e["image"], RGB[c])
    ann.mkdir()
    (ann / "coco_karpathy_test.json").write_text(json.dumps(clean))
    # same_concept: one word replaced; for the blue image the altered "blue and blue" beats the originals.
    swap = {"red": "yellow", "green": "cyan", "white": "blue"}
    same = [{"image": e["image"], "caption": e["caption"] + [
        " ".join(swap.get(w, w) if w in ("red", "green", "white") else w for w in pre_caption(c).split())
        for c in e["caption"][:5]]} for e in clean]
    harmless = [{"image": e["image"], "caption": e["caption"] + ["a xyz thing"] * 5} for e in clean]
    (ann / "same_concept.json").write_text(json.dumps(same))
    for name in ("diff_concept", "rand_voca", "danger"):
        (ann / f"{name}.json").write_text(json.dumps(harmless))
    ctx, _ = fake_context()
    res = RococoBenchmark(str(ann), str(coco), mix_dir=str(tmp_path / "mixed"), seeds=[1, 10]).run(ctx)
    i2t = res.metrics["i2t"]
    assert (i2t["clean"]["txt_r1"], i2t["clean"]["false_rate"]) == (1.0, 0.0)
    # blue image: its 5 altered captions all outrank its originals -> R@1 and R@5 miss, R@10 hits
    same = i2t["same_concept"]
    assert same["txt_r1"] == same["txt_r5"] == pytest.approx(2 / 3) and same["txt_r10"] == 1.0
    assert i2t["same_concept"]["false_rate"] == pytest.approx(1 / 3)  # 11-caption entry split 6 + 5
    assert i2t["diff_concept"]["false_rate"] == 0.0
    t2i = res.metrics["t2i"]
    assert t2i["clean"]["img_r1"] == 1.0 and t2i["clean"]["false_rate"] == 0.0
    assert set(t2i) == {"clean", "mix_0.9", "patch_0.9"} and set(t2i["mix_0.9"]["seeds"]) == {1, 10}
    assert 0.0 <= t2i["mix_0.9"]["mean"]["false_rate"] <= 1.0 and res.metrics["num_captions"] == 16
    assert len(list((tmp_path / "mixed").rglob("*.jpg"))) == 2 * 2 * 3


# ---------------------------------------------------------------- MMEB and the XTD repack
def _parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_mmeb_first_candidate_is_positive(tmp_path):
    img = tmp_path / "images"
    for c in ("red", "green", "blue", "white", "yellow", "cyan"):
        write_jpeg(img / f"{c}.jpg", RGB[c])
    q = "<|image_1|>\nRepresent the given news image for domain classification"
    rows = [{"qry_text": q, "qry_img_path": f"{c}.jpg", "tgt_text": ["red", "green", "blue"],
             "tgt_img_path": ["", "", ""]} for c in ("red", "green", "white")]  # right, wrong, tie -> right
    _parquet(tmp_path / "mmeb/N24News/test-00000-of-00001.parquet", rows)
    t = "<|image_1|>\nRepresent the given image."
    cirr = [{"qry_text": "<|image_1|>\nmake it green", "qry_img_path": "yellow.jpg", "tgt_text": [t, t, t],
             "tgt_img_path": ["green.jpg", "red.jpg", "blue.jpg"]},   # green first: right
            {"qry_text": "<|image_1|>\nmake it blue", "qry_img_path": "cyan.jpg", "tgt_text": [t, t, t],
             "tgt_img_path": ["green.jpg", "red.jpg", "blue.jpg"]}]  # blue (index 2) best: wrong
    _parquet(tmp_path / "mmeb/CIRR/test-00000-of-00001.parquet", cirr)
    ctx, bb = fake_context()
    res = MMEBBenchmark(str(tmp_path / "mmeb"), str(img), subsets=["N24News", "CIRR"]).run(ctx)
    assert json.loads(res.files["N24News_score.json"]) == {"acc": 2 / 3, "num_correct": 2, "num_pred": 3}
    agg = res.metrics["aggregates"]
    assert agg["Classification"] == pytest.approx(2 / 3) and agg["Retrieval"] == 0.5
    assert agg["IND"] == pytest.approx((2 / 3 + 0.5) / 2) and agg["OOD"] is None and agg["VQA"] is None
    assert not any("<|image_1|>" in (it.text or "") for it in bb.log)
    assert sum(it.text == "red" for it in bb.log) == 1  # unique targets embedded once


def test_xtd_raw_release_and_repack(tmp_path):
    root, img = tmp_path / "xtd", tmp_path / "train2014"
    names = [f"COCO_train2014_{i:012d}.jpg" for i in range(12)]
    colours = [(255, 20 * i, 0) for i in range(12)]  # hues from red towards yellow
    for n, c in zip(names, colours):
        write_jpeg(img / n, c)
    (root / "XTD10").mkdir(parents=True)
    (root / "XTD10/test_image_names.txt").write_text("\n".join(names) + "\n")
    table = {}
    for lang in ("it", "es"):
        caps = [f"{lang} didascalia {i}" for i in range(12)]
        for i, cap in enumerate(caps):
            table[cap] = unit(*(np.array(colours[i]) / 255.0))
        (root / f"XTD10/test_1kcaptions_{lang}.txt").write_text("\n".join(caps) + "\n")
    table["it didascalia 0"] = unit(*(np.array(colours[11]) / 255.0))  # image 0 is then ranked last: R@10 miss
    rows = [{"qry_text": "it didascalia 3", "qry_img_path": "", "tgt_text": ["", "", ""],
             "tgt_img_path": [names[3], names[9], names[0]]},
            {"qry_text": "it didascalia 9", "qry_img_path": "", "tgt_text": ["", "", ""],
             "tgt_img_path": [names[0], names[9], names[3]]}]
    _parquet(tmp_path / "repack/it/test-00000-of-00001.parquet", rows)
    ctx, _ = fake_context(table)
    res = XtdBenchmark(str(root), str(img), repack_root=str(tmp_path / "repack"), repack_image_dir=str(img),
                       languages=["it"]).run(ctx)
    assert res.metrics["raw"]["it"]["R@10"] == pytest.approx(11 / 12) and res.metrics["raw"]["it"]["R@1"] == pytest.approx(11 / 12)
    assert res.metrics["repack"]["it"] == {"P@1": 0.5, "R@10": 1.0}
    ctx, _ = fake_context(table)
    assert XtdBenchmark(str(root), str(img), languages=["es"]).run(ctx).headline["raw/R@10"] == 1.0


# ---------------------------------------------------------------- MSCOCO-FG
def test_fg_enlarged_pool_and_original_alongside(tmp_path):
    root, val, unl = tmp_path / "fg", tmp_path / "val2014", tmp_path / "unlabeled2017"
    write_jpeg(val / "COCO_val2014_000000000001.jpg", RGB["red"])
    write_jpeg(val / "COCO_val2014_000000000002.jpg", RGB["green"])
    write_jpeg(unl / "000000000101.jpg", (255, 30, 0))
    write_jpeg(unl / "000000000102.jpg", (0, 255, 30))  # closer to "green and blue" than the target
    (root / "Annotations").mkdir(parents=True)
    (root / "Images").mkdir()
    ann = {"COCO_val2014_000000000001": [f"a red car {i}" for i in range(5)],
           "COCO_val2014_000000000002": [f"a green and blue kite {i}" for i in range(5)]}
    (root / "Annotations/MSCOCO_FG_ann.json").write_text(json.dumps(ann))
    names = ["COCO_val2014_000000000001.jpg", "COCO_val2014_000000000002.jpg", "000000000101.jpg", "000000000102.jpg"]
    np.save(root / "Images/MSCOCO_FG_img_filenames.npy", np.array(names))
    orig = [{"image": "val2014/COCO_val2014_000000000001.jpg", "caption": ["A red car."] * 5},
            {"image": "val2014/COCO_val2014_000000000002.jpg", "caption": ["A green kite."] * 5}]
    (tmp_path / "coco_karpathy_test.json").write_text(json.dumps(orig))
    ctx, _ = fake_context()
    res = FgBenchmark(str(root), str(val), str(unl), original_ann=str(tmp_path / "coco_karpathy_test.json"),
                      original_image_root=str(tmp_path)).run(ctx)
    fg, orig_m = res.metrics["results"]["MSCOCO-FG"], res.metrics["results"]["MSCOCO original test (2 images)"]
    assert fg["t2i_r1"] == 0.5 and fg["t2i_r5"] == 1.0 and fg["i2t_r1"] == 1.0
    assert orig_m["t2i_r1"] == 1.0 and orig_m["i2t_r1"] == 1.0
    assert res.metrics["sizes"]["MSCOCO-FG"] == (2, 4, 10)
    drop = next(r for r in res.tables[0].rows if r[0].startswith("drop"))
    assert drop[5] == pytest.approx(-50.0)  # T2I R@1: 50 - 100
    np.save(tmp_path / "obj.npy", np.array(names, dtype=object), allow_pickle=True)
    assert load_filenames(tmp_path / "obj.npy") == names


class _CreatesAFile:
    """Unpickling this runs ``open(path, "w")``: what a hostile FG filenames file could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_fg_filenames_never_run_code_from_a_crafted_npy(tmp_path):
    from mmtrain.eval.benchmarks.fg import load_filenames

    victim = tmp_path / "created-by-the-npy"
    crafted = tmp_path / "MSCOCO_FG_img_filenames.npy"
    np.save(crafted, np.array([_CreatesAFile(victim)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not an array of file names"):
        load_filenames(crafted)
    assert not victim.exists()
    # the same file read the unsafe way would have created it (the test can fail)
    np.load(crafted, allow_pickle=True)
    assert victim.exists()
