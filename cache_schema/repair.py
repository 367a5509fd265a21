"""Find the damaged shards of a store and mark their samples pending, so `generate` redoes them.

Every array holds shard `s` in one file, so damage is per shard: a file of a done
sample that is missing (zarr would read zeros), a file that does not decode, or a
status chunk with codes no writer uses. Repair marks every sample of such a shard
pending and removes the files that do not decode; the next `generate` rewrites the
whole shard (no sample of it is kept, so none of its old files is read). The caller
holds the store's writer lock (pipeline/store_lock.py): a repair is a write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cache_schema.errors import StoreDamagedError
from cache_schema.integrity import shard_keys
from cache_schema.layout import STATUS_DONE, STATUS_FAILED, STATUS_NAMES
from cache_schema.store import DECODE_ERRORS, CacheStore


@dataclass(frozen=True)
class ShardDamage:
    """What is wrong with one shard."""

    shard: int
    findings: tuple[str, ...]
    """One line per damaged file, e.g. 'views/c/1/0/0/0/0 does not decode (...)'."""
    undecodable: tuple[str, ...]
    """Arrays whose file of this shard does not decode (removed by the repair)."""
    status: tuple[int, ...] | None
    """The shard's status codes as read, or None when the status chunk does not decode."""
    errors: tuple[str, ...] = ()
    """Why each array of `undecodable` does not decode, in the same order (one line each)."""
    missing: tuple[tuple[str, str], ...] = ()
    """(array, store key) of each file of a done sample that is not on disk."""


BlockCheck = Callable[[str, int, np.ndarray], None]
"""check(array, shard, block): called by `find_damaged_shards` with each block it decodes
whose files are all on disk, so that content checks ride on the same read."""


def find_damaged_shards(store: CacheStore, check: BlockCheck | None = None) -> list[ShardDamage]:
    """Read every shard of every array back once, and look up the files of done samples.

    Status is read first in each shard: whether the shard holds a done sample decides
    which missing files are damage, and so which blocks `check` sees.
    """
    layout = store.layout
    names = ["status"] + [name for name in layout.arrays() if name != "status"]
    damaged = []
    for shard in range(layout.num_shards):
        start, stop = layout.shard_range(shard)
        findings: list[str] = []
        undecodable: list[str] = []
        errors: list[str] = []
        missing: dict[str, list[str]] = {}
        status = None
        for name in names:
            try:
                block = np.asarray(store.array(name)[start:stop])
            except DECODE_ERRORS as exc:
                undecodable.append(name)
                errors.append(" ".join(str(exc).split()))
                findings.append(f"{_keys(store, name, shard)} does not decode ({errors[-1]})")
                continue
            if name == "status":
                status = block.astype(np.uint8)
                if np.any(status == STATUS_DONE):
                    # zarr reads a missing or empty file as zeros: look the files up on disk.
                    for array in store.per_sample_array_names():
                        keys = store.missing_shard_files(array, shard)
                        if keys:
                            missing[array] = keys
            if check is not None and name not in missing:
                check(name, shard, block)
        if status is not None:
            unknown = np.setdiff1d(np.unique(status), list(STATUS_NAMES))
            if unknown.size:
                status_keys = _keys(store, "status", shard)
                findings.append(f"{status_keys} holds unknown status codes {unknown.tolist()}")
        absent = [(name, key) for name, keys in missing.items() if name not in undecodable for key in keys]
        findings += [f"{key} is missing or empty" for _, key in absent]
        if findings:
            codes = None if status is None else tuple(int(code) for code in status)
            damaged.append(
                ShardDamage(shard, tuple(findings), tuple(undecodable), codes, tuple(errors), tuple(absent))
            )
    return damaged


def mark_shard_pending(store: CacheStore, damage: ShardDamage) -> str:
    """Mark every sample of a damaged shard pending, remove its files that do not decode,
    and say what was done in one line."""
    start, stop = store.layout.shard_range(damage.shard)
    # Status first: once the shard reads as pending, a repair killed below leaves nothing
    # that reads as done, and running it again finishes the job. A status chunk that
    # does not decode is removed first (a missing chunk reads as pending, 0).
    removed = _remove_shard_files(store, "status", damage.shard) if "status" in damage.undecodable else []
    store.array("status")[start:stop] = np.zeros(stop - start, dtype=np.uint8)
    if "failure_reason" in damage.undecodable:
        removed += _remove_shard_files(store, "failure_reason", damage.shard)
    store.array("failure_reason")[start:stop] = np.asarray([""] * (stop - start), dtype=str)
    for name in damage.undecodable:
        if name not in ("status", "failure_reason"):
            removed += _remove_shard_files(store, name, damage.shard)
    if damage.status is None:
        before = "its status did not decode"
    else:
        codes = np.asarray(damage.status)
        done, failed = int(np.sum(codes == STATUS_DONE)), int(np.sum(codes == STATUS_FAILED))
        before = f"{done} were done, {failed} failed"
    line = (
        f"shard {damage.shard} (samples {start}..{stop - 1}): {'; '.join(damage.findings)}; "
        f"marked {stop - start} samples pending ({before})"
    )
    return line + (f"; removed {', '.join(removed)}" if removed else "")


def _keys(store: CacheStore, name: str, shard: int) -> str:
    start, stop = store.layout.shard_range(shard)
    return ", ".join(f"{name}/{key}" for key in shard_keys(store.array(name), start, stop))


def _remove_shard_files(store: CacheStore, name: str, shard: int) -> list[str]:
    """Delete the files of one shard of one array; only files inside the store, ever."""
    start, stop = store.layout.shard_range(shard)
    root = store.path.resolve()
    removed = []
    for key in shard_keys(store.array(name), start, stop):
        path = store.path / name / key
        if not path.is_file():
            continue
        if not path.resolve().is_relative_to(root):
            raise StoreDamagedError(
                f"{store.path}: {name}/{key} resolves to {path.resolve()}, outside the store; "
                "refusing to remove it"
            )
        path.unlink()
        removed.append(f"{name}/{key}")
    return removed
