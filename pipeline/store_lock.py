"""One writer per store: the lock that `generate` holds for its whole run.

The lock file lies BESIDE the store (`out.zarr.lock`), never inside it: `--overwrite`
deletes the store folder, and a lock file deleted while held no longer excludes anyone
(the next writer would create and lock a fresh file). Beside it, the lock exists before
the store does and outlives its deletion. The OS lock (flock) is released by the kernel
when its holder dies, even by kill -9, so a killed run never blocks the next one; the
lock file itself stays (empty and harmless). Dask workers write only their own shards
and take no lock: the coordinator holds it for them.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from cache_schema.errors import StoreInUseError


def lock_path(store: Path) -> Path:
    return store.with_name(store.name + ".lock")


def holder_path(store: Path) -> Path:
    """Who holds the lock (PID, host): flock itself cannot say, so the holder writes it here."""
    return store.with_name(store.name + ".lock.info")


@contextmanager
def hold_store_lock(store: Path, what: str = "store") -> Iterator[None]:
    """Hold the writer lock of `store` for the body, or raise StoreInUseError at once.

    `what` names the thing in the error: "store" for a cache, "run" for a training run
    directory (`fit` holds the same kind of lock beside its --out)."""
    store = Path(store)
    lock_file, info = lock_path(store), holder_path(store)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=0)  # one attempt: a second writer is refused, not queued
    except Timeout:
        raise StoreInUseError(f"{store}: {what} is in use by {_holder(store)} (lock {lock_file})") from None
    try:
        info.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        yield
    finally:
        # Removed while still locked, so it never describes a later holder.
        info.unlink(missing_ok=True)
        lock.release()


def lock_holder(store: Path) -> tuple[int, str] | None:
    """(PID, host) that holds the writer lock of `store`, or None while none is recorded
    (no holder, or one that has not written it yet: it does so right after locking)."""
    try:
        record = json.loads(holder_path(Path(store)).read_text())
        return int(record["pid"]), str(record["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _holder(store: Path) -> str:
    holder = lock_holder(store)
    return "another process (PID not yet recorded)" if holder is None else f"PID {holder[0]} on {holder[1]}"
