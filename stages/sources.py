"""Which images a stage-one run reads: a folder (recursive), a list file or one image."""

from __future__ import annotations

import codecs
import hashlib
from dataclasses import dataclass
from pathlib import Path

from stages.datasets.annotations import SourceAnnotation
from stages.errors import ConfigError
from stages.folder_walk import walk_files
from stages.images import SUPPORTED_SUFFIXES, image_format

TEXT_SNIFF_BYTES = 1 << 16
"""Bytes read to tell a list file from a binary file before reading all of it."""


@dataclass(frozen=True)
class ImageSource:
    """One input image and its stable id (relative path, or the list file's entry)."""

    sample_id: str
    path: Path
    annotation: SourceAnnotation | None = None
    """What a dataset reader knows about the image (ground truth, box, mask); None for
    plain image folders and list files."""
    problem: str | None = None
    """Why the entry cannot be read, found while listing (a symbolic link loop, a
    sub-folder that cannot be listed); the sample is recorded as failed with it."""


def list_image_sources(source: str | Path) -> list[ImageSource]:
    """Images under a folder (recursive, sorted), in a list file, or a single image.

    A list file is text with one path per line (relative to the list file's folder);
    blank lines and lines starting with '#' are ignored. Listed files that do not
    exist are kept: they are recorded as failed, not silently dropped.
    """
    source = Path(source)
    if source.is_dir():
        return _folder_sources(source)
    if not source.is_file():
        raise ConfigError(f"{source}: no such folder, list file or image")
    if source.suffix.lower() in SUPPORTED_SUFFIXES:
        return [ImageSource(source.name, source)]
    with open(source, "rb") as handle:
        head = handle.read(TEXT_SNIFF_BYTES)  # not all of it: IMAGES may name a 5 GB video
    binary = _binary_reason(head, final=len(head) < TEXT_SNIFF_BYTES)
    if binary is None:
        text = source.read_bytes()
        binary = _binary_reason(text, final=True)
    if binary is not None:
        # Not text: an image under another name (photo.tif, a download without a suffix)
        # is read like any image; anything else is refused here, not as a decode error.
        if image_format(source) is not None:
            return [ImageSource(source.name, source)]
        raise ConfigError(
            f"{source}: is neither an image we can read ({', '.join(SUPPORTED_SUFFIXES)}, or another "
            f"format PIL knows) nor a UTF-8 text list of image paths ({binary})"
        )
    items = []
    seen: set[str] = set()
    # A byte-order mark, as some editors write, is not part of the first path.
    for number, line in enumerate(text.decode("utf-8-sig").splitlines(), start=1):
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


def _folder_sources(folder: Path) -> list[ImageSource]:
    """The images under a folder, and the entries that could not be walked (as failed)."""
    try:
        walk = walk_files(folder)
    except OSError as exc:
        raise ConfigError(f"{folder}: cannot list this folder ({exc.strerror or exc})") from None
    items = [
        ImageSource(p.relative_to(folder).as_posix(), p)
        for p in walk.files
        if p.suffix.lower() in SUPPORTED_SUFFIXES
    ]
    items += [ImageSource(p.relative_to(folder).as_posix(), p, problem=why) for p, why in walk.problems]
    if not items:
        raise ConfigError(f"{folder}: no images ({', '.join(SUPPORTED_SUFFIXES)}) found in this folder")
    # Sorted by path as before problems were listed, so existing stores keep their order.
    return sorted(items, key=lambda item: item.path)


def _binary_reason(data: bytes, final: bool) -> str | None:
    """Why `data` is not the text of a list file, or None. NUL bytes are valid UTF-8 but
    never in a list of paths; `final` False allows a character cut at the end of `data`."""
    if bytes(1) in data:
        return f"it holds a NUL byte at offset {data.index(bytes(1))}"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=final)
    except UnicodeDecodeError as exc:
        return f"byte {exc.start} is not UTF-8"
    return None


def sample_seed(base_seed: int, sample_id: str) -> int:
    """A 63-bit seed that depends only on the base seed and the sample id."""
    digest = hashlib.sha256(f"{base_seed}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
