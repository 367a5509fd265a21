"""Create, resume and write a KeyDiff3D Zarr v3 store, one whole shard at a time.

Crash safety rests on two facts: zarr's LocalStore writes every file to a temporary
name and renames it into place (a file is either old or new, never half), and
`write_shard` writes the status chunk of a shard LAST. A killed writer therefore
leaves its samples pending, never done-but-partial, and a rerun redoes the shard.
"""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from cache_schema.codecs import compressors_for
from cache_schema.errors import CacheError, SchemaMismatchError, StoreDamagedError, StoreNotFoundError
from cache_schema.integrity import check_array_nodes, read_node_json, shard_keys
from cache_schema.layout import (
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_PENDING,
    ArraySpec,
    CacheLayout,
)
from cache_schema.metadata import ATTRS_KEY, StoreMetadata, digest

BOOKKEEPING = ("sample_id", "status", "failure_reason")

# Arrays whose file must exist for every shard holding a done sample. failure_reason is
# left out: a shard without failures holds only its fill value "", which zarr does not
# write. status is left out: its own chunk is what says a sample is done.
UNFILLED = ("status", "failure_reason")

# What zarr and numcodecs raise when a chunk does not decode (CRC32C mismatch, a
# truncated or garbled zstd frame or shard index) or its file cannot be read.
DECODE_ERRORS = (ValueError, RuntimeError, OSError)


