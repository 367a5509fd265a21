"""Mirror images of cached samples: the world reflected in the vertical plane x = 0.

A mirrored figure is one the synthetic world (or a camera) could have shown: the same
motion done with its other side. Its views are the cached views flipped left to right,
its cameras `geometry.mirror_cameras`, and its joints the reflected joints with every
left/right label swapped, so that a left joint stays labelled left. Used to

- augment the supervised bound's batches (`SupervisedLosses.mirror`), and
- give the keypoint-to-joint regressor the mirror image of each training pair
  (`predict_mirrored`): the keypoints the network finds in the mirrored sample, and the
  mirrored joints; `fit_with_mirror_images` fits the paper's MLP on both (the mean of
  `EvalConfig.mirror_mlp_seeds` of them) and scores it: the 'mlp+mirror x5' row of
  `keydiff3d-train eval --mirror-fit`, the demo and the quality benchmark, the project's
  regression protocol, reported beside the paper's MLP.

Only pixel features can be mirrored this way: a UNet's features of a flipped image are
not its flipped features, so caches read through their diffusion features are refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from cache_schema import CacheReader
from stages.evaluation.evaluate import EvalConfig, RegressionResult, mlp_label, regress_and_score
from stages.evaluation.ground_truth_set import GroundTruthTrainingSet
from stages.evaluation.joint_sides import label_swap_permutation, left_right_pairs
from stages.keypoints import geometry
from stages.keypoints.errors import TrainingError
from stages.keypoints.losses import model_inputs
from stages.keypoints.model import KeyDiff3DModel
from stages.keypoints.predict import cache_fits_model

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

MIRROR_FIT = "mlp+mirror"
"""The regression label of an MLP fitted on the training pairs and their mirror images
(`mirror_fit_label` adds the count of MLPs averaged)."""


def mirror_samples(
    batch: dict[str, torch.Tensor],
    joints: torch.Tensor,
    chosen: torch.Tensor,
    swap: torch.Tensor,
    image_size: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The batch and joints (B, J, 3) with the chosen samples (B,) bool reflected in x = 0.

    Images ('views', 'view_masks', 'feature_views': (B, V, ..., H, W)) flip left to right,
    the cameras follow (`geometry.mirror_cameras`, intrinsics at image_size), and the
    joints reflect with their labels permuted by swap (J,), so that a left joint stays
    labelled left in the mirrored figure."""
    mirrored = dict(batch)
    for name in ("views", "view_masks", "feature_views"):
        if name in batch:
            pick = chosen.view(-1, *([1] * (batch[name].ndim - 1)))
            mirrored[name] = torch.where(pick, batch[name].flip(-1), batch[name])
    intrinsics, world_to_camera = geometry.mirror_cameras(
        batch["intrinsics"], batch["world_to_camera"], image_size
    )
    pick = chosen.view(-1, 1, 1, 1)
    mirrored["intrinsics"] = torch.where(pick, intrinsics, batch["intrinsics"])
    mirrored["world_to_camera"] = torch.where(pick, world_to_camera, batch["world_to_camera"])
    return mirrored, torch.where(chosen.view(-1, 1, 1), reflect_joints(joints, swap), joints)


def reflect_joints(joints: ArrayT, swap: ArrayT) -> ArrayT:
    """Joints (S, J, 3), numpy or torch, reflected in the plane x = 0 with their labels
    permuted by swap (J,) (`label_swap`), so that a left joint stays labelled left."""
    reflected = joints[:, swap]  # advanced indexing: a copy
    reflected[..., 0] = -reflected[..., 0]
    return reflected


def label_swap(cache: Path) -> torch.Tensor:
    """(J,) joint order that swaps every left/right pair of the cache's ground truth."""
    names = CacheReader(cache).layout.ground_truth.joint_names
    return torch.from_numpy(label_swap_permutation(left_right_pairs(names), len(names)))


def predict_mirrored(
    model: KeyDiff3DModel,
    cache: Path,
    num_views: int,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    """The keypoints of every done sample's mirror image, and its mirrored joints.

    Returns index (n,) (the samples' rows, in `predict_cache`'s order), keypoints_3d
    (n, N, 3) that the model finds in the mirrored views and cameras, and joints_3d
    (n, J, 3): the sample's joints reflected and label-swapped."""
    if model.config.feature_source == "diffusion":
        raise TrainingError(
            f"{cache}: mirrored predictions need a pixel-feature model, not diffusion features"
        )
    cache_fits_model(model, CacheReader(cache))
    swap = label_swap(cache)
    dataset = GroundTruthTrainingSet(
        [cache], num_views, model.config.render_size, False, model.config.pixel_input_size
    )
    model = model.to(device).eval()
    points, joints = [], []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            rows = list(range(start, min(start + batch_size, len(dataset))))
            batch = dataset.__getitems__(rows)
            every = torch.ones(len(rows), dtype=torch.bool)
            batch, mirrored = mirror_samples(batch, batch["joints_3d"], every, swap, model.config.image_size)
            batch = {name: value.to(device) for name, value in batch.items()}
            keypoints, _ = model.predict_keypoints(
                model_inputs(model, batch), batch["intrinsics"], batch["world_to_camera"]
            )
            points.append(keypoints.cpu().numpy())
            joints.append(mirrored.numpy())
    return {
        "index": dataset.items[:, 1],
        "keypoints_3d": np.concatenate(points).astype(np.float32),
        "joints_3d": np.concatenate(joints),
    }


def mirror_fit_label(config: EvalConfig) -> str:
    """The label of `fit_with_mirror_images`' row under config: 'mlp+mirror x5' by default."""
    return mlp_label(config.mirror_mlp_seeds, MIRROR_FIT)


def fit_with_mirror_images(
    train_keypoints: np.ndarray,
    train_joints: np.ndarray,
    mirrored: dict[str, np.ndarray],
    test_keypoints: np.ndarray,
    test_joints: np.ndarray,
    config: EvalConfig,
    joint_names: Sequence[str] | None = None,
) -> RegressionResult:
    """The paper's MLP fitted on the training pairs plus their mirror images, scored on the test set.

    The row predicts the mean of config.mirror_mlp_seeds such MLPs (seeds config.seed, ...)
    and is labelled `mirror_fit_label(config)`.

    train_keypoints (S, N, 3) and train_joints (S, J, 3) are the training pairs, mirrored is
    `predict_mirrored`'s output for the same samples, test_keypoints (T, N, 3) and
    test_joints (T, J, 3) the test set. The regressor reads no label the paper's MLP does
    not: the mirror images are the training samples seen with their sides exchanged."""
    keypoints = np.concatenate([train_keypoints, mirrored["keypoints_3d"]])
    joints = np.concatenate([train_joints, mirrored["joints_3d"]])
    (fitted,) = regress_and_score(
        keypoints, joints, test_keypoints, test_joints,
        dataclasses.replace(config, regressors=("mlp",), mlp_seeds=config.mirror_mlp_seeds),
        joint_names=joint_names,
    )  # fmt: skip
    return dataclasses.replace(fitted, regression=mirror_fit_label(config))
