"""Write a tiny M-BEIR tree (UniIR layout, data-formats.md section 1) for tests.

Datasets, named and numbered as in M-BEIR so the canonical-id check passes:
  mscoco (9): task 0 text -> image, task 3 image -> text (image-only queries, ``query_txt: null``,
              two positives each); train queries carry one hard negative each
  nights (4): task 4 image -> image; line 1 of its train file has no ``task_id``
  oven   (5): task 6 image,text -> text; positives are InfoSeek dids (prefix ``6:``, the OVEN quirk),
              line 1 of its train file writes ``pos_cand_list`` as ``[{"did": ...}]`` objects
Val and test: ``mscoco_task0`` and ``oven_task6`` with qrels (one relevance-0 row each, to be
dropped) and global pools. Every image is a real 8x8 JPEG.

Ids (``i`` = index within a source):
  train  mscoco task0 qid 9:i       pos 9:i (image)             neg 9:((i+1)%n)
         mscoco task3 qid 9:(1000+i) pos 9:(500+i), 9:(500+(i+1)%n) (text)
         nights       qid 4:i       pos 4:(100+i) (image)        neg 4:(100+(i+1)%n)
         oven         qid 5:i       pos 6:i (text, InfoSeek prefix)
  val    mscoco task0 qid 9:(3000+i) relevant 9:(2000+i); oven qid 5:(3000+i) relevant 6:(2000+i), 5:(2000+i)
  test   as val with 4000 / 4100 / 4000 / 4100 instead of 3000 / 2000.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

TRAIN_SIZES = {"mscoco_task0": 12, "mscoco_task3": 8, "nights_task4": 6, "oven_task6": 5}
EVAL_SIZES = {"mscoco_task0": 3, "oven_task6": 2}
INSTRUCTIONS_TSV = (  # header skipped; empty trailing cells dropped
    "query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1\tprompt_2\tprompt_3\tprompt_4\n"
    "text\timage\tMSCOCO\t9\tIdentify the image showcasing the given everyday scene.\t"
    "Find a picture of the caption.\t\t\n"
    "image\ttext\tMSCOCO\t9\tFind a caption describing this everyday image.\n"
    "image\timage\tNIGHTS\t4\tFind a day-to-day image that looks similar to the provided image.\t"
    "Find a similar image.\n"
    "image,text\ttext\tOVEN\t5\t"
    "Retrieve a Wikipedia paragraph that provides an answer to the given query about the image.\n"
)
SPLIT_BASE = {"val": (3000, 2000), "test": (4000, 4100)}  # (query id base, candidate id base)


def jpeg_bytes(seed: int) -> bytes:
    """A distinct 8x8 JPEG per seed."""
    buf = io.BytesIO()
    color = ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256)
    Image.new("RGB", (8, 8), color).save(buf, format="JPEG")
    return buf.getvalue()


class _Tree:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.n_images = 0

    def image(self, rel: str) -> str:
        path = self.root / "mbeir_images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg_bytes(self.n_images))
        self.n_images += 1
        return f"mbeir_images/{rel}"

    def jsonl(self, rel: str, rows: list[dict]) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def text(self, rel: str, content: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def cand(did: str, txt: str | None, img: str | None, modality: str) -> dict:
    return {"did": did, "txt": txt, "img_path": img, "modality": modality, "src_content": None}


def query(qid: str, txt: str | None, img: str | None, modality: str, pos: list, neg: list, task: int | None) -> dict:
    row = {"qid": qid, "query_txt": txt, "query_img_path": img, "query_modality": modality,
           "query_src_content": None, "pos_cand_list": pos, "neg_cand_list": neg}
    if task is not None:
        row["task_id"] = task
    return row


def write_mbeir_fixture(root: str | Path, train_sizes: dict[str, int] | None = None) -> Path:
    """Write the tree under ``root`` and return it."""
    t = _Tree(Path(root))
    sizes = {**TRAIN_SIZES, **(train_sizes or {})}
    t.text("instructions/query_instructions.tsv", INSTRUCTIONS_TSV)

    # --- train ---
    n0, n3, n4, n6 = sizes["mscoco_task0"], sizes["mscoco_task3"], sizes["nights_task4"], sizes["oven_task6"]
    coco_imgs = [t.image(f"mscoco_images/train2014/COCO_train2014_{i:012d}.jpg") for i in range(max(n0, n3))]
    pool = [cand(f"9:{i}", None, coco_imgs[i], "image") for i in range(len(coco_imgs))]
    pool += [cand(f"9:{500 + i}", f'  "a cat number {i}"  ', None, "text") for i in range(n3)]
    nights_imgs = [t.image(f"nights_images/{i}.jpg") for i in [*range(n4), *range(100, 100 + n4)]]
    pool += [cand(f"4:{100 + i}", None, nights_imgs[n4 + i], "image") for i in range(n4)]
    pool += [cand(f"6:{i}", f"wiki article {i}", None, "text") for i in range(n6)]
    t.jsonl("cand_pool/global/mbeir_union_train_cand_pool.jsonl", pool)

    coco = [query(f"9:{i}", f"a photo of object {i}", None, "text", [f"9:{i}"], [f"9:{(i + 1) % n0}"], 0)
            for i in range(n0)]
    coco += [query(f"9:{1000 + i}", None, coco_imgs[i], "image", [f"9:{500 + i}", f"9:{500 + (i + 1) % n3}"], [], 3)
             for i in range(n3)]
    t.jsonl("query/train/mbeir_mscoco_train.jsonl", coco)
    nights = [query(f"4:{i}", None, nights_imgs[i], "image", [f"4:{100 + i}"], [f"4:{100 + (i + 1) % n4}"],
                    None if i == 0 else 4) for i in range(n4)]
    t.jsonl("query/train/mbeir_nights_train.jsonl", nights)
    oven_imgs = [t.image(f"oven_images/train/{i}.jpg") for i in range(n6)]
    oven = [query(f"5:{i}", f"what is this building {i}?", oven_imgs[i], "image,text",
                  [{"did": f"6:{i}"}] if i == 0 else [f"6:{i}"], [], 6) for i in range(n6)]
    t.jsonl("query/train/mbeir_oven_train.jsonl", oven)

    # --- val / test ---
    for split, (qbase, cbase) in SPLIT_BASE.items():
        n_coco, n_oven = EVAL_SIZES["mscoco_task0"], EVAL_SIZES["oven_task6"]
        imgs = [t.image(f"mscoco_images/{split}2014/{i}.jpg") for i in range(n_coco)]
        pool = [cand(f"9:{cbase + i}", None, imgs[i], "image") for i in range(n_coco)]
        pool += [cand(f"6:{cbase + i}", f"wiki {split} {i}", None, "text") for i in range(n_oven)]
        pool += [cand(f"5:{cbase + i}", f"oven wiki {split} {i}", None, "text") for i in range(n_oven)]
        pool += [cand(f"9:{cbase + 900}", "a distractor caption", None, "text")]
        t.jsonl(f"cand_pool/global/mbeir_union_{split}_cand_pool.jsonl", pool)

        rows = [query(f"9:{qbase + i}", f"object {i} in {split}", None, "text", [f"9:{cbase + i}"], [], 0)
                for i in range(n_coco)]
        t.jsonl(f"query/{split}/mbeir_mscoco_task0_{split}.jsonl", rows)
        qrels = [f"9:{qbase + i} 0 9:{cbase + i} 1 0" for i in range(n_coco)] + [f"9:{qbase} 0 9:{cbase + 900} 0 0"]
        t.text(f"qrels/{split}/mbeir_mscoco_task0_{split}_qrels.txt", "\n".join(qrels) + "\n")

        oimgs = [t.image(f"oven_images/{split}/{i}.jpg") for i in range(n_oven)]
        rows = [query(f"5:{qbase + i}", f"who built this {i}", oimgs[i], "image,text",
                      [f"6:{cbase + i}", f"5:{cbase + i}"], [], 6) for i in range(n_oven)]
        t.jsonl(f"query/{split}/mbeir_oven_task6_{split}.jsonl", rows)
        qrels = [f"5:{qbase + i} 0 {p}:{cbase + i} 1 6" for i in range(n_oven) for p in (6, 5)]
        qrels.append(f"5:{qbase} 0 9:{cbase + 900} 0 6")
        t.text(f"qrels/{split}/mbeir_oven_task6_{split}_qrels.txt", "\n".join(qrels) + "\n")
    return t.root
