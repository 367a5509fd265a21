"""Training batches with their ground truth, for the code that may read it (the bound, mirrors).

The self-supervised trainer reads `CacheTrainingSet`, which never touches the ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from stages.keypoints.data import CacheTrainingSet


class GroundTruthTrainingSet(CacheTrainingSet):
    """CacheTrainingSet batches plus 'joints_3d' (B, J, 3) from the ground truth."""

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = super().__getitems__(indices)
        picked = self.items[np.asarray(indices, dtype=np.int64)]
        readers = self._open()
        joints = np.zeros((len(picked), *readers[0].layout.arrays()["ground_truth/joints_3d"].shape[1:]))
        # One ground-truth read per cache in the batch, not one per sample.
        for cache in np.unique(picked[:, 0]):
            rows = np.flatnonzero(picked[:, 0] == cache)
            joints[rows] = readers[int(cache)].read_ground_truth(picked[rows, 1].tolist())["joints_3d"]
        batch["joints_3d"] = torch.from_numpy(joints).float()
        return batch
