"""Tiny fixtures of every released format the converters read, bad records of each kind included.

Each ``write_*`` writes the files exactly as the release lays them out (data-formats.md §2-§6) and returns
what the conversion must produce, written out here as literals (never derived from the converter):
``good`` {query id: (query text, query has image, positive texts)} and ``bad`` {location: kind}.
Every input record is in exactly one of the two.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from mbeir_fixture import jpeg_bytes
from PIL import Image

P = "<|image_1|>\n"  # the Phi-3.5-V placeholder MMEB and mmE5 store


def big_jpeg() -> bytes:
    """600 x 400: the converter must re-encode it to 384 x 256."""
    buf = io.BytesIO()
    Image.new("RGB", (600, 400), (200, 30, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (10, 6), (1, 2, 3, 255)).save(buf, format="PNG")
    return buf.getvalue()


def write_images(root: Path) -> None:
    """``images/`` with ok_<i>.jpg, big.jpg, icon.png and corrupt.jpg (truncated JPEG); missing.jpg absent."""
    d = root / "images"
    d.mkdir(parents=True, exist_ok=True)
    for i in range(8):
        (d / f"ok_{i}.jpg").write_bytes(jpeg_bytes(100 + i))
    (d / "big.jpg").write_bytes(big_jpeg())
    (d / "icon.png").write_bytes(png_bytes())
    (d / "corrupt.jpg").write_bytes(jpeg_bytes(7)[:-40] + b"garbage")


def parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def jsonl(path: Path, lines: list[str | dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines), encoding="utf-8")


def mmeb_row(qry: str, qimg: str, pos: str, pimg: str, neg: str = "", nimg: str = "") -> dict:
    return {"qry": qry, "qry_image_path": qimg, "pos_text": pos, "pos_image_path": pimg,
            "neg_text": neg, "neg_image_path": nimg}


# -- MMEB-train + MMEB-eval -----------------------------------------------------------------------
def write_mmeb(root: Path) -> dict:
    write_images(root)
    i2t = "MSCOCO_i2t/original-00000-of-00001.parquet"
    parquet(root / "train" / i2t, [
        mmeb_row(P + "Find an image caption describing the given everyday image.", "images/ok_0.jpg",
                 "A cat on a mat.", ""),                                                           # row0 ok
        mmeb_row(P + "Find an image caption describing the given everyday image.", "images/big.jpg",
                 "A red wall.", "", "A blue wall.", ""),                                          # row1 ok, neg
        mmeb_row(P + "Find an image caption describing the given everyday image.", "images/missing.jpg",
                 "Lost.", ""),                                                                    # row2 missing
        mmeb_row(P + "Find an image caption describing the given everyday image.", "images/corrupt.jpg",
                 "Broken.", ""),                                                                  # row3 corrupt
        mmeb_row("", "", "Nothing to ask.", ""),                                                  # row4 empty query
        mmeb_row("Find a caption.", "", "", ""),                                                  # row5 empty pos
    ])
    # The other split of the same subset must be ignored with --split original.
    parquet(root / "train/MSCOCO_i2t/diverse_instruction-00000-of-00001.parquet",
            [mmeb_row("Paraphrased instruction.", "", "Ignored.", "")])
    jsonl(root / "train/VisDial/original.jsonl", [
        mmeb_row("Represent the given dialogue about an image, which is used for image retrieval: Q: is it red?",
                 "", P + "Represent the given image.", "images/icon.png"),                        # line1 ok
        '{"qry": "truncated',                                                                    # line2 malformed
        mmeb_row("Dialogue two.", "", P + "Represent the given image.", "images/ok_1.jpg"),      # line3 ok
    ])
    tgt = ["A cat on a mat.", "A dog.", "A bird."]
    parquet(root / "eval/MSCOCO_t2i/test-00000-of-00001.parquet", [
        {"qry_text": "Find me an everyday image that matches the given caption: a cat.", "qry_img_path": "",
         "tgt_text": [P, P, P], "tgt_img_path": ["images/ok_0.jpg", "images/ok_2.jpg", "images/ok_3.jpg"]},
        {"qry_text": "Caption two.", "qry_img_path": "", "tgt_text": [P, P],
         "tgt_img_path": ["images/ok_2.jpg", "images/missing.jpg"]},                              # row1 cand missing
        {"qry_text": "Caption three.", "qry_img_path": "", "tgt_text": [P],
         "tgt_img_path": ["images/ok_3.jpg", "images/ok_4.jpg"]},                                 # row2 lengths differ
    ])
    parquet(root / "eval/VOC2007/test-00000-of-00001.parquet", [
        {"qry_text": P + "Identify the object shown in the image.", "qry_img_path": "images/ok_5.jpg",
         "tgt_text": tgt, "tgt_img_path": ["", "", ""]},
    ])
    return {
        "good": {"MSCOCO_i2t:0": ("Find an image caption describing the given everyday image.", True, ["A cat on a mat."]),
                 "MSCOCO_i2t:1": ("Find an image caption describing the given everyday image.", True, ["A red wall."]),
                 "VisDial:0": ("Represent the given dialogue about an image, which is used for image retrieval: "
                               "Q: is it red?", False, ["Represent the given image."]),
                 "VisDial:1": ("Dialogue two.", False, ["Represent the given image."]),
                 "MSCOCO_t2i:0": ("Find me an everyday image that matches the given caption: a cat.", False, [None]),
                 "VOC2007:0": ("Identify the object shown in the image.", True, ["A cat on a mat."])},
        "bad": {f"train/{i2t}:row2": "missing_image", f"train/{i2t}:row3": "undecodable_image",
                f"train/{i2t}:row4": "empty_query", f"train/{i2t}:row5": "empty_positive",
                "train/VisDial/original.jsonl:2": "malformed_json",
                "eval/MSCOCO_t2i/test-00000-of-00001.parquet:row1": "positive_not_in_pool",
                "eval/MSCOCO_t2i/test-00000-of-00001.parquet:row2": "bad_value"},
        # the missing candidate image of MSCOCO_t2i row1 is reported too (it is why the row goes)
        "also": {"eval/MSCOCO_t2i/test-00000-of-00001.parquet:row1": "missing_image"},
    }


# -- mmE5 hard-negative set ----------------------------------------------------------------------
def write_mme5_hardneg(root: Path) -> dict:
    write_images(root)
    f = "InfoSeek_it2t/train-00000-of-00001.parquet"
    parquet(root / f, [
        mmeb_row(P + "Answer the question about the image.", "images/ok_0.jpg", "Paris.", "",
                 "['London.', 'Rome.']", "['', '']"),                                        # row0 two negatives
        mmeb_row("Who wrote it?", "", "Hugo.", "", "['A caption', '']", "['', 'images/ok_1.jpg']"),  # row1 text + image neg
        mmeb_row("Evil?", "", "No.", "", "__import__('os').system('touch /tmp/mmtrain_pwned')", "[]"),  # row2 code
        mmeb_row("Mixed?", "", "No.", "", "['a', 1]", "['', '']"),                          # row3 not all str
        mmeb_row("Cut?", "", "No.", "", "['a', 'b'", "['', '']"),                           # row4 truncated
        mmeb_row("Length?", "", "No.", "", "['a', 'b']", "['']"),                           # row5 length mismatch
    ])
    return {
        "good": {"InfoSeek_it2t:0": ("Answer the question about the image.", True, ["Paris."]),
                 "InfoSeek_it2t:1": ("Who wrote it?", False, ["Hugo."])},
        "negatives": {"InfoSeek_it2t:0": [("London.", False), ("Rome.", False)],
                      "InfoSeek_it2t:1": [("A caption", False), (None, True)]},
        "bad": {f"{f}:row2": "unparseable_negatives", f"{f}:row3": "unparseable_negatives",
                f"{f}:row4": "unparseable_negatives", f"{f}:row5": "unparseable_negatives"},
    }


# -- mmE5 synthetic set ---------------------------------------------------------------------------
def write_mme5_synthetic(root: Path) -> dict:
    write_images(root)
    rows = [
        {**mmeb_row(P + "Retrieve an image that matches the text.", "", P + "Represent the image.",
                    "images/ok_0.jpg", "Plain negative text.", ""), "modality": "T2I", "language": "fr"},  # row0 quirk
        {**mmeb_row(P + "Find the caption.", "images/ok_1.jpg", "Ein Hund.", "", "['Eine Katze.']", "['']"),
         "modality": "I2T", "language": "de"},                                                   # row1 list literal
        {**mmeb_row("Find the image.", "", "Text only.", "", "", ""), "modality": "T2I", "language": "en"},  # row2 mismatch
    ]
    parquet(root / "Retrieval/Retrieval.parquet", rows)
    parquet(root / "VQA/VQA.parquet", [
        {**mmeb_row(P + "Represent the given image with the following question: what colour?", "images/ok_2.jpg",
                    "Red.", ""), "modality": "IT2T", "language": "es"},
    ])
    return {
        "good": {"Retrieval:0": ("Retrieve an image that matches the text.", False, ["Represent the image."]),
                 "Retrieval:1": ("Find the caption.", True, ["Ein Hund."]),
                 "VQA:0": ("Represent the given image with the following question: what colour?", True, ["Red."])},
        "languages": {"Retrieval:0": "fr", "Retrieval:1": "de", "VQA:0": "es"},
        "bad": {"Retrieval/Retrieval.parquet:row2": "modality_mismatch"},
        "repairs": {"query:placeholder_without_image": 1},
    }


# -- BEIR ---------------------------------------------------------------------------------------------
def write_beir(root: Path) -> dict:
    jsonl(root / "corpus.jsonl", [
        {"_id": "d1", "title": "Paris", "text": "Paris is the capital of France."},
        {"_id": "d2", "title": "", "text": "Rome is in Italy."},
        {"_id": "d3", "title": "Berlin", "text": "Berlin is in Germany."},
        {"_id": "d2", "title": "", "text": "A duplicate id."},                                     # line4 duplicate
        '{"_id": "d5", "text": ',                                                                  # line5 malformed
    ])
    jsonl(root / "queries.jsonl", [
        {"_id": "q1", "text": "capital of france"}, {"_id": "q2", "text": "where is rome"},
        {"_id": "q3", "text": "   "},                                                              # line3 empty
        {"_id": "q4", "text": "german cities"},
    ])
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "qrels/train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq2\td3\t0\nq3\td1\t1\n")
    (root / "qrels/test.tsv").write_text("query-id\tcorpus-id\tscore\nq4\td3\t1\nq4\td9\t1\n")
    return {
        "good": {"q1": ("capital of france", False, ["Paris Paris is the capital of France."]),
                 "q2": ("where is rome", False, ["Rome is in Italy."])},
        "test": {"q4": ["d3"]},
        "bad": {"corpus.jsonl:4": "duplicate_did", "corpus.jsonl:5": "malformed_json",
                "queries.jsonl:3": "empty_query", "qrels/train.tsv:5": "unknown_query",
                "qrels/test.tsv:3": "positive_not_in_pool"},
    }


# -- Tevatron, both forms -------------------------------------------------------------------------
def write_tevatron_legacy(root: Path) -> dict:
    jsonl(root / "train.jsonl", [
        {"query_id": "1", "query": "what is a cat",
         "positive_passages": [{"docid": "p1", "title": "Cat", "text": "A small animal."}],
         "negative_passages": [{"docid": "p2", "title": "", "text": "A car."}, {"docid": "p3", "text": "A cab."}]},
        {"query_id": "2", "query": "no positives", "positive_passages": [], "negative_passages": []},  # line2
        "not json at all",                                                                              # line3
    ])
    return {"good": {"1": ("what is a cat", False, ["Cat A small animal."])},
            "negatives": {"1": [("A car.", False), ("A cab.", False)]},
            "bad": {"train.jsonl:2": "empty_positive", "train.jsonl:3": "malformed_json"}}


def write_tevatron_ids(root: Path) -> dict:
    write_images(root)
    jsonl(root / "corpus.jsonl", [
        {"docid": "c1", "title": "Doc", "text": "first document", "image": None},
        {"docid": "c2", "text": "", "image": "images/ok_0.jpg"},
        {"docid": "c3", "text": "third", "image": "images/ok_1.jpg"},
        {"docid": "c1", "text": "duplicate", "image": None},                                            # line4
    ])
    jsonl(root / "train.jsonl", [
        {"query_id": "a", "query_text": "find doc", "query_image": None,
         "positive_document_ids": ["c1"], "negative_document_ids": ["c3", "c404"]},               # line1 (one neg gone)
        {"query_id": "b", "query_text": "", "query_image": "images/ok_2.jpg",
         "positive_document_ids": ["c2"], "negative_document_ids": []},                          # line2 i->i
        {"query_id": "c", "query_text": "lost", "positive_document_ids": ["c9"],
         "negative_document_ids": []},                                                            # line3
    ])
    jsonl(root / "test.jsonl", [{"query_id": "t", "query": "third please", "positive_document_ids": ["c3"],
                                 "negative_document_ids": []}])
    return {"good": {"a": ("find doc", False, ["Doc first document"]), "b": ("", True, [None])},
            "negatives": {"a": [("third", True)]}, "test": {"t": ["c3"]},
            "bad": {"corpus.jsonl:4": "duplicate_did", "train.jsonl:3": "positive_not_in_pool"},
            "also": {"train.jsonl:1": "negative_not_in_pool"}}
