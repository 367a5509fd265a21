"""Which images a stage-one run reads: a folder (recursive), a list file or one image."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from stages.datasets.annotations import SourceAnnotation
from stages.errors import ConfigError
from stages.images import SUPPORTED_SUFFIXES


@dataclass(frozen=True)
class ImageSource:
    """One input image and its stable id (relative path, or the list file's entry)."""

    sample_id: str
    path: Path
    annotation: SourceAnnotation | None = None
    """What a dataset reader knows about the image (ground truth, box, mask); None for
    plain image folders and list files."""


def list_image_sources(source: str | Path) -> list[ImageSource]:
    """Images under a folder (recursive, sorted), in a list file, or a single image.

    A list file is text with one path per line (relative to the list file's folder);
    blank lines and lines starting with '#' are ignored. Listed files that do not
    exist are kept: they are recorded as failed, not silently dropped.
    """
    source = Path(source)
    if source.is_dir():
        found = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
        items = [ImageSource(p.relative_to(source).as_posix(), p) for p in found]
        if not items:
            raise ConfigError(f"{source}: no images ({', '.join(SUPPORTED_SUFFIXES)}) found in this folder")
        return items
    if not source.is_file():
        raise ConfigError(f"{source}: no such folder, list file or image")
    if source.suffix.lower() in SUPPORTED_SUFFIXES:
        return [ImageSource(source.name, source)]
    items = []
    seen: set[str] = set()
    for number, line in enumerate(source.read_text().splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if entry in seen:
            raise ConfigError(f"{source}:{number}: {entry!r} is listed twice")
        seen.add(entry)
        path = Path(entry) if Path(entry).is_absolute() else source.parent / entry
        items.append(ImageSource(entry, path))
    if not items:
        raise ConfigError(f"{source}: the list file names no images")
    return items


def sample_seed(base_seed: int, sample_id: str) -> int:
    """A 63-bit seed that depends only on the base seed and the sample id."""
    digest = hashlib.sha256(f"{base_seed}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
