"""Text-retrieval formats (data-formats.md §6): BEIR layout and both Tevatron jsonl forms.

BEIR: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``),
``qrels/{train,dev,test}.tsv`` (header ``query-id  corpus-id  score``; score > 0 is relevant). Train qrels
become training samples (every relevant document inline as a positive; no negatives: they are mined),
dev/test become ``val``/``test`` evaluation sources searched in the whole corpus (written once, and listed
as every split's pool, train included).
Document text is ``title + " " + text`` when a title exists (Tevatron's join).

Tevatron rows, the form detected per row:
  legacy   ``query_id``, ``query``, ``positive_passages`` / ``negative_passages`` (``{docid, title, text}``)
  current  ``query_id``, ``query_text`` (fallback ``query``), ``query_image``, ``positive_document_ids``,
           ``negative_document_ids``, resolved in a corpus of ``docid``, ``text``, ``image``, ``title`` rows.
Images are paths relative to ``image_root`` or HF image structs. Texts are kept verbatim (stripped):
UniIR's ``format_string`` is M-BEIR's convention, not these datasets'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmtrain.data.convert.core import Cand, Converted, Query, image_ref, modality_of, read_rows, stable_hash, task_of
from mmtrain.data.schema import shown_path

BEIR_SPLITS = {"train": "train", "dev": "val", "validation": "val", "val": "val", "test": "test"}


def _join(title: Any, text: Any) -> str:
    title = title.strip() if isinstance(title, str) else ""
    text = text.strip() if isinstance(text, str) else ""
    return f"{title} {text}".strip() if title else text


def _doc(data: Converted, dataset: str, row: dict, loc: str, id_key: str, image_root: Path | None) -> Cand | None:
    did = row.get(id_key)
    if not isinstance(did, (str, int)) or isinstance(did, bool) or str(did) == "":
        data.problems.add("missing_field", loc, f"missing {id_key}")
        return None
    did = str(did)
    try:
        ref = image_ref(row.get("image"), image_root) if image_root is not None else None
    except ValueError as e:
        data.problems.add("bad_value", loc, str(e))
        return None
    text = _join(row.get("title"), row.get("text"))
    modality = modality_of(text, ref)
    if modality is None:
        data.problems.add("empty_candidate", loc, f"document {did} has neither text nor image")
        return None
    return Cand(did, stable_hash(f"{dataset}/d/{did}"), text or None, ref, modality, loc)


def read_corpus(data: Converted, path: Path, dataset: str, id_key: str, image_root: Path | None) -> dict[str, Cand]:
    corpus: dict[str, Cand] = {}
    data.files.append(path)
    for loc, row in read_rows(path, shown_path(data.root, path), data):
        c = _doc(data, dataset, row, loc, id_key, image_root)
        if c is None:
            continue
        if c.did in corpus:
            data.problems.add("duplicate_did", loc, f"did {c.did} already defined at {corpus[c.did].location}")
        else:
            corpus[c.did] = c
    return corpus


def read_beir(root: str | Path, *, dataset: str | None = None, language: str = "en") -> Converted:
    root = Path(root)
    dataset = dataset or root.name
    data = Converted("beir", root, {}, {}, [])
    corpus = read_corpus(data, root / "corpus.jsonl", dataset, "_id", None)
    queries: dict[str, tuple[str, str]] = {}
    data.files.append(root / "queries.jsonl")
    for loc, row in read_rows(root / "queries.jsonl", "queries.jsonl", data):
        qid, text = row.get("_id"), row.get("text")
        if qid is None or str(qid) == "":
            data.problems.add("missing_field", loc, "missing _id")
        elif not isinstance(text, str) or not text.strip():
            data.problems.add("empty_query", loc, f"query {qid} has no text")
        elif str(qid) in queries:
            data.problems.add("duplicate_qid", loc, f"query {qid} already defined at {queries[str(qid)][1]}")
        else:
            queries[str(qid)] = (text.strip(), loc)
    qrel_files = sorted((root / "qrels").glob("*.tsv"))
    if not qrel_files:
        data.problems.add("missing_file", "qrels/", "no qrels/*.tsv")
    for path in qrel_files:
        split = BEIR_SPLITS.get(path.stem)
        if split is None:
            continue
        data.files.append(path)
        relevant = _read_beir_qrels(data, path, queries, corpus)
        out = data.queries.setdefault(split, [])
        for qid, dids in relevant.items():
            text, loc = queries[qid]
            positives = [corpus[d] for d in dids]
            out.append(Query(qid, stable_hash(f"{dataset}/q/{qid}"), dataset, 1, text, None, "text", positives,
                             loc, language=language))
        # One object: written once, listed for every split (train too: the miner searches it for the
        # training queries' hard negatives, and the stream reads them from it by id).
        data.pools[split] = corpus
    return data


def _read_beir_qrels(data: Converted, path: Path, queries: dict, corpus: dict) -> dict[str, list[str]]:
    relevant: dict[str, list[str]] = {}
    shown = shown_path(data.root, path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if lineno == 1 and parts[:2] == ["query-id", "corpus-id"]:
                continue  # header row
            if not line.strip():
                continue
            loc = f"{shown}:{lineno}"
            if len(parts) != 3 or not parts[2].lstrip("-").isdigit():
                data.problems.add("malformed_qrel", loc, f"expected 'query-id<TAB>corpus-id<TAB>score', got {line.strip()!r}")
            elif int(parts[2]) <= 0:
                continue
            elif parts[0] not in queries:
                data.problems.add("unknown_query", loc, f"query {parts[0]} is not in queries.jsonl (or was skipped)")
            elif parts[1] not in corpus:
                data.problems.add("positive_not_in_pool", loc, f"document {parts[1]} is not in corpus.jsonl")
            elif parts[1] not in relevant.setdefault(parts[0], []):
                relevant[parts[0]].append(parts[1])
    return relevant


def read_tevatron(*, train: str | Path | None = None, val: str | Path | None = None, test: str | Path | None = None,
                  corpus: str | Path | None = None, pools: dict[str, str | Path] | None = None,
                  dataset: str = "tevatron", image_root: str | Path | None = None, language: str = "en") -> Converted:
    """Tevatron rows per split (files), ``corpus`` for the id-based form (also the default evaluation
    pool), ``pools`` {split: corpus file} to search a split in its own corpus."""
    files = {s: Path(p) for s, p in (("train", train), ("val", val), ("test", test)) if p is not None}
    if not files:
        raise ValueError("give at least one of train / val / test")
    root = Path(corpus).parent if corpus else next(iter(files.values())).parent
    data = Converted("tevatron", root, {}, {}, [])
    images = Path(image_root) if image_root else root
    main = read_corpus(data, Path(corpus), dataset, "docid", images) if corpus else {}
    split_pools = {s: read_corpus(data, Path(p), dataset, "docid", images) for s, p in (pools or {}).items()}
    for split, path in files.items():
        lookup = split_pools.get(split, main)
        passages: dict[str, Cand] = {}  # legacy rows' inline passages (the eval pool when there is no corpus)
        data.files.append(path)
        out = data.queries.setdefault(split, [])
        for loc, row in read_rows(path, shown_path(root, path), data):
            q = _tevatron_row(data, row, loc, dataset, lookup, passages, images, language)
            if q is not None:
                out.append(q)
        if split != "train":
            data.pools[split] = lookup if lookup else passages
    return data


def _tevatron_row(data: Converted, row: dict, loc: str, dataset: str, corpus: dict[str, Cand],
                  passages: dict[str, Cand], images: Path, language: str) -> Query | None:
    qid = row.get("query_id")
    text = row.get("query_text", row.get("query"))
    if qid is None or str(qid) == "":
        data.problems.add("missing_field", loc, "missing query_id")
        return None
    try:
        qimage = image_ref(row.get("query_image"), images)
    except ValueError as e:
        data.problems.add("bad_value", loc, str(e))
        return None
    text = text.strip() if isinstance(text, str) else ""
    qmod = modality_of(text, qimage)
    if qmod is None:
        data.problems.add("empty_query", loc, f"query {qid} has neither text nor image")
        return None
    if "positive_passages" in row:  # legacy form: passages inline
        pos, neg = [], []
        for key, out in (("positive_passages", pos), ("negative_passages", neg)):
            for k, p in enumerate(row.get(key) or []):
                c = _doc(data, dataset, p, f"{loc}:{key}[{k}]", "docid", None) if isinstance(p, dict) else None
                if c is None:
                    return None
                out.append(passages.setdefault(c.did, c))
    elif "positive_document_ids" in row:
        pos, neg = [], []
        for key, out in (("positive_document_ids", pos), ("negative_document_ids", neg)):
            for did in row.get(key) or []:
                if str(did) in corpus:
                    out.append(corpus[str(did)])
                elif key.startswith("positive"):
                    data.problems.add("positive_not_in_pool", loc, f"positive {did} is not in the corpus")
                    return None
                else:
                    data.problems.add("negative_not_in_pool", loc, f"negative {did} is not in the corpus (dropped)")
    else:
        data.problems.add("missing_field", loc, "neither positive_passages nor positive_document_ids")
        return None
    if not pos:
        data.problems.add("empty_positive", loc, f"query {qid} has no positive")
        return None
    task = task_of(qmod, pos[0].modality)
    if task is None:
        data.problems.add("unknown_task_id", loc, f"no M-BEIR task for {qmod} -> {pos[0].modality}")
        return None
    qid = str(qid)
    return Query(qid, stable_hash(f"{dataset}/q/{qid}"), dataset, task, text, qimage, qmod, pos, loc,
                 negatives=neg, language=language, neg_dids=[n.did for n in neg])
