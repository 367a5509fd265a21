"""Checks of a command's --out before any work: an existing file where a folder is wanted
(or the reverse) would otherwise surface minutes later as an OSError traceback."""

from __future__ import annotations

from pathlib import Path


def _blocking_file(path: Path) -> Path | None:
    """The first existing ancestor of `path` when it is not a folder (mkdir would fail there)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_out_file(path: Path, option: str = "--out") -> None:
    """`path` will be written as a file: it may exist as a file, not as a folder."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name")
    blocking = _blocking_file(path)
    if blocking is not None:
        raise ValueError(f"{option} {path}: {blocking} is a file, not a folder")


def check_out_folder(path: Path, option: str = "--out") -> None:
    """`path` will be a folder: it may exist as a folder, not as a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file, not a folder")
    blocking = _blocking_file(path)
    if blocking is not None:
        raise ValueError(f"{option} {path}: {blocking} is a file, not a folder")
