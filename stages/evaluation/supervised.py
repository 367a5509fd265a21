"""The 'supervised' upper bound: the same keypoint network trained directly on 3D ground truth.

It reads ground truth on purpose, so it lives here, apart from the self-supervised
trainer (stages/keypoints/training.py), which must never read it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from stages.keypoints.config import StageTwoConfig
from stages.keypoints.data import CacheTrainingSet, batch_indices
from stages.keypoints.losses import model_inputs
from stages.keypoints.model import KeyDiff3DModel
from stages.keypoints.training import build_model


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


def train_supervised(
    config: StageTwoConfig,
    caches: Sequence[Path],
    progress: Callable[[int, float], None] | None = None,
) -> KeyDiff3DModel:
    """Train features, head, lifting and V2V to put keypoint j on ground-truth joint j.

    config.num_keypoints must equal the number of ground-truth joints. The loss is the
    mean squared distance in units of the volume's half extent. progress(step, loss).
    """
    model, _ = build_model(config, tuple(caches))
    dataset = GroundTruthTrainingSet(
        caches, config.num_views, config.render_size, config.feature_source == "diffusion"
    )
    optimizer = torch.optim.AdamW(model.keypoint_parameters(), lr=config.lr, weight_decay=config.weight_decay)
    extent = model.config.volume_half_extent
    model.train()
    for step in range(config.steps):
        rows = batch_indices(len(dataset), config.batch_size, config.seed, step).tolist()
        batch = dataset.__getitems__(rows)
        keypoints, _ = model.predict_keypoints(
            model_inputs(model, batch), batch["intrinsics"], batch["world_to_camera"]
        )
        loss = (((keypoints - batch["joints_3d"]) / extent) ** 2).sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step + 1, float(loss.detach()))
    return model.eval()
