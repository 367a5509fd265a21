"""Training batches with their ground truth, for the code that may read it (the bound, mirrors).

The self-supervised trainer reads `CacheTrainingSet`, which never touches the ground truth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from cache_schema import CacheReader
from stages.keypoints.data import CacheTrainingSet


class GroundTruthTrainingSet(CacheTrainingSet):
    """CacheTrainingSet batches plus 'joints_3d' (B, J, 3) from the ground truth."""

    def _read_truth(self, cache: int, samples: np.ndarray) -> np.ndarray:
        """joints_3d (B, J, 3) of the done samples `samples` of cache `cache`."""
        reader = self._open()[cache]
        if not self.in_memory:
            return reader.read_ground_truth(samples.tolist())["joints_3d"]
        # The held copy finds each sample's row by search, in the order asked.
        return self._from_memory(cache, samples, (TRUTH,), _truth_reader(reader))[TRUTH]

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = super().__getitems__(indices)
        picked = self.items[np.asarray(indices, dtype=np.int64)]
        readers = self._open()
        joints = np.zeros((len(picked), *readers[0].layout.arrays()["ground_truth/joints_3d"].shape[1:]))
        # One ground-truth read per cache in the batch, not one per sample.
        for cache in np.unique(picked[:, 0]):
            rows = np.flatnonzero(picked[:, 0] == cache)
            joints[rows] = self._read_truth(int(cache), picked[rows, 1])
        batch["joints_3d"] = torch.from_numpy(joints).float()
        return batch


TRUTH = "ground_truth/joints_3d"
"""The held copy's name for the joints (the data arrays never use this prefix)."""


def _truth_reader(reader: CacheReader) -> Callable[..., dict[str, np.ndarray]]:
    """read(indices, names) over the ground truth, for the held copy of `_from_memory`."""
    return lambda indices, names: {TRUTH: reader.read_ground_truth(indices)["joints_3d"]}
