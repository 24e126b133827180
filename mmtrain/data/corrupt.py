"""Skipping corrupt samples in the training stream: only when configured (``skip_corrupt``), and counted.

Without it a corrupt shard member fails the run at once (the default: data loss is never silent). With
it, each skipped sample is logged with its shard, key and reason, plus the running count of this reader
(rank x worker), so the logs say exactly what was lost.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from PIL import Image

log = logging.getLogger("mmtrain.data.stream")
T = TypeVar("T")


def check_images(sample: dict[str, Any]) -> None:
    """Raise when an image member of a raw sample does not decode (JPEG at 1/8 scale: cheap, but every
    block is read, so truncation shows)."""
    for name, value in sample.items():
        if name == "jpg" or name.endswith(".jpg"):
            with Image.open(io.BytesIO(value)) as im:
                im.draft("RGB", (64, 64))
                im.load()


class CorruptSkipper:
    """Counts skipped samples of one reader; ``handler`` follows webdataset's handler contract."""

    def __init__(self) -> None:
        self.count = 0

    def handler(self, exn: Exception, where: str = "") -> bool:
        self.count += 1
        log.warning("skip_corrupt: skipped a corrupt sample %s(%s: %s); %d skipped by this reader so far",
                    f"{where} " if where else "", type(exn).__name__, exn, self.count)
        return True

    def example(self, make: Callable[[dict, Any], T], sample: dict, rng: Any) -> T | None:
        """``make(sample, rng)`` after checking the sample's images; None (logged, counted) if anything fails."""
        try:
            check_images(sample)
            return make(sample, rng)
        except Exception as e:  # any failure of one sample: missing member, bad json field, bad image
            self.handler(e, f"{sample.get('__url__')}:{sample.get('__key__')}")
            return None
