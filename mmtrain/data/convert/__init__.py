"""Converters: every released format -> shards of the canonical schema (schema.py) + ``manifest.json``.

One entry point, ``python -m mmtrain.data convert <source> ...`` (mmtrain/data/__main__.py), or
:func:`convert` / :func:`ensure_converted` from Python. Sources and their readers:

    mbeir            convert/mbeir.py   M-BEIR layout (per-dataset or upsampled union train file; the toy world)
    mmeb             convert/mmeb.py    MMEB-train tables and/or MMEB-eval tables
    mme5-hardneg     convert/mme5.py    mmE5 labelled set with list-literal negatives
    mme5-synthetic   convert/mme5.py    mmE5 synthetic set (modality and language columns)
    beir             convert/text.py    BEIR layout
    tevatron         convert/text.py    Tevatron jsonl, legacy (inline passages) or id-based + corpus

Each reader returns a ``Converted`` (core.py); ``writer.write_converted`` validates images and pools,
applies the bad-input threshold, and writes shards in parallel, resumably.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmtrain.data.convert.core import ConversionError, Converted
from mmtrain.data.convert.mbeir import read_mbeir
from mmtrain.data.convert.mme5 import read_mme5_hardneg, read_mme5_synthetic
from mmtrain.data.convert.mmeb import read_mmeb
from mmtrain.data.convert.text import read_beir, read_tevatron
from mmtrain.data.convert.writer import write_converted
from mmtrain.data.shards import MANIFEST, read_manifest, stale_source_files
from mmtrain.io import remove_dir

log = logging.getLogger(__name__)

READERS: dict[str, Callable[..., Converted]] = {
    "mbeir": read_mbeir,
    "mmeb": read_mmeb,
    "mme5-hardneg": read_mme5_hardneg,
    "mme5-synthetic": read_mme5_synthetic,
    "beir": read_beir,
    "tevatron": read_tevatron,
}
WRITE_OPTIONS = ("samples_per_shard", "min_shards_per_source", "max_bad", "workers", "max_short_side", "check_images")
CACHED_OPTIONS = ("samples_per_shard", "min_shards_per_source", "max_short_side")  # recorded in the manifest

__all__ = ["READERS", "ConversionError", "convert", "ensure_converted", "prepare_converted"]


def convert(source: str, out_dir: str | Path, **kw: Any) -> dict[str, Any]:
    """Read ``source`` with the reader's keyword arguments and write it to ``out_dir`` with the writer's
    (``WRITE_OPTIONS``); a killed run called again resumes. Returns the manifest."""
    if source not in READERS:
        raise ValueError(f"unknown source {source!r}; one of {sorted(READERS)}")
    write_kw = {k: kw.pop(k) for k in WRITE_OPTIONS if k in kw}
    data = READERS[source](**kw)
    settings = {"source": source, **{k: str(v) for k, v in kw.items()}, **write_kw}
    return write_converted(data, out_dir, settings=settings, **write_kw)


def ensure_converted(out_dir: str | Path, source: str, *, rebuild_stale: bool = False, **kw: Any) -> dict[str, Any]:
    """The manifest of ``out_dir`` when it holds a finished, up-to-date conversion; else convert (or
    resume; kw as :func:`convert`). Concurrent callers: the first to finish wins, the others read its result.

    The one stale-shard policy: shards whose source files changed since they were written are rebuilt
    when ``rebuild_stale`` (generated data, e.g. the toy world), otherwise they are a clear error
    (nothing of the user's is deleted). Shards built with other write settings are used as they are,
    with a warning."""
    if (Path(out_dir) / MANIFEST).exists():
        manifest = read_manifest(out_dir)
        stale = stale_source_files(manifest, manifest.get("source_root", "/"))
        if stale and not rebuild_stale:
            raise RuntimeError(f"{out_dir} is stale: {len(stale)} source files changed since it was written "
                               f"(e.g. {stale[:3]}); delete it to convert again")
        if not stale:
            differs = {k: (manifest.get(k), kw[k]) for k in CACHED_OPTIONS if k in kw and manifest.get(k) != kw[k]}
            if differs:  # cached means cached: say so rather than silently rebuild or ignore
                log.warning("%s was built with other settings (built, asked): %s; delete it to rebuild", out_dir, differs)
            return manifest
        log.warning("%s is stale (%d source files changed); rebuilding", out_dir, len(stale))
        remove_dir(out_dir)
    try:
        return convert(source, out_dir, **kw)
    except FileExistsError:  # another process finished first
        return read_manifest(out_dir)


def prepare_converted(out_dir: str | Path, spec: dict[str, Any], mbeir_root: str | Path,
                      rebuild_stale: bool = False) -> dict[str, Any]:
    """The data module's conversion step (``data.convert``, ``data.parts.*.convert``, the text set's):
    ``spec`` = {source, reader kwargs, write options}; ``toy_layout: mmeb|tevatron|mme5_hardneg|
    mme5_synthetic`` (with ``toy_options`` for the mmE5 ones) first writes the toy world (whose M-BEIR
    root is ``mbeir_root``) in that layout beside it and converts that. ``rebuild_stale``: see
    :func:`ensure_converted`."""
    spec = dict(spec)
    layout, options = spec.pop("toy_layout", None), dict(spec.pop("toy_options", None) or {})
    if layout is not None:
        from mmtrain.toy.layouts import write_toy_layout
        from mmtrain.toy.mme5 import TOY_MME5_LAYOUTS

        world = Path(mbeir_root).parent
        if layout in TOY_MME5_LAYOUTS:
            written = TOY_MME5_LAYOUTS[layout](world, world / layout, **options)
        else:
            written = write_toy_layout(layout, world, world / layout, **options)
        spec = {**written, **spec}
    return ensure_converted(out_dir, spec.pop("source"), rebuild_stale=rebuild_stale, **spec)
