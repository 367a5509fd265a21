"""`verify --repair`: mark the samples of damaged shards pending, as a writer, under the store lock."""

from __future__ import annotations

from pathlib import Path

from cache_schema import CacheStore
from cache_schema.repair import find_damaged_shards, mark_shard_pending
from pipeline.store_lock import hold_store_lock


def repair_store(path: Path) -> list[str]:
    """One line per damaged shard, saying what was found and marked pending.

    The store is opened once before locking, so that a path holding no store gets no
    lock file beside it; the lock then keeps `generate` out while statuses change.
    """
    CacheStore.open(path)
    with hold_store_lock(Path(path)):
        store = CacheStore.open(path, writable=True)
        return [mark_shard_pending(store, damage) for damage in find_damaged_shards(store)]
