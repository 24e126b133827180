"""One manifest over several converted sources (any families), with per-part weights.

``write_mix(out, {manifest_dir: weight, ...})`` writes ``out/manifest.json`` whose train sources are every
part's train sources (renamed ``<family>.<name>``, shards referenced by absolute path: nothing is
copied) and whose ``weights`` give each source ``weight(part) * count(source) / count(part)``: parts are
drawn by their weights, and inside a part sources by size (UniIR's union file, unless a part's own
``within`` weights say otherwise). Evaluation (val/test sources, pools) and the training pool come from one
part (``eval_from``, default the first). ``TrainStream(out, weights=manifest["weights"])`` then mixes,
e.g. M-BEIR : text = 1 : 1 for MM-Embed's continual stage, with everything the stream already does:
per-(seed, batch) draws shared by all ranks, homogeneous or mixed batches, exact resume.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mmtrain.data.shards import MANIFEST, SCHEMA_VERSION, file_info, read_manifest
from mmtrain.io import atomic_write_json


def write_mix(out_dir: str | Path, parts: dict[str | Path, float], *, eval_from: str | Path | None = None,
              within: dict[str | Path, dict[str, float]] | None = None) -> dict[str, Any]:
    """Write and return the mix manifest. ``within``: per part, weights of its sources by name (instead
    of by size); a source left out of it gets weight 0."""
    if not parts:
        raise ValueError("a mix needs at least one part")
    if any(w < 0 for w in parts.values()) or sum(parts.values()) <= 0:
        raise ValueError(f"part weights must be >= 0 with a positive sum, got {parts}")
    resolved = {Path(p).resolve(): float(w) for p, w in parts.items()}
    within_resolved = {Path(p).resolve(): w for p, w in (within or {}).items()}
    home = Path(eval_from).resolve() if eval_from is not None else next(iter(resolved))
    if home not in resolved:
        raise ValueError(f"eval_from {home} is not one of the parts")
    sources: dict[str, Any] = {}
    weights: dict[str, float] = {}
    families: dict[str, str] = {}
    for part, weight in resolved.items():
        manifest = read_manifest(part)
        family = manifest.get("source_family", "mbeir")
        train = {e["name"]: e for e in manifest["sources"].values() if e["split"] == "train" and e["count"] > 0}
        if not train:
            raise ValueError(f"{part} has no train sources")
        inner = within_resolved.get(part) or {n: float(e["count"]) for n, e in train.items()}
        unknown = sorted(set(inner) - set(train))
        if unknown:
            raise ValueError(f"within-weights for {part} name unknown sources {unknown}; it has {sorted(train)}")
        total = sum(inner.values())
        for name, entry in sorted(train.items()):
            mixed = f"{family}.{name}"
            if f"train/{mixed}" in sources:
                raise ValueError(f"two parts have the source {mixed}; convert them to one manifest instead")
            sources[f"train/{mixed}"] = {**entry, "name": mixed, "family": family,
                                         "shards": [str(part / s) for s in entry["shards"]]}
            weights[mixed] = weight * inner.get(name, 0.0) / total if total > 0 else 0.0
            families[mixed] = str(part)
    home_manifest = read_manifest(home)
    for key, entry in home_manifest["sources"].items():
        if entry["split"] != "train":
            sources[key] = {**entry, "shards": [str(home / s) for s in entry["shards"]]}
    pools = {split: {**pool, "shards": [str(home / s) for s in pool["shards"]]}
             for split, pool in home_manifest["pools"].items()}
    manifest = {
        "schema_version": SCHEMA_VERSION, "source_family": "mix", "splits": home_manifest.get("splits", []),
        "parts": {str(p): w for p, w in resolved.items()}, "eval_from": str(home), "weights": weights,
        "part_of_source": families, "sources": sources, "pools": pools,
        "dataset_ids": home_manifest.get("dataset_ids", {}),
        # The parts' manifests, so a re-converted part makes this mix stale (shards.stale_source_files).
        "source_files": {str(p / MANIFEST): file_info(p / MANIFEST) for p in resolved},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def family_weights(manifest: dict[str, Any]) -> dict[str, float]:
    """Normalised draw probability of each part (by its directory) in a mix manifest."""
    total = sum(manifest["weights"].values())
    out: dict[str, float] = {}
    for name, w in manifest["weights"].items():
        part = manifest["part_of_source"][name]
        out[part] = out.get(part, 0.0) + w / total
    return out


def mix_dir(shard_dir: str | Path, mix: dict[str, float], mix_self: float) -> Path:
    """Where the data module keeps the mix of ``shard_dir`` (weight ``mix_self``) with ``mix``."""
    key = json.dumps([str(Path(shard_dir).resolve()), mix_self, sorted((str(Path(p).resolve()), w) for p, w in mix.items())])
    return Path(shard_dir).parent / f"{Path(shard_dir).name}.mix-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def prepare_mix(shard_dir: str | Path, mix: dict[str, float], mix_self: float) -> dict[str, Any]:
    """Write the data module's mix manifest: ``shard_dir`` (evaluated) with weight ``mix_self`` plus ``mix``."""
    return write_mix(mix_dir(shard_dir, mix, mix_self), {str(shard_dir): mix_self, **mix}, eval_from=shard_dir)


def mixed_train_dir(shard_dir: str | Path, mix: dict[str, float] | None,
                    mix_self: float) -> tuple[Path, dict[str, float] | None]:
    """(manifest dir, source weights) the training stream reads: ``shard_dir`` itself without a mix."""
    if not mix:
        return Path(shard_dir), None
    out = mix_dir(shard_dir, mix, mix_self)
    return out, read_manifest(out)["weights"]
