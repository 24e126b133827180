"""The user's image corpus (mmE5 samples LAION-400M): a directory, or a text file listing images.

Order is fixed (sorted relative paths for a directory, file order for a list), so sample ``i``'s anchor
image is the same on every run. Images are named by their path relative to ``root`` (the directory,
or the list file's directory); that name is what configurations, part files and shards record.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


class ImageCorpus:
    def __init__(self, root: Path, paths: list[str]):
        if not paths:
            raise ValueError(f"the image corpus at {root} is empty")
        dup = [p for p, n in Counter(paths).items() if n > 1]
        if dup:
            raise ValueError(f"the image corpus lists {len(dup)} images more than once, e.g. {dup[:3]}")
        self.root = root
        self.paths = paths

    @classmethod
    def load(cls, spec: str | Path) -> ImageCorpus:
        """A directory (every image file below it, recursively) or a list file: one path per line,
        relative to the list's directory or absolute; blank lines and ``#`` comments skipped."""
        spec = Path(spec)
        if spec.is_dir():
            found = sorted(p.relative_to(spec).as_posix() for p in spec.rglob("*")
                           if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            return cls(spec, found)
        if not spec.is_file():
            raise FileNotFoundError(f"image corpus {spec}: no such directory or list file")
        root = spec.parent
        paths, missing = [], []
        for lineno, line in enumerate(spec.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            path = Path(line) if Path(line).is_absolute() else root / line
            if not path.is_file():
                missing.append(f"{spec.name}:{lineno}: {line}")
                continue
            paths.append(line if not Path(line).is_absolute() else str(path))
        if missing:
            raise FileNotFoundError(f"image list {spec}: {len(missing)} of {len(paths) + len(missing)} listed "
                                    f"images do not exist, e.g.\n  " + "\n  ".join(missing[:10]))
        return cls(root, paths)

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, name: str) -> Path:
        """The file of a corpus image name (absolute names stay as they are)."""
        p = Path(name)
        return p if p.is_absolute() else self.root / p

    def fingerprint(self) -> str:
        """Names and sizes of every image, in order: changes when the corpus does (cheap: no reads)."""
        digest = hashlib.sha256()
        for name in self.paths:
            digest.update(f"{name}\0{self.path(name).stat().st_size}\n".encode())
        return digest.hexdigest()
