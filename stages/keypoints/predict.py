"""Keypoints for every done sample of a cache, with a trained model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cache_schema import CacheReader
from stages.errors import ConfigError
from stages.keypoints import geometry
from stages.keypoints.data import CacheTrainingSet
from stages.keypoints.errors import TrainingError
from stages.keypoints.losses import model_inputs
from stages.keypoints.model import KeyDiff3DModel


def cache_fits_model(model: KeyDiff3DModel, reader: CacheReader) -> list[str]:
    """The cache's feature arrays the model reads (none for pixel features); raises
    TrainingError, naming the cache, where its image size or feature layers differ from the model's."""
    if reader.layout.image_size != model.config.image_size:
        raise TrainingError(
            f"{reader.path}: image size {reader.layout.image_size} differs from "
            f"the model's {model.config.image_size}"
        )
    if model.config.feature_source != "diffusion":
        return []
    wanted = list(reader.feature_array_names())
    if len(wanted) != len(model.config.feature_layer_channels):
        raise TrainingError(f"{reader.path}: feature layers {wanted} do not match the model's")
    return wanted


def predict_cache(
    model: KeyDiff3DModel,
    cache: Path,
    num_views: int,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
    limit: int | None = None,
) -> dict[str, np.ndarray]:
    """Predict every done sample of `cache` (or the first `limit` of them).

    Returns sample_id (n,), index (n,), keypoints_3d (n, N, 3) in the cache's world frame,
    keypoints_2d (n, V, N, 2) in the cache's view pixels (all kept views, not only the
    `num_views` the model reads) and depth (n, V, N). progress(samples_done) per batch.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    reader = CacheReader(cache)
    wanted = cache_fits_model(model, reader)
    dataset = CacheTrainingSet(
        [cache], num_views, model.config.render_size, bool(wanted), model.config.pixel_input_size
    )
    count = len(dataset) if limit is None else min(limit, len(dataset))
    model = model.to(device).eval()
    points, pixels, depths = [], [], []
    with torch.no_grad():
        for start in range(0, count, batch_size):
            rows = list(range(start, min(start + batch_size, count)))
            batch = {k: v.to(device) for k, v in dataset.__getitems__(rows).items()}
            keypoints, _ = model.predict_keypoints(
                model_inputs(model, batch), batch["intrinsics"], batch["world_to_camera"]
            )
            # Every kept view's camera, not only the num_views the model read.
            cameras = reader.read_batch(dataset.items[rows, 1].tolist(), ("intrinsics", "world_to_camera"))
            uv, depth = geometry.project_to_views(
                keypoints,
                torch.from_numpy(cameras["intrinsics"]).float().to(device),
                torch.from_numpy(cameras["world_to_camera"]).float().to(device),
            )
            points.append(keypoints.cpu().numpy())
            pixels.append(uv.cpu().numpy())
            depths.append(depth.cpu().numpy())
            if progress is not None:
                progress(len(rows))
    indices = dataset.items[:count, 1]
    return {
        "sample_id": reader.sample_ids()[indices],
        "index": indices,
        "keypoints_3d": np.concatenate(points).astype(np.float32),
        "keypoints_2d": np.concatenate(pixels).astype(np.float32),
        "depth": np.concatenate(depths).astype(np.float32),
    }