def _has_bytes(path: Path) -> bool:
    """Whether `path` is a regular file holding at least one byte (one stat call)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size > 0


def inputs_digest(sample_ids: Sequence[str]) -> str:
    return digest(list(sample_ids))


class CacheStore:
    """A KeyDiff3D store on the local file system (or any zarr store path)."""

    def __init__(self, path: Path, group: zarr.Group, metadata: StoreMetadata, writable: bool):
        self.path = path
        self.group = group
        self.metadata = metadata
        self.writable = writable
        self._arrays: dict[str, zarr.Array] = {}
        """Opened arrays by name: opening reads its zarr.json, about 1 ms a time."""
        self._present: set[tuple[str, int]] = set()
        """(array, shard) pairs whose files were seen on disk, so each is checked once."""

    # -- opening -----------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        metadata: StoreMetadata,
        sample_ids: Sequence[str],
        overwrite: bool = False,
    ) -> CacheStore:
        """A new store with every array allocated and every sample pending."""
        path = Path(path)
        layout = metadata.layout
        if len(sample_ids) != layout.num_samples:
            raise CacheError(f"{len(sample_ids)} sample ids for a layout of {layout.num_samples} samples")
        if len(set(sample_ids)) != len(sample_ids):
            raise CacheError("sample ids must be unique")
        if path.exists():
            if not overwrite:
                raise CacheError(f"{path} exists; pass overwrite=True to replace it")
            check_removable_store(path)
            shutil.rmtree(path)
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        for spec in layout.arrays().values():
            _create_array(group, spec)
        store = cls(path, group, metadata, writable=True)
        store.array("sample_id")[:] = np.asarray(sample_ids, dtype=str)
        # Metadata goes last: a store without it is never mistaken for a usable one.
        group.attrs[ATTRS_KEY] = metadata.to_dict()
        return store

    @classmethod
    def open(cls, path: str | Path, writable: bool = False) -> CacheStore:
        """Open a finished store, after checking that every node's zarr.json parses."""
        path = Path(path)
        if not (path / "zarr.json").exists() and not (path.is_dir() and any(path.iterdir())):
            raise StoreNotFoundError(f"{path}: no zarr v3 group here (zarr.json missing)")
        attrs = read_node_json(path, "group").get("attributes") or {}
        if ATTRS_KEY not in attrs:
            raise StoreNotFoundError(
                f"{path}: a zarr group but not a finished KeyDiff3D store (no '{ATTRS_KEY}' "
                "attributes); it was interrupted while being created, use --overwrite"
            )
        raw = attrs[ATTRS_KEY]
        if not isinstance(raw, dict):
            raise StoreNotFoundError(f"{path}: '{ATTRS_KEY}' attributes are not a mapping")
        metadata = StoreMetadata.from_dict(raw, where=str(path))
        # zarr reads an array's zarr.json only when the array is first used: check them all
        # now, so that a damaged one is named here instead of failing (or, for a deleted
        # one, reading as absent) in the middle of a run.
        names = list(metadata.layout.arrays())
        check_array_nodes(path, names)
        group = zarr.open_group(str(path), mode="r+" if writable else "r", zarr_format=3)
        store = cls(path, group, metadata, writable)
        for name in names:
            try:
                store.array(name)
            except (ValueError, TypeError, KeyError) as exc:
                raise StoreDamagedError(
                    f"{path / name}: damaged or missing zarr.json (zarr cannot read it: {exc})"
                ) from None
        return store

    def check_compatible(self, expected: StoreMetadata, sample_ids: Sequence[str]) -> None:
        """Refuse to resume onto a store made with another config, model or input list."""
        if expected.fingerprint != self.metadata.fingerprint:
            diff = _diff_keys(expected.to_dict(), self.metadata.to_dict())
            raise SchemaMismatchError(
                f"{self.path} was made with a different model or config (fingerprint "
                f"{self.metadata.fingerprint[:12]} vs {expected.fingerprint[:12]}; differs in: "
                f"{', '.join(diff) or 'unknown'}); pass --overwrite to start afresh"
            )
        if inputs_digest(sample_ids) != self.metadata.inputs_digest:
            raise SchemaMismatchError(
                f"{self.path} holds a different list of input images "
                f"({self.layout.num_samples} stored vs {len(sample_ids)} given); pass "
                "--overwrite to start afresh or --out another store"
            )

    # -- reading -----------------------------------------------------------------
    @property
    def layout(self) -> CacheLayout:
        return self.metadata.layout

    def array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            node = self.group[name]
            if not isinstance(node, zarr.Array):
                raise CacheError(f"{self.path}: {name} is a group, not an array")
            self._arrays[name] = node
        return self._arrays[name]

    def sample_ids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return _strings(self.read("sample_id", slice(start, stop)))

    def statuses(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Status codes of samples [start, stop) (all by default). Shape (n,)."""
        return np.asarray(self.read("status", slice(start, stop)), dtype=np.uint8)

    def failure_reasons(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return _strings(self.read("failure_reason", slice(start, stop)))

    def shards_to_do(self, retry_failed: bool = False) -> list[int]:
        """Shards holding a sample that still has to be generated."""
        status = self.statuses()
        todo = []
        for shard in range(self.layout.num_shards):
            start, stop = self.layout.shard_range(shard)
            part = status[start:stop]
            if np.any(part == STATUS_PENDING) or (retry_failed and np.any(part == STATUS_FAILED)):
                todo.append(shard)
        return todo

    def read_rows(self, start: int, stop: int, names: Sequence[str]) -> dict[str, np.ndarray]:
        return {name: self.read(name, slice(start, stop)) for name in names}

    def read(self, name: str, rows: slice | np.ndarray) -> np.ndarray:
        """Samples `rows` (a slice or an index array) of one array; a chunk that does not
        decode raises StoreDamagedError naming the store, the array and the shard."""
        array = self.array(name)
        try:
            return np.asarray(array[rows] if isinstance(rows, slice) else array.oindex[rows])
        except DECODE_ERRORS as exc:
            raise self._decode_error(name, rows, exc) from None

    def _decode_error(self, name: str, rows: slice | np.ndarray, exc: Exception) -> StoreDamagedError:
        """Find the shard that fails to decode (on the error path only: one read per shard)."""
        picked = np.arange(self.layout.num_samples)[rows]
        shards = np.unique(picked // self.layout.samples_per_shard).tolist()
        for shard in shards:
            start, stop = self.layout.shard_range(shard)
            try:
                np.asarray(self.array(name)[start:stop])
            except DECODE_ERRORS as found:
                keys = ", ".join(f"{name}/{key}" for key in shard_keys(self.array(name), start, stop))
                why = " ".join(str(found).split())
                return StoreDamagedError(
                    f"{self.path}: array {name} shard {shard} (samples {start}..{stop - 1}, file {keys}) "
                    f"does not decode: {why}"
                )
        why = " ".join(str(exc).split())
        return StoreDamagedError(f"{self.path}: array {name} shards {shards} do not decode: {why}")

    def missing_shard_files(self, name: str, shard: int) -> list[str]:
        """Store keys ('views/c/1/0/0/0/0') of the files of one shard of one array that are
        not on disk or empty; zarr reads their samples as the fill value (zeros) without an
        error. A file zarr wrote is never empty (a chunk carries its checksum, a shard its
        index), so an empty one is a write that never happened (a crash, a full disk)."""
        start, stop = self.layout.shard_range(shard)
        keys = shard_keys(self.array(name), start, stop)
        return [f"{name}/{key}" for key in keys if not _has_bytes(self.path / name / key)]

    def require_shard_files(self, names: Sequence[str], shards: Sequence[int]) -> None:
        """Raise StoreDamagedError unless every file of these shards exists (call it only
        for shards holding a done sample). Each (array, shard) is looked up once."""
        for name in names:
            for shard in shards:
                if (name, shard) in self._present:
                    continue
                missing = self.missing_shard_files(name, shard)
                if missing:
                    start, stop = self.layout.shard_range(shard)
                    raise StoreDamagedError(
                        f"{self.path}: array {name} shard {shard} (samples {start}..{stop - 1}) has "
                        f"done samples but its file {missing[0]} is missing or empty; they would read "
                        "as zeros"
                    )
                self._present.add((name, shard))

    def per_sample_array_names(self) -> list[str]:
        """Arrays whose shard files must exist wherever a sample is done (see UNFILLED)."""
        return [name for name in self.layout.arrays() if name not in UNFILLED]

    def data_array_names(self) -> list[str]:
        return [name for name in self.layout.arrays() if name not in BOOKKEEPING]

    # -- writing -----------------------------------------------------------------
    def write_shard(
        self,
        shard: int,
        rows: Mapping[str, np.ndarray],
        status: np.ndarray,
        reasons: Sequence[str],
        sample_ids: Sequence[str] | None = None,
    ) -> None:
        """Write every data array of one shard, then its reasons, then its status.

        rows: array name -> (S_shard, ...) for every data array of the layout; rows of
        failed samples are written as given (zeros by convention). sample_ids, when
        given, rewrites the shard's ids too: `verify --repair` removes an id chunk that
        does not decode, and the ids come back only from the writer that knows them.
        """
        if not self.writable:
            raise CacheError(f"{self.path} was opened read-only")
        start, stop = self.layout.shard_range(shard)
        count = stop - start
        specs = self.layout.arrays()
        missing = set(self.data_array_names()) - set(rows)
        if missing:
            raise CacheError(f"write_shard({shard}) misses arrays: {sorted(missing)}")
        status = np.asarray(status, dtype=np.uint8)
        if sample_ids is not None and len(sample_ids) != count:
            raise CacheError(f"write_shard({shard}): {len(sample_ids)} sample ids for {count} samples")
        if status.shape != (count,) or len(reasons) != count:
            raise CacheError(
                f"write_shard({shard}): status {status.shape} / reasons {len(reasons)} for {count} samples"
            )
        for name, value in rows.items():
            spec = specs.get(name)
            if spec is None:
                raise CacheError(f"write_shard({shard}): unknown array {name!r}")
            expected = (count, *spec.shape[1:])
            if tuple(value.shape) != expected:
                raise CacheError(
                    f"write_shard({shard}): {name} has shape {tuple(value.shape)}, expected {expected}"
                )
        # zarr encodes a shard's inner chunks one batch at a time, one chunk per batch by
        # default; one batch per shard halves the time of writing small per-sample chunks
        # (benchmarks/bench_render.py) and writes the same bytes.
        with zarr.config.set({"codec_pipeline.batch_size": max(count, 1)}):
            for name, value in rows.items():
                self.array(name)[start:stop] = np.asarray(value, dtype=specs[name].dtype)
            if sample_ids is not None:
                self.array("sample_id")[start:stop] = np.asarray(list(sample_ids), dtype=str)
            self.array("failure_reason")[start:stop] = np.asarray(list(reasons), dtype=str)
            self.array("status")[start:stop] = status

    def remove_partial_files(self) -> list[Path]:
        """Delete the temporary files a killed writer left behind; returns them."""
        found = sorted(self.path.rglob("*.partial"))
        for item in found:
            item.unlink(missing_ok=True)
        return found

    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


def _strings(values: object) -> np.ndarray:
    """Fixed-width str array from zarr's variable-length strings (StringDType)."""
    # numpy cannot cast StringDType to an unsized str dtype directly.
    return np.asarray(np.asarray(values, dtype=object).tolist(), dtype=str)


def check_removable_store(path: Path) -> None:
    """Raise CacheError unless `path` is a KeyDiff3D store, finished or half-created.

    --overwrite deletes the folder it names: only a folder that is recognisably ours may go.
    A finished store has a group zarr.json with our attributes; a half-created one (killed
    before its metadata was written) has a group zarr.json without attributes and nothing
    but zarr nodes beside it.
    """
    refuse = f"--out {path}: refusing to delete it for --overwrite, since it is not a KeyDiff3D store"
    if not path.is_dir():
        raise CacheError(f"{refuse} (it is a file); remove it yourself or choose another --out")
    meta = path / "zarr.json"
    try:
        node = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise CacheError(
            f"{refuse} (no readable zarr.json); remove it yourself or choose another --out"
        ) from None
    if not isinstance(node, dict) or node.get("node_type") != "group":
        raise CacheError(f"{refuse} ({meta} is not a zarr group); remove it yourself or choose another --out")
    if ATTRS_KEY in (node.get("attributes") or {}):
        return
    strangers = sorted(
        entry.name
        for entry in path.iterdir()
        if entry.name != "zarr.json" and not (entry.is_dir() and (entry / "zarr.json").is_file())
    )
    if node.get("attributes") or strangers:
        raise CacheError(
            f"{refuse} (a zarr group without KeyDiff3D metadata, holding "
            f"{strangers[:3] or 'other attributes'}); remove it yourself or choose another --out"
        )


def _create_array(group: zarr.Group, spec: ArraySpec) -> zarr.Array:
    dtype: Any = str if spec.dtype == "str" else spec.dtype
    return group.create_array(
        spec.name,
        shape=spec.shape,
        dtype=dtype,
        chunks=spec.chunks,
        shards=spec.shards,
        compressors=compressors_for(spec.kind),
        dimension_names=spec.dims,
        fill_value="" if spec.dtype == "str" else 0,
    )


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted paths where two nested dicts differ (fingerprint and digests excluded)."""
    out = []
    for key in sorted(set(a) | set(b)):
        if key in ("fingerprint", "inputs_digest"):
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff_keys(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(prefix + key)
    return out


__all__ = ["CacheStore", "inputs_digest", "STATUS_DONE"]
