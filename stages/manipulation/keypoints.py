"""Keypoints of one cache sample from a trained stage-two run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stages.keypoints.checkpoint import TrainedRun
from stages.keypoints.data import CacheTrainingSet
from stages.keypoints.losses import model_inputs
from stages.manipulation.errors import SampleNotReadyError


def predict_sample_keypoints(run: TrainedRun, cache: str | Path, index: int) -> np.ndarray:
    """Keypoints (N, 3) of done sample `index` of `cache`, in the cache's world frame, computed
    on the device the run was loaded on."""
    model = run.model
    device = next(model.parameters()).device
    with_features = model.config.feature_source == "diffusion"
    dataset = CacheTrainingSet(
        [Path(cache)], run.num_views, model.config.render_size, with_features, model.config.pixel_input_size
    )
    rows = np.flatnonzero(dataset.items[:, 1] == index)
    if not len(rows):
        raise SampleNotReadyError(f"{cache}: sample {index} is not done; it has no views to predict from")
    batch = {k: v.to(device) for k, v in dataset.__getitems__([int(rows[0])]).items()}
    with torch.no_grad():
        keypoints, _ = model.predict_keypoints(
            model_inputs(model, batch), batch["intrinsics"], batch["world_to_camera"]
        )
    return keypoints[0].double().cpu().numpy()


def learned_adjacency(run: TrainedRun) -> np.ndarray:
    """The run's learned edge weights (N, N)."""
    with torch.no_grad():
        return run.model.edge_weights().double().cpu().numpy()
