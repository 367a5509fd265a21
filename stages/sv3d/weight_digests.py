"""SHA-256 of a model's weight files, cached so that a 10 GB file is not reread every run.

A store's fingerprint must change when the weights change, even to others of the same
shapes (a fine-tune, a different seed), so the model identity covers the weights'
bytes. Hashing SV3D-p's ~10 GB takes about a minute, so each digest is remembered in a
small JSON file beside the model (`.keydiff3d-weight-digests.json`), keyed by the file's
relative name, size, mtime_ns, ctime_ns and inode. ctime and the inode cannot be set
back by `touch` or a copy that preserves mtimes, so new bytes under an old mtime are
still seen. When the model folder is not writable the cache lives in the user's cache
folder; when neither works, every run hashes. The cache never makes a run fail: an
unreadable or malformed cache file is ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from stages.file_digests import sha256_file

CACHE_NAME = ".keydiff3d-weight-digests.json"


def is_digest_cache_file(name: str) -> bool:
    """The digest cache or a temporary file of a write of it that was killed (`_write_cache`)."""
    return name == CACHE_NAME or (name.startswith(CACHE_NAME + ".") and name.endswith(".tmp"))


CACHE_VERSION = 1
RACY_SECONDS = 2.0
"""A file modified this recently may still change within the same mtime tick (file
systems stamp times coarsely), so its digest is not cached: the next run hashes again."""


def user_cache_path(root: Path) -> Path:
    """Where a read-only model's digests are kept: one file per model folder, per user."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    name = hashlib.sha256(str(root).encode()).hexdigest()[:32]
    return base / "keydiff3d" / "weight-digests" / f"{name}.json"


def weight_digests(root: Path, files: list[Path]) -> dict[str, str]:
    """Relative name -> SHA-256 of each weight file, from the cache where it still holds."""
    places = [root / CACHE_NAME, user_cache_path(root)]
    stored = [_read_cache(place) for place in places]
    cached = {**stored[1], **stored[0]}
    digests: dict[str, str] = {}
    entries: dict[str, Any] = {}
    now = time.time()
    for path in files:
        name = path.relative_to(root).as_posix()
        before = _file_key(path)
        entry = cached.get(name)
        if isinstance(entry, dict) and entry.get("key") == before and isinstance(entry.get("sha256"), str):
            digests[name] = entry["sha256"]
            entries[name] = entry
            continue
        digests[name] = sha256_file(path)
        # A file that changed while it was read, or may still change unseen, is not cached.
        if _file_key(path) == before and now - before[1] / 1e9 > RACY_SECONDS:
            entries[name] = {"key": before, "sha256": digests[name]}
    # The model folder's cache first (shared by every user), else the user's own.
    for place, known in zip(places, stored, strict=True):
        if known == entries or _write_cache(place, entries):
            break
    return digests


def _file_key(path: Path) -> list[int]:
    """What must be unchanged for a cached digest to hold: size, mtime_ns, ctime_ns, inode."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _read_cache(place: Path) -> dict[str, Any]:
    try:
        data = json.loads(place.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}  # absent, unreadable or damaged: hash again and rewrite it
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _write_cache(place: Path, entries: dict[str, Any]) -> bool:
    """Replace the cache file atomically; False (and nothing left behind) when it cannot."""
    text = json.dumps({"version": CACHE_VERSION, "files": entries}, indent=1, sort_keys=True)
    temporary = None
    try:
        place.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=place.parent, prefix=place.name + ".", suffix=".tmp", delete=False
        ) as handle:
            temporary = Path(handle.name)
            handle.write(text)
        os.replace(temporary, place)
    except OSError:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        return False
    return True
