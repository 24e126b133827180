"""M-BEIR (data-formats.md §1) -> canonical records, through the validating reader ``mmtrain.data.mbeir_tree``.

The reader resolves and checks everything M-BEIR-specific (qid/did strings and their UniIR hashes,
``task_id`` derived when absent, instructions by UniIR's key, OVEN/InfoSeek cross-pool positives resolved
in the split's global pool, every positive and qrel did present in the pool it is searched in); images
are checked here in parallel by the shared writer instead of one by one in the reader. Bad records are
skipped and counted; the threshold decides whether that is fatal. File-level problems (a missing file,
a duplicate did, inconsistent dataset ids) stay fatal, as in the reader.
"""

from __future__ import annotations

from pathlib import Path

from mmtrain.data.convert.core import Cand, Converted, ConversionError, ImageRef, Query
from mmtrain.data.mbeir import SPLITS, CandRecord, MBeirFormatError
from mmtrain.data.mbeir_tree import load_mbeir
from mmtrain.data.schema import hash_did, hash_qid

FAMILY = "mbeir"


def _cand(root: Path, c: CandRecord) -> Cand:
    image = ImageRef(path=str(root / c.img_path)) if c.img_path else None
    return Cand(c.did, hash_did(c.did), c.text, image, c.modality, c.location, c.dataset_id)


def _count_lines(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        if p.suffix == ".jsonl":
            with open(p, "rb") as f:
                total += sum(1 for line in f if line.strip())
    return total


def read_mbeir(root: str | Path, *, splits: tuple[str, ...] | list[str] = SPLITS, union_train: bool = False) -> Converted:
    """Read and validate ``splits`` of an M-BEIR tree. ``union_train`` reads the training queries from
    ``query/union_train/mbeir_union_up_train.jsonl`` (UniIR's upsampled union; repeated qids are the
    upsampling and are kept) instead of ``query/train/``."""
    root = Path(root)
    try:
        loaded = load_mbeir(root, tuple(splits), skip_invalid=True, check_images=False, union_train=union_train)
    except MBeirFormatError as e:  # only file-level (fatal) problems get here with skip_invalid
        raise ConversionError(str(e)) from e
    data = Converted(FAMILY, root, {}, {}, list(loaded.files))
    data.problems.extend(loaded.skipped)
    data.input_records = _count_lines(data.files)
    for split, sp in loaded.splits.items():
        pool = {did: _cand(root, c) for did, c in sp.pool.items()}
        data.pools[split] = pool
        out = data.queries.setdefault(split, [])
        for src in sp.sources:
            for q in src.queries:
                dids = q.pos_dids if split == "train" else q.relevant
                negatives = [pool[d] for d in q.neg_dids] if split == "train" else []
                image = ImageRef(path=str(root / q.img_path)) if q.img_path else None
                out.append(Query(q.qid, hash_qid(q.qid), src.dataset, src.task_id, q.text, image, q.modality,
                                 [pool[d] for d in dids], q.location, negatives=negatives,
                                 instructions=q.instructions, language="en", dataset_id=q.dataset_id))
                # no neg_dids: every negative M-BEIR lists is inline
    return data
