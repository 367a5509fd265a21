"""Walk a folder tree for input files, reporting what cannot be walked instead of skipping it.

`Path.rglob` silently skips sub-folders it may not list and never enters symbolic
links to folders. Here links are followed (an image folder is often assembled from
links), a link that leads back to a folder it lies in is a loop and is reported, as
are sub-folders that cannot be listed and links that lead nowhere: the caller records
each as a failed sample, so the user sees what the run did not read.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FolderWalk:
    """Files found under a folder, and entries that could not be walked."""

    files: tuple[Path, ...]
    """Regular files (or links to them), sorted by path."""
    problems: tuple[tuple[Path, str], ...]
    """(entry, why it could not be read), sorted by path."""


def walk_files(root: Path) -> FolderWalk:
    """Every file under `root`, following links to folders and stopping at loops.

    An unreadable `root` itself raises OSError: there is nothing to run on.
    """
    root = Path(root)
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    # An explicit stack, not recursion: a deep tree must not hit Python's recursion limit.
    stack: list[tuple[Path, tuple[tuple[int, int], ...]]] = [(root, (_folder_id(root),))]
    while stack:
        folder, ancestors = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as exc:
            if folder == root:
                raise
            problems.append((folder, f"cannot list this folder ({exc.strerror or exc})"))
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_dir():  # follows links
                    identity = _folder_id(path)
                    if identity in ancestors:
                        problems.append((path, f"symbolic link loop: it leads back to {_target(path)}"))
                    else:
                        stack.append((path, (*ancestors, identity)))
                elif entry.is_file():
                    files.append(path)
                elif entry.is_symlink():
                    problems.append((path, missing_file_reason(path)))
            except OSError as exc:
                problems.append((path, _os_reason(exc)))
    return FolderWalk(tuple(sorted(files)), tuple(sorted(problems)))


def missing_file_reason(path: Path) -> str:
    """Why `path` is not a readable file: a loop, a broken link, a folder or nothing there."""
    try:
        path.stat()
    except OSError as exc:
        if path.is_symlink() and exc.errno == errno.ENOENT:
            return f"broken symbolic link (its target {os.readlink(path)} does not exist)"
        return _os_reason(exc)
    if path.is_dir():
        return "a folder, not a file"
    return "not a regular file"


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    if exc.errno == errno.ENOENT:
        return "file not found"
    return exc.strerror or str(exc)


def _folder_id(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_dev, stat.st_ino


def _target(path: Path) -> str:
    """The folder a looping link resolves to, for the message."""
    try:
        return str(path.resolve(strict=True))
    except (OSError, RuntimeError):
        return os.readlink(path) if path.is_symlink() else str(path)
