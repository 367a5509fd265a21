"""`verify --repair`: mark the samples of damaged shards pending, as a writer, under the store lock."""

from __future__ import annotations

from pathlib import Path

from cache_schema import CacheStore
from cache_schema.repair import mark_shard_pending
from pipeline.store_lock import hold_store_lock
from pipeline.store_report import VerifyReport, scan_store, verify_report


def repair_store(path: Path) -> tuple[list[str], VerifyReport]:
    """One line per damaged shard, saying what was found and marked pending, and the
    verify report of the store as the repair left it.

    The store is read once for both; only when its status did not read (so the contents
    were not checked) is it read again after the repair. It is opened once before locking,
    so that a path holding no store gets no lock file beside it; the lock then keeps
    `generate` out while statuses change.
    """
    CacheStore.open(path)
    with hold_store_lock(Path(path)):
        scan = scan_store(CacheStore.open(path, writable=True))
        lines = [mark_shard_pending(scan.store, damage) for damage in scan.damage]
    if not scan.complete:
        return lines, verify_report(path)
    return lines, scan.report(repaired=frozenset(damage.shard for damage in scan.damage))
