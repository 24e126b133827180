"""mmE5 labelled set with mined negatives and mmE5 synthetic set (data-formats.md §4, §5).

Hard-negative set (``intfloat/mmE5-MMEB-hardneg``): MMEB-train columns, but ``neg_text`` and
``neg_image_path`` hold a Python list literal serialised as a string (``"['a caption', '']"``). The
reference loader calls ``eval`` on it; here it is parsed with ``ast.literal_eval`` (literals only, no code
runs) and must be a list of str; a row that fails is quarantined: skipped and listed with its reason.
Shards store real lists. The reference loader's draw (first ``negative_ratio`` negatives, repeating the
last) is the stream's business (``num_negatives``), not the converter's.

Synthetic set (``intfloat/mmE5-synthetic``): ``Classification`` / ``Retrieval`` / ``VQA`` tables with the
MMEB columns plus ``modality`` (``T2I``, ``IT2IT``, ...; checked against the images present) and a language
column where present (``language`` or ``lang``; else null). Negative fields may be plain strings or list
literals: both are accepted. ``<|image_1|>`` in a query without an image is dropped (counted as a repair).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from mmtrain.data.convert.core import Converted, read_rows
from mmtrain.data.convert.mmeb import discover, pair_row, read_train_tables

MAX_LITERAL_CHARS = 1_000_000  # a negative list is a few kB; refuse to parse anything absurd


def parse_str_list(value: Any, *, plain_ok: bool) -> list[str]:
    """A list of str from a parquet list, a list literal string, or (``plain_ok``) a plain string.
    Raises ValueError with the reason otherwise. Never ``eval``: ``ast.literal_eval`` only builds literals."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, str):
        s = value.strip()
        if not s:
            return []
        if plain_ok and not (s.startswith("[") and s.endswith("]")):
            return [value]
        if len(s) > MAX_LITERAL_CHARS:
            raise ValueError(f"list literal of {len(s)} characters")
        try:
            items = ast.literal_eval(s)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
            raise ValueError(f"not a Python list literal ({type(e).__name__}): {s[:80]!r}") from None
        if not isinstance(items, list):
            raise ValueError(f"literal is a {type(items).__name__}, not a list: {s[:80]!r}")
    else:
        raise ValueError(f"expected a list or a string, got {type(value).__name__}")
    if not all(isinstance(x, str) for x in items):
        raise ValueError(f"list items must be str, got {sorted({type(x).__name__ for x in items})}")
    return items


def _negative_parser(plain_ok: bool):
    def parse(texts: Any, images: Any) -> list[tuple[str, str]]:
        t = parse_str_list(texts, plain_ok=plain_ok)
        i = parse_str_list(images, plain_ok=plain_ok)
        if t and i and len(t) != len(i):
            raise ValueError(f"neg_text has {len(t)} items, neg_image_path {len(i)}")
        n = max(len(t), len(i))
        return [((t[k] if t else ""), (i[k] if i else "")) for k in range(n)]

    return parse


def read_mme5_hardneg(root: str | Path, *, image_root: str | Path | None = None, split: str = "train") -> Converted:
    """Every ``<Subset>/<split>-*.parquet|jsonl`` table under ``root``."""
    root = Path(root)
    data = Converted("mme5_hardneg", root, {}, {}, [])
    read_train_tables(data, root, Path(image_root or root), split, parse_negatives=_negative_parser(False))
    return data


def read_mme5_synthetic(root: str | Path, *, image_root: str | Path | None = None) -> Converted:
    """Every table under ``root`` (``Classification/Classification.parquet``, ...); the subset is the
    table's directory (or file stem), the ``modality`` column is required."""
    root = Path(root)
    data = Converted("mme5_synthetic", root, {"train": []}, {}, [])
    images = Path(image_root or root)
    parse = _negative_parser(True)
    tables = [(s, p) for s, _, p in discover(root, None)]
    if not tables:
        data.problems.add("missing_file", str(root), "no parquet/jsonl tables found")
    for subset, path in tables:
        data.files.append(path)
        shown = path.relative_to(root).as_posix()
        for index, (loc, row) in enumerate(read_rows(path, shown, data)):
            tag = row.get("modality")
            if not isinstance(tag, str) or "2" not in tag:
                data.problems.add("missing_field", loc, f"modality {tag!r} is not like 'T2I'")
                continue
            language = row.get("language", row.get("lang"))
            q = pair_row(data, row, loc, index, subset, images, parse_negatives=parse,
                         language=language if isinstance(language, str) and language else None, modality_tag=tag)
            if q is not None:
                data.queries["train"].append(q)
    return data
