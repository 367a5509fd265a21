"""SHA-256 of a file, streamed: model weights and checkpoints can be gigabytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK_BYTES = 4 << 20
"""Read size of the streaming hash: large enough for full disk throughput, small in memory."""


def sha256_file(path: Path) -> str:
    """Streaming SHA-256 of one file, BLOCK_BYTES at a time."""
    digest = hashlib.sha256()
    buffer = bytearray(BLOCK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while True:
            count = handle.readinto(buffer)
            if not count:
                break
            digest.update(view[:count])
    return digest.hexdigest()
