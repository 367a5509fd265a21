"""Keypoints of one cache sample from a trained stage-two run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stages.keypoints.checkpoint import latest_checkpoint, load_model
from stages.keypoints.data import CacheTrainingSet
from stages.keypoints.losses import model_inputs
from stages.keypoints.model import KeyDiff3DModel
from stages.manipulation.errors import ManipulationError, SampleNotReadyError


@dataclass(frozen=True, eq=False)
class KeypointRun:
    """A trained model and what predicting with it needs."""

    model: KeyDiff3DModel
    num_views: int
    """K, the cached views the model reads."""
    checkpoint: Path


def load_keypoint_run(run_dir: str | Path, device: torch.device | str = "cpu") -> KeypointRun:
    """The last checkpoint of a `keydiff3d-train fit` run directory."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ManipulationError(f"{run_dir}: not a training run directory (no config.json)")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise ManipulationError(f"{run_dir}: the run has no checkpoint yet")
    num_views = int(json.loads(config_path.read_text())["stage_two"]["num_views"])
    model = load_model(checkpoint, device)
    model.eval()
    return KeypointRun(model, num_views, checkpoint)


def predict_sample_keypoints(run: KeypointRun, cache: str | Path, index: int) -> np.ndarray:
    """Keypoints (N, 3) of done sample `index` of `cache`, in the cache's world frame, computed
    on the device the run was loaded on."""
    model = run.model
    device = next(model.parameters()).device
    with_features = model.config.feature_source == "diffusion"
    dataset = CacheTrainingSet([Path(cache)], run.num_views, model.config.render_size, with_features)
    rows = np.flatnonzero(dataset.items[:, 1] == index)
    if not len(rows):
        raise SampleNotReadyError(f"{cache}: sample {index} is not done; it has no views to predict from")
    batch = {k: v.to(device) for k, v in dataset.__getitems__([int(rows[0])]).items()}
    with torch.no_grad():
        keypoints, _ = model.predict_keypoints(
            model_inputs(model, batch), batch["intrinsics"], batch["world_to_camera"]
        )
    return keypoints[0].double().cpu().numpy()


def learned_adjacency(run: KeypointRun) -> np.ndarray:
    """The run's learned edge weights (N, N)."""
    with torch.no_grad():
        return run.model.edge_weights().double().cpu().numpy()
