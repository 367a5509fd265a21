"""Pose transfer between two samples, measured by silhouettes: the issue's check of rig quality.

Object A (reconstructed from sample A) is rigged with A's keypoints and posed so that
its keypoints move to B's: the whole object first moves rigidly onto B's keypoints
(Kabsch), then IK turns every bone towards B's keypoints. Its splatted silhouettes in
B's cameras are compared with B's masks, against two baselines: A not moved at all, and
A moved rigidly only (which separates articulation from a global turn of the figure).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.manipulation.gaussians import Gaussians
from stages.manipulation.kinematics import (
    BoneTransforms,
    SkeletonPose,
    fit_root,
    forward_kinematics,
    pose_gaussians,
)
from stages.manipulation.pose_file import PoseRequest, solve_pose
from stages.manipulation.render import render_views, silhouette_iou
from stages.manipulation.rig import Rig, skinning_weights
from stages.manipulation.shapes import check_shape


@dataclass(frozen=True, eq=False)
class TransferResult:
    """Silhouette IoU per view (V,) of object A against B's masks, three ways."""

    undeformed: np.ndarray
    rigid: np.ndarray
    deformed: np.ndarray
    posed: Gaussians
    """A posed onto B's keypoints."""
    rigid_posed: Gaussians
    """A moved rigidly onto B's keypoints."""
    transforms: BoneTransforms
    """The full pose's bone transforms and posed keypoints."""
    masks: dict[str, np.ndarray]
    """'undeformed', 'rigid', 'deformed': splatted silhouettes (V, H, W) bool."""


def splat_masks(
    gaussians: Gaussians, intrinsics: np.ndarray, world_to_camera: np.ndarray, size: int
) -> np.ndarray:
    """Silhouettes (V, H, W) bool of Gaussians in views (V, 3, 3), (V, 4, 4)."""
    splats = render_views(
        gaussians.means, gaussians.colours, gaussians.scales.max(axis=1), intrinsics, world_to_camera, size
    )
    return np.stack([s.mask for s in splats])


def transfer_pose(
    gaussians: Gaussians,
    rig: Rig,
    targets: np.ndarray,
    masks: np.ndarray,
    intrinsics: np.ndarray,
    world_to_camera: np.ndarray,
    ik_iterations: int = 20,
) -> TransferResult:
    """Pose `gaussians` rigged by `rig` onto keypoints targets (N, 3) and score all three
    variants against masks (V, H, W) seen by cameras (V, 3, 3), (V, 4, 4)."""
    targets = check_shape("targets", targets, (len(rig.joints), 3))
    masks = np.asarray(masks, dtype=bool)
    size = masks.shape[-1]
    request = PoseRequest(
        targets={k: targets[k] for k in range(len(targets))},
        fit_root_to_targets=True,
        ik_iterations=ik_iterations,
    )
    full = solve_pose(rig, request)
    # The rigid baseline is the best rigid fit to all keypoints (not anchored at the root keypoint).
    rigid = SkeletonPose(SkeletonPose.rest(len(rig.bones)).local_rotations, *fit_root(rig, request.targets))
    weights = skinning_weights(gaussians.means, rig)
    transforms = forward_kinematics(rig, full)
    posed = pose_gaussians(gaussians, weights, transforms)
    rigid_posed = pose_gaussians(gaussians, weights, forward_kinematics(rig, rigid))
    rendered = {
        "undeformed": splat_masks(gaussians, intrinsics, world_to_camera, size),
        "rigid": splat_masks(rigid_posed, intrinsics, world_to_camera, size),
        "deformed": splat_masks(posed, intrinsics, world_to_camera, size),
    }
    return TransferResult(
        undeformed=silhouette_iou(rendered["undeformed"], masks),
        rigid=silhouette_iou(rendered["rigid"], masks),
        deformed=silhouette_iou(rendered["deformed"], masks),
        posed=posed,
        rigid_posed=rigid_posed,
        transforms=transforms,
        masks=rendered,
    )
