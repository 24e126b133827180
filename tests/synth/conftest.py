"""Shared fixtures of the synthesis tests: a small image corpus and composed configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from PIL import Image

CORPUS_SIZE = 16


def make_corpus(root: Path, n: int = CORPUS_SIZE) -> list[str]:
    """``n`` small images with distinct colours (PNG and JPEG, one level of sub-directories);
    returns their names relative to ``root`` in sorted order."""
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        base = rng.integers(0, 256, 3)
        pixels = np.clip(base + rng.integers(-20, 21, (24, 32, 3)), 0, 255).astype(np.uint8)
        name = f"{'sub/' if i % 4 == 0 else ''}img{i:02d}.{'png' if i % 3 == 0 else 'jpg'}"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / name)
        names.append(name)
    return sorted(names)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root)
    return root


def synth_cfg(out_dir: Path, corpus: Path, num_samples: int, *extra: str):
    """conf/synth.yaml composed for a test: the OpenAI generator (unless ``extra`` picks another) at an
    unused loopback port (tests pass their server's), no backoff, one writer process."""
    openai = [] if any(e.startswith("synth/generator@") for e in extra) else [
        "generator.model=fake-mllm", "generator.base_url=http://127.0.0.1:9/v1"]
    with initialize_config_module("mmtrain.conf", version_base="1.3"):
        return compose("synth", overrides=[f"out_dir={out_dir}", f"num_samples={num_samples}",
                                           f"corpus.images={corpus}", *openai, "validation.backoff_seconds=0",
                                           "output.workers=1", "output.min_shards_per_source=1", *extra])
