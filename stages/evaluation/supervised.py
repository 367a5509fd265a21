"""The 'supervised' upper bound: the same keypoint network trained directly on 3D ground truth.

It reads ground truth on purpose, so it lives here, apart from the self-supervised
trainer (stages/keypoints/training.py), which must never read it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cache_schema import CacheError, CacheReader
from stages.evaluation.ground_truth_set import GroundTruthTrainingSet
from stages.evaluation.mirror import label_swap as joint_label_swap
from stages.evaluation.mirror import mirror_samples
from stages.keypoints import geometry
from stages.keypoints.config import StageTwoConfig
from stages.keypoints.data import (
    ErrorsAsValues,
    StepBatchSampler,
    keep_batch,
    summarise_caches,
)
from stages.keypoints.losses import model_inputs
from stages.keypoints.model import KeyDiff3DModel
from stages.keypoints.training import apply_learning_rate, build_model, frustum_half_extent


@dataclass(frozen=True)
class SupervisedLosses:
    """How the bound is trained: the weights of its terms (dense terms give every voxel and
    pixel a target), their widths, the flip invariance, the extent of its grid and the
    average of its weights.

    The squared distance of the soft-argmax alone only says where the mean of each
    keypoint's distribution should move; a network that cannot yet tell the left wrist
    from the right hedges at their midpoint, where the squared error is lowest. Cross-
    entropy against a peak at the joint rewards committing to one of them.
    """

    distance: float = 1.0
    """Mean squared 3D distance of keypoint j to joint j, in units of the volume half extent."""
    voxel_ce: float = 1.0
    """Cross-entropy of each keypoint's voxel distribution against a Gaussian at its joint."""
    heatmap_ce: float = 1.0
    """Cross-entropy of per-view 2D joint heatmaps (an auxiliary head on the view features)
    against a Gaussian at the joint's projection: supervises the features view by view."""
    joint_extent_margin: float = 0.0
    """0: the voxel cube is ours, the view frustum at the orbit centre. m > 0: the cube
    shrinks to m times the largest |coordinate| of the training joints, when that is
    smaller, so the same voxels are finer where the joints can be. The bound may read
    the training joints; ours may not, so it keeps the frustum."""
    voxel_sigma: float = 1.0
    """Width of the voxel target, in voxels."""
    heatmap_sigma: float = 1.0
    """Width of the 2D target, in feature pixels."""
    weight_average: float = 0.0
    """0: the bound is the last step's weights. d in (0, 1): an exponential moving average
    of the weights with decay d (about the last 1 / (1 - d) steps), which smooths out the
    last steps' noise at a constant learning rate without slowing the learning."""
    mirror: bool = False
    """Reflect a random half of each batch's samples in the vertical plane x = 0: views
    flipped left to right, cameras mirrored to match (`geometry.mirror_cameras`), joints
    reflected and their left/right labels swapped. A mirrored figure is a figure the world
    could have drawn, doing each training motion with its other side, so the bound sees
    twice the poses. Exact for pixel features; cached diffusion features are refused,
    since a UNet's features of a flipped image are not its flipped features."""
    flip_invariant: bool = False
    """Score each sample against the better of its two labellings (as given, and with every
    left/right pair swapped), as the flip-aware P-MPJPE does. The bound then learns where
    the limbs are without having to tell a left limb from a right one, the part that
    symmetric clothing leaves to the face alone."""

    def __post_init__(self) -> None:
        for name in ("distance", "voxel_ce", "heatmap_ce"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.joint_extent_margin < 0:
            raise ValueError(f"joint_extent_margin must be >= 0, got {self.joint_extent_margin}")
        if not 0.0 <= self.weight_average < 1.0:
            raise ValueError(f"weight_average must be in [0, 1), got {self.weight_average}")
        if not (self.voxel_sigma > 0 and self.heatmap_sigma > 0):
            raise ValueError("voxel_sigma and heatmap_sigma must be > 0")


def _soft_target(distance_sq: torch.Tensor, sigma: float) -> torch.Tensor:
    """A normalised Gaussian over the last axis from squared distances (..., P)."""
    logits = -distance_sq / (2.0 * sigma**2)
    return torch.softmax(logits, dim=-1)


def voxel_cross_entropy(
    probabilities: torch.Tensor, centres: torch.Tensor, joints: torch.Tensor, sigma: float
) -> torch.Tensor:
    """probabilities (B, J, M, M, M), centres (M, M, M, 3), joints (B, J, 3); sigma in world units."""
    return voxel_cross_entropy_per_sample(probabilities, centres, joints, sigma).mean()


def voxel_cross_entropy_per_sample(
    probabilities: torch.Tensor, centres: torch.Tensor, joints: torch.Tensor, sigma: float
) -> torch.Tensor:
    """As voxel_cross_entropy, averaged over joints only: (B,)."""
    flat = probabilities.flatten(2)
    distance_sq = ((centres.reshape(1, 1, -1, 3) - joints[:, :, None]) ** 2).sum(-1)
    target = _soft_target(distance_sq, sigma)
    return -(target * torch.log(flat.clamp_min(1e-12))).sum(-1).mean(-1)


def heatmap_cross_entropy(logits: torch.Tensor, uv: torch.Tensor, sigma: float) -> torch.Tensor:
    """logits (B, V, J, h, w); uv (B, V, J, 2) in pixels of the h x w map; sigma in those pixels."""
    return heatmap_cross_entropy_per_sample(logits, uv, sigma).mean()


def heatmap_cross_entropy_per_sample(logits: torch.Tensor, uv: torch.Tensor, sigma: float) -> torch.Tensor:
    """As heatmap_cross_entropy, averaged over views and joints only: (B,)."""
    h, w = logits.shape[-2:]
    u = torch.arange(w, dtype=uv.dtype) + 0.5
    v = torch.arange(h, dtype=uv.dtype) + 0.5
    distance_sq = (v[:, None] - uv[..., 1, None, None]) ** 2 + (u[None, :] - uv[..., 0, None, None]) ** 2
    target = _soft_target(distance_sq.flatten(-2), sigma)
    return -(target * torch.log_softmax(logits.flatten(-2), dim=-1)).sum(-1).mean(dim=(1, 2))


def joint_half_extent(joints: np.ndarray, widest: float, margin: float) -> float:
    """Half side of the cube about the origin that holds joints (S, J, 3) with a margin:
    margin * max |coordinate|, but never more than `widest` (the frustum's, say)."""
    return min(widest, margin * float(np.abs(joints).max()))


def training_joints(caches: Sequence[Path]) -> np.ndarray:
    """The ground-truth joints (S, J, 3) of every done sample of the caches."""
    return np.concatenate(
        [
            reader.read_ground_truth(reader.done_indices().tolist())["joints_3d"]
            for reader in (CacheReader(cache) for cache in caches)
        ]
    )


@dataclass(frozen=True)
class SupervisedOutputs:
    """What one forward pass gives the supervised losses."""

    keypoints: torch.Tensor
    """(B, J, 3) soft-argmax positions."""
    probabilities: torch.Tensor
    """(B, J, M, M, M) voxel distributions."""
    heatmap_logits: torch.Tensor | None
    """(B, V, J, h, w) of the auxiliary 2D head, or None without the heatmap term."""
    feature_scale: float
    """h / image size: cache pixels to feature pixels."""


def supervised_loss_per_sample(
    outputs: SupervisedOutputs,
    joints: torch.Tensor,
    centres: torch.Tensor,
    intrinsics: torch.Tensor,
    world_to_camera: torch.Tensor,
    extent: float,
    voxel: float,
    losses: SupervisedLosses,
) -> torch.Tensor:
    """The weighted loss of each sample (B,) against joints (B, J, 3).

    centres (M, M, M, 3); intrinsics (B, V, 3, 3) and world_to_camera (B, V, 4, 4) at the
    cache's image size; extent the volume's half side and voxel its voxel side (world units)."""
    total = losses.distance * (((outputs.keypoints - joints) / extent) ** 2).sum(-1).mean(-1)
    if losses.voxel_ce > 0:
        total = total + losses.voxel_ce * voxel_cross_entropy_per_sample(
            outputs.probabilities, centres, joints, losses.voxel_sigma * voxel
        )
    if outputs.heatmap_logits is not None:
        uv, _ = geometry.project_to_views(joints, intrinsics, world_to_camera)
        total = total + losses.heatmap_ce * heatmap_cross_entropy_per_sample(
            outputs.heatmap_logits, uv * outputs.feature_scale, losses.heatmap_sigma
        )
    return total


def train_supervised(
    config: StageTwoConfig,
    caches: Sequence[Path],
    progress: Callable[[int, float], None] | None = None,
    losses: SupervisedLosses = SupervisedLosses(),
) -> KeyDiff3DModel:
    """Train features, head, lifting and V2V to put keypoint j on ground-truth joint j.

    config.num_keypoints must equal the number of ground-truth joints. progress(step, loss).
    """
    if losses.mirror and config.feature_source == "diffusion":
        raise ValueError(
            "mirror needs feature_source 'pixels': diffusion features do not flip with their image"
        )
    if losses.joint_extent_margin > 0:
        # Never wider than the cube the config alone gives (its own extent, or the frustum).
        widest = config.volume_half_extent or frustum_half_extent(
            summarise_caches(caches, config.num_views, config.feature_source)
        )
        extent = joint_half_extent(training_joints(caches), widest, losses.joint_extent_margin)
        config = dataclasses.replace(config, volume_half_extent=extent)
    model, _ = build_model(config, tuple(caches))
    dataset = GroundTruthTrainingSet(
        caches,
        config.num_views,
        config.render_size,
        config.feature_source == "diffusion",
        feature_view_size=model.config.pixel_input_size,
        in_memory=config.loader_in_memory,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        joint_head = torch.nn.Conv2d(config.feature_channels, config.num_keypoints, 1)
    optimizer = torch.optim.AdamW(
        model.keypoint_parameters() + list(joint_head.parameters()),
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    extent = model.config.volume_half_extent
    voxel = 2.0 * extent / model.config.volume_size
    label_swap = joint_label_swap(caches[0])
    swap = label_swap if losses.flip_invariant else None
    # Its own stream, so that turning the mirror on changes nothing else the seed draws.
    mirror_draws = torch.Generator().manual_seed(config.seed)
    # The batches of fit's sampler, read ahead by config.loader_workers processes: read in
    # this process, a batch of 128 px views took as long as the step that used it.
    loader = torch.utils.data.DataLoader(
        ErrorsAsValues(dataset),
        batch_sampler=StepBatchSampler(len(dataset), config.batch_size, config.seed, 0, config.steps),
        num_workers=config.loader_workers,
        collate_fn=keep_batch,
    )
    model.train()
    average = None
    if losses.weight_average > 0:
        average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(losses.weight_average))
    for step, batch in enumerate(loader):
        if isinstance(batch, CacheError):  # raised in a loader worker (ErrorsAsValues)
            raise batch
        intrinsics, world_to_camera, joints = (
            batch["intrinsics"],
            batch["world_to_camera"],
            batch["joints_3d"],
        )
        if losses.mirror:
            chosen = torch.rand(len(joints), generator=mirror_draws) < 0.5
            batch, joints = mirror_samples(batch, joints, chosen, label_swap, model.config.image_size)
            intrinsics, world_to_camera = batch["intrinsics"], batch["world_to_camera"]
        features = model.view_features(model_inputs(model, batch))
        volume = model.lift(features, intrinsics, world_to_camera)
        keypoints, probabilities = geometry.soft_argmax_3d(model.keypoint_logits(volume), model.voxel_centres)
        b, v = features.shape[:2]
        logits = joint_head(features.flatten(0, 1)).unflatten(0, (b, v)) if losses.heatmap_ce > 0 else None
        outputs = SupervisedOutputs(
            keypoints, probabilities, logits, features.shape[-1] / model.config.image_size
        )
        args = (model.voxel_centres, intrinsics, world_to_camera, extent, voxel, losses)
        sample_loss = supervised_loss_per_sample(outputs, joints, *args)
        if swap is not None:
            sample_loss = torch.minimum(
                sample_loss, supervised_loss_per_sample(outputs, joints[:, swap], *args)
            )
        loss = sample_loss.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        apply_learning_rate(optimizer, config.lr_schedule, step, config.steps)
        optimizer.step()
        if average is not None:
            average.update_parameters(model)
        if progress is not None:
            progress(step + 1, float(loss.detach()))
    if average is not None:
        model.load_state_dict(average.module.state_dict())
    return model.eval()
