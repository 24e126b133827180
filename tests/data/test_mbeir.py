"""M-BEIR reader: parsed values against the fixture's literals, and every validation error class."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mbeir_fixture import write_mbeir_fixture

from mmtrain.data.mbeir import (
    MBeirFormatError,
    check_image,
    discover_query_files,
    instruction_key,
    read_instructions,
    read_pool,
    read_qrels,
    read_queries,
)
from mmtrain.data.mbeir_tree import load_mbeir

COCO_TRAIN = "query/train/mbeir_mscoco_train.jsonl"
NIGHTS_TRAIN = "query/train/mbeir_nights_train.jsonl"
OVEN_VAL = "query/val/mbeir_oven_task6_val.jsonl"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_mbeir_fixture(tmp_path / "mbeir")


def _append(path: Path, *lines: str) -> None:
    with open(path, "a") as f:
        f.writelines(line + "\n" for line in lines)


def test_instructions_follow_uniir(root: Path) -> None:
    prompts = read_instructions(root / "instructions/query_instructions.tsv")
    assert prompts == {
        "9, text, image": ["Identify the image showcasing the given everyday scene.", "Find a picture of the caption."],
        "9, image, text": ["Find a caption describing this everyday image."],
        "4, image, image": ["Find a day-to-day image that looks similar to the provided image.",
                            "Find a similar image."],
        "5, image,text, text": [
            "Retrieve a Wikipedia paragraph that provides an answer to the given query about the image."],
    }


def test_instruction_key_is_one_rule_for_both_spellings(tmp_path: Path) -> None:
    """The query's dataset id and the modalities as records spell them; M-BEIR's task-5 spelling
    ``text,image`` names the same candidate modality as ``image,text``."""
    assert instruction_key(5, "image,text", "text") == "5, image,text, text"
    assert instruction_key("2", "text", "text,image") == "2, text, image,text"
    tsv = tmp_path / "query_instructions.tsv"
    tsv.write_text("query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1\n"
                   "text\ttext,image\tWebQA\t2\tFind a passage with its picture.\t\n")
    assert read_instructions(tsv) == {"2, text, image,text": ["Find a passage with its picture."]}


def test_read_queries_literals(root: Path) -> None:
    coco = read_queries(root / COCO_TRAIN, shown=COCO_TRAIN)
    assert len(coco) == 12 + 8
    q = coco[0]
    assert (q.qid, q.text, q.img_path, q.modality, q.pos_dids, q.neg_dids, q.task_id) == (
        "9:0", "A photo of object 0.", None, "text", ["9:0"], ["9:1"], 0)
    assert q.location == f"{COCO_TRAIN}:1" and q.dataset_id == 9
    image_only = coco[12]  # query_txt is null
    assert (image_only.qid, image_only.text, image_only.modality, image_only.pos_dids) == (
        "9:1000", "", "image", ["9:500", "9:501"])
    assert image_only.img_path == "mbeir_images/mscoco_images/train2014/COCO_train2014_000000000000.jpg"
    assert read_queries(root / NIGHTS_TRAIN)[0].task_id is None  # line 1 has no task_id
    oven = read_queries(root / "query/train/mbeir_oven_train.jsonl")
    assert oven[0].pos_dids == ["6:0"] and oven[0].modality == "image,text"  # [{"did": "6:0"}] on disk
    assert oven[1].text == "What is this building 1?"


def test_read_pool_and_qrels(root: Path) -> None:
    pool = read_pool(root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl")
    assert len(pool) == 12 + 8 + 6 + 5
    assert pool["9:500"].text == "A cat number 0."  # '  "a cat number 0"  ' normalised
    assert (pool["9:3"].text, pool["9:3"].modality) == (None, "image")
    assert pool["6:4"].dataset_id == 6
    qrels = read_qrels(root / "qrels/val/mbeir_oven_task6_val_qrels.txt")
    assert qrels == {"5:3000": ["6:2000", "5:2000"], "5:3001": ["6:2001", "5:2001"]}  # relevance 0 dropped


def test_discovery_and_dataset_ids(root: Path) -> None:
    found = discover_query_files(root, "val")
    assert [(d, t, p.name) for d, t, p in found] == [
        ("mscoco", 0, "mbeir_mscoco_task0_val.jsonl"), ("oven", 6, "mbeir_oven_task6_val.jsonl")]
    train_files = discover_query_files(root, "train")
    assert [(d, t) for d, t, _ in train_files] == [("mscoco", None), ("nights", None), ("oven", None)]
    data = load_mbeir(root)
    assert data.splits["train"].dataset_ids == {"mscoco": 9, "nights": 4, "oven": 5}


def test_load_resolves_tasks_instructions_and_cross_prefix(root: Path) -> None:
    data = load_mbeir(root)
    assert data.skipped == []
    train = {s.name: s for s in data.splits["train"].sources}
    assert {n: len(s.queries) for n, s in train.items()} == {
        "mscoco_task0": 12, "mscoco_task3": 8, "nights_task4": 6, "oven_task6": 5}
    assert train["nights_task4"].queries[0].task_id == 4  # derived: image -> image
    oven = train["oven_task6"]
    assert (oven.dataset, oven.dataset_id) == ("oven", 5)
    assert oven.queries[0].pos_dids == ["6:0"]  # resolved although its prefix is InfoSeek's
    assert oven.queries[0].instructions == [
        "Retrieve a Wikipedia paragraph that provides an answer to the given query about the image."]
    assert train["mscoco_task0"].queries[0].instructions[1] == "Find a picture of the caption."
    val = {s.name: s for s in data.splits["val"].sources}
    assert val["oven_task6"].queries[1].relevant == ["6:2001", "5:2001"]
    assert len(data.splits["test"].pool) == 8
    assert {p.relative_to(root).as_posix() for p in data.files} >= {
        "instructions/query_instructions.tsv", COCO_TRAIN, "qrels/test/mbeir_oven_task6_test_qrels.txt",
        "cand_pool/global/mbeir_union_val_cand_pool.jsonl"}


def _corrupt(root: Path) -> None:
    """One or more problems of every record-level kind, at known lines."""
    _append(root / COCO_TRAIN,
            '{"qid": "9:77", "query_txt": ',  # line 21: malformed JSON
            json.dumps({"qid": "9:78", "query_modality": "text", "query_txt": "x"}),  # 22: no pos_cand_list
            json.dumps({"qid": "9:79", "query_txt": "x", "query_img_path": None, "query_modality": "text",
                        "pos_cand_list": ["9:99999"], "neg_cand_list": [], "task_id": 0}),  # 23: positive absent
            json.dumps({"qid": "9:80", "query_txt": "x", "query_img_path": None, "query_modality": "text",
                        "pos_cand_list": ["9:0"], "neg_cand_list": [], "task_id": 3}))  # 24: task mismatch
    (root / "mbeir_images/nights_images/1.jpg").unlink()  # query image of nights line 2
    (root / "mbeir_images/oven_images/train/0.jpg").write_bytes(b"not a jpeg")  # oven line 1
    _append(root / "qrels/val/mbeir_oven_task6_val_qrels.txt", "5:3001 0 6:123456 1 6")  # qrel target absent
    tsv = root / "instructions/query_instructions.tsv"  # drop the NIGHTS row: 6 queries lose their key
    tsv.write_text("".join(line for line in tsv.read_text().splitlines(True) if "\tNIGHTS\t" not in line))


def test_every_problem_reported_at_once(root: Path) -> None:
    _corrupt(root)
    with pytest.raises(MBeirFormatError) as info:
        load_mbeir(root)
    err = info.value
    counts: dict[str, int] = {}
    for p in err.problems:
        counts[p.kind] = counts.get(p.kind, 0) + 1
    assert counts == {"malformed_json": 1, "missing_field": 1, "positive_not_in_pool": 1, "task_mismatch": 1,
                      "missing_image": 1, "undecodable_image": 1, "qrel_not_in_pool": 1, "missing_instruction": 6}
    locations = {(p.kind, p.location) for p in err.problems}
    assert ("malformed_json", f"{COCO_TRAIN}:21") in locations
    assert ("missing_field", f"{COCO_TRAIN}:22") in locations
    assert ("positive_not_in_pool", f"{COCO_TRAIN}:23") in locations
    assert ("task_mismatch", f"{COCO_TRAIN}:24") in locations
    assert ("missing_image", f"{NIGHTS_TRAIN}:2") in locations
    assert ("undecodable_image", "query/train/mbeir_oven_train.jsonl:1") in locations
    assert ("qrel_not_in_pool", f"{OVEN_VAL}:2") in locations
    message = str(err)
    assert "13 problem(s)" in message and "missing_instruction=6" in message
    assert f"{COCO_TRAIN}:23: positive 9:99999 is absent from" in message
    assert "nights_images/1.jpg: missing" in message


def test_skip_invalid_drops_and_lists_bad_records(root: Path) -> None:
    _corrupt(root)
    data = load_mbeir(root, skip_invalid=True)
    assert len(data.skipped) == 13
    train = {s.name: len(s.queries) for s in data.splits["train"].sources}
    assert train == {"mscoco_task0": 12, "mscoco_task3": 8, "oven_task6": 4}  # every nights query lost its key
    val = {s.name: len(s.queries) for s in data.splits["val"].sources}
    assert val == {"mscoco_task0": 3, "oven_task6": 1}


def test_bad_pool_image_drops_candidate_and_its_queries(root: Path) -> None:
    (root / "mbeir_images/mscoco_images/val2014/1.jpg").unlink()  # candidate 9:2001 of the val pool
    with pytest.raises(MBeirFormatError) as info:
        load_mbeir(root, ["val"])
    kinds = sorted(p.kind for p in info.value.problems)
    assert kinds == ["missing_image", "positive_not_in_pool", "qrel_not_in_pool"]
    assert "is invalid (see its own problem)" in str(info.value)
    data = load_mbeir(root, ["val"], skip_invalid=True)
    assert "9:2001" not in data.splits["val"].pool
    assert [q.qid for q in data.splits["val"].sources[0].queries] == ["9:3000", "9:3002"]


def test_file_level_problems_stay_fatal(root: Path) -> None:
    pool = root / "cand_pool/global/mbeir_union_val_cand_pool.jsonl"
    _append(pool, pool.read_text().splitlines()[0])  # duplicate did 9:2000
    shutil.move(root / NIGHTS_TRAIN, root / "query/train/mbeir_cirr_train.jsonl")  # cirr is 8 in M-BEIR, qids say 4
    (root / "qrels/test/mbeir_mscoco_task0_test_qrels.txt").unlink()
    with pytest.raises(MBeirFormatError) as info:
        load_mbeir(root, skip_invalid=True)
    kinds = {(p.kind, p.location) for p in info.value.problems}
    assert ("duplicate_did", "cand_pool/global/mbeir_union_val_cand_pool.jsonl:9") in kinds
    assert ("dataset_id_mismatch", "query/train/mbeir_cirr_train.jsonl") in kinds
    assert ("missing_file", "qrels/test/mbeir_mscoco_task0_test_qrels.txt") in kinds


def test_standalone_readers_raise(root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"qid": "9:1", "query_modality": "image", "query_txt": "a", "pos_cand_list": ["9:1"]}\n'
                   '{"qid": "nine", "query_modality": "text", "pos_cand_list": ["9:1"]}\n'
                   '{"qid": "9:2", "query_modality": "text", "query_txt": "a", "pos_cand_list": ["9:1"]}\n'
                   '{"qid": "9:2", "query_modality": "text", "query_txt": "b", "pos_cand_list": ["9:1"]}\n')
    with pytest.raises(MBeirFormatError, match=r"bad_value=2, duplicate_qid=1") as info:
        read_queries(bad, shown="q.jsonl")
    assert "q.jsonl:4: qid 9:2 already defined at q.jsonl:3" in str(info.value)
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("9:1 0 9:2 1\n")
    with pytest.raises(MBeirFormatError, match=r"qrels.txt:1"):
        read_qrels(qrels)


def test_check_image(root: Path, tmp_path: Path) -> None:
    assert check_image(root / "mbeir_images/nights_images/0.jpg") is None
    assert check_image(tmp_path / "absent.jpg") == "missing"
    truncated = tmp_path / "t.jpg"
    truncated.write_bytes((root / "mbeir_images/nights_images/0.jpg").read_bytes()[:100])
    assert check_image(truncated).startswith("undecodable")
