"""Read-only access to a finished cache, for stage two and for tools.

Ground-truth arrays are kept apart: `read_sample` and `read_batch` refuse them, and
only `read_ground_truth` returns them (evaluation code calls it; training must not).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cache_schema.errors import CacheError, SampleNotDoneError, SchemaMismatchError
from cache_schema.layout import GROUND_TRUTH_PREFIX, STATUS_DONE, CacheLayout
from cache_schema.store import BOOKKEEPING, CacheStore

DEFAULT_ARRAYS = ("input_image", "views", "view_masks", "intrinsics", "world_to_camera")


class CacheReader:
    """Open a store read-only and validate what the caller expects of it."""

    def __init__(
        self,
        path: str | Path,
        expected_fingerprint: str | None = None,
        expected_feature_layers: Sequence[str] | None = None,
    ):
        self.store = CacheStore.open(path, writable=False)
        meta = self.store.metadata
        if expected_fingerprint is not None and expected_fingerprint != meta.fingerprint:
            raise SchemaMismatchError(
                f"{path}: fingerprint {meta.fingerprint[:12]} differs from the expected "
                f"{expected_fingerprint[:12]}"
            )
        if expected_feature_layers is not None:
            have = [layer.name for layer in meta.layout.feature_layers]
            if list(expected_feature_layers) != have:
                raise SchemaMismatchError(
                    f"{path}: feature layers {have} differ from the expected {list(expected_feature_layers)}"
                )
        self._status = self.store.statuses()

    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def layout(self) -> CacheLayout:
        return self.store.layout

    @property
    def fingerprint(self) -> str:
        return self.store.metadata.fingerprint

    def feature_array_names(self) -> list[str]:
        return [layer.array_name for layer in self.layout.feature_layers]

    def done_indices(self) -> np.ndarray:
        """Indices of samples whose status is done. Shape (n_done,)."""
        return np.flatnonzero(self._status == STATUS_DONE)

    def sample_ids(self) -> np.ndarray:
        return self.store.sample_ids()

    def read_batch(
        self, indices: Sequence[int], arrays: Sequence[str] = DEFAULT_ARRAYS
    ) -> dict[str, np.ndarray]:
        """Arrays of several done samples, stacked on a new leading axis (B, ...)."""
        idx = np.asarray(indices, dtype=np.int64)
        self._check_request(idx, arrays)
        self.store.require_shard_files(list(arrays), self._shards_of(idx))
        out: dict[str, np.ndarray] = {}
        for name in arrays:
            if idx.size and np.all(np.diff(idx) == 1):
                out[name] = self.store.read(name, slice(int(idx[0]), int(idx[-1]) + 1))
            else:
                out[name] = self.store.read(name, idx) if idx.size else np.empty((0,))
        return out

    def read_sample(self, index: int, arrays: Sequence[str] = DEFAULT_ARRAYS) -> dict[str, np.ndarray]:
        """Arrays of one done sample, without the sample axis."""
        return {k: v[0] for k, v in self.read_batch([index], arrays).items()}

    def read_ground_truth(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Ground-truth arrays (for evaluation only). Keys without the prefix."""
        names = [n for n in self.layout.arrays() if n.startswith(GROUND_TRUTH_PREFIX)]
        if not names:
            raise CacheError(f"{self.path} has no ground truth")
        idx = np.asarray(indices, dtype=np.int64)
        self._check_done(idx)
        self.store.require_shard_files(names, self._shards_of(idx))
        return {n[len(GROUND_TRUTH_PREFIX) :]: self.store.read(n, idx) for n in names}

    def _shards_of(self, idx: np.ndarray) -> list[int]:
        # A missing shard file reads as zeros: every shard a read touches is checked
        # once per reader (the store remembers which it has seen).
        return np.unique(idx // self.layout.samples_per_shard).tolist()

    def _check_request(self, idx: np.ndarray, arrays: Sequence[str]) -> None:
        known = self.layout.arrays()
        for name in arrays:
            if name.startswith(GROUND_TRUTH_PREFIX):
                raise CacheError(f"{name} is ground truth; use read_ground_truth (evaluation only)")
            if name not in known or name in BOOKKEEPING:
                raise CacheError(f"{self.path}: no data array {name!r}; have {sorted(known)}")
        self._check_done(idx)

    def _check_done(self, idx: np.ndarray) -> None:
        if idx.size and (idx.min() < 0 or idx.max() >= self.layout.num_samples):
            raise CacheError(f"sample index out of range [0, {self.layout.num_samples})")
        bad = idx[self._status[idx] != STATUS_DONE] if idx.size else idx
        if bad.size:
            raise SampleNotDoneError(
                f"{self.path}: samples {bad[:5].tolist()} are not done (status "
                f"{self._status[bad[:5]].tolist()})"
            )
