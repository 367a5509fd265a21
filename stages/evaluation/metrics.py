"""Pose errors of the Human3.6M protocol (MPJPE, N-MPJPE, P-MPJPE) and the 2D normalised error.

numpy only. Letters: S samples, J joints. 3D poses are (S, J, 3) arrays in METRES and
every 3D error is reported in MILLIMETRES (x 1000), the unit of the paper's Table 1.
Each function checks its arguments on entry and raises `ShapeError` (a ValueError)
naming the argument with the expected and the actual shape, or `NonFiniteError`
(also a ValueError) for NaN or infinite entries.

The three 3D errors differ only in how the prediction is aligned to the ground truth
before the mean Euclidean joint distance is taken:
- `mpjpe`: not at all (both in the same frame, the regressor's job).
- `n_mpjpe`: both root-centred, then the prediction scaled by the least-squares optimal
  s = sum_j <p_hat_j, p_j> / sum_j ||p_hat_j||^2 (Rhodin et al. 2018).
- `p_mpjpe`: a per-sample similarity (rotation, uniform scale, translation) by Procrustes,
  with the reflection fix, so a mirrored pose is never "explained away".
- `flip_aware_p_mpjpe`: P-MPJPE against the better, per sample, of the ground truth and the
  ground truth with its left/right labels swapped (as BKinD-3D reports it): a keypoint
  method cannot know which side is "left", so a regressor may learn a labelling that is
  right up to the swap on some samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stages.evaluation.joint_sides import label_swap_permutation
from stages.evaluation.shapes import require_finite, require_shape

MILLIMETRES_PER_METRE = 1000.0
PERCENT = 100.0


@dataclass(frozen=True, eq=False)
class PoseErrors:
    """Mean Euclidean joint errors of S poses of J joints, in millimetres."""

    overall_mm: float
    """Mean over every sample and joint."""
    per_joint_mm: np.ndarray
    """(J,) mean over samples, per joint."""
    per_sample_mm: np.ndarray
    """(S,) mean over joints, per sample."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able numbers (lists of floats)."""
        return {
            "overall_mm": float(self.overall_mm),
            "per_joint_mm": [float(v) for v in self.per_joint_mm],
            "per_sample_mm": [float(v) for v in self.per_sample_mm],
        }


@dataclass(frozen=True, eq=False)
class FlipAwareErrors(PoseErrors):
    """`PoseErrors` under the labelling chosen per sample, and which labelling that was."""

    swapped: np.ndarray
    """(S,) bool, True where the left/right-swapped ground truth fitted better."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able numbers, with the share of samples scored against the swapped labels."""
        return {**super().to_dict(), "swapped_fraction": float(self.swapped.mean())}


@dataclass(frozen=True, eq=False)
class NormalisedErrors:
    """2D keypoint errors divided by the image size; NaN where nothing was visible."""

    overall: float
    """Mean over every visible (sample, joint) pair, as a fraction of the image size."""
    overall_percent: float
    """`overall` x 100, the number the CUB literature reports ("error normalised by image size")."""
    per_joint: np.ndarray
    """(J,) mean over the samples where the joint is visible; NaN for a joint never visible."""
    per_sample: np.ndarray
    """(S,) mean over the joints visible in the sample; NaN for a sample with none visible."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able numbers; NaN becomes None (JSON has no NaN)."""

        def number(value: float) -> float | None:
            return None if np.isnan(value) else float(value)

        return {
            "overall": number(self.overall),
            "overall_percent": number(self.overall_percent),
            "per_joint": [number(v) for v in self.per_joint],
            "per_sample": [number(v) for v in self.per_sample],
        }


def _check_poses(pred: object, gt: object) -> tuple[np.ndarray, np.ndarray]:
    sizes: dict[str, int] = {}
    pred_array = require_shape("pred", pred, ("S", "J", 3), sizes)
    gt_array = require_shape("gt", gt, ("S", "J", 3), sizes)
    require_finite("pred", pred_array)
    require_finite("gt", gt_array)
    return pred_array, gt_array


def _distances_mm(aligned: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(S, J) joint distances in millimetres of (S, J, 3) arrays in metres."""
    return np.linalg.norm(aligned - gt, axis=-1) * MILLIMETRES_PER_METRE


def _errors_mm(aligned: np.ndarray, gt: np.ndarray) -> PoseErrors:
    """Joint distances of (S, J, 3) arrays in metres, summarised in millimetres."""
    distances = _distances_mm(aligned, gt)
    return PoseErrors(
        overall_mm=float(distances.mean()),
        per_joint_mm=distances.mean(axis=0),
        per_sample_mm=distances.mean(axis=1),
    )


def mpjpe(pred: np.ndarray, gt: np.ndarray) -> PoseErrors:
    """Mean per-joint position error, no alignment.

    Args:
        pred: (S, J, 3) predicted joints, metres.
        gt: (S, J, 3) ground-truth joints, metres, same frame.
    Returns:
        Errors in millimetres.
    """
    pred_array, gt_array = _check_poses(pred, gt)
    return _errors_mm(pred_array, gt_array)


def scale_aligned(pred: np.ndarray, gt: np.ndarray, root: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Root-centred poses with the prediction scaled by the least-squares optimal factor.

    Args:
        pred: (S, J, 3) predicted joints.
        gt: (S, J, 3) ground-truth joints.
        root: index of the root joint (Human3.6M: 0, the pelvis).
    Returns:
        (S, J, 3) scaled root-centred prediction and (S, J, 3) root-centred ground truth.
        A prediction collapsed onto its root gets scale 0: no scale can help it.
    """
    pred_array, gt_array = _check_poses(pred, gt)
    num_joints = pred_array.shape[1]
    if not 0 <= root < num_joints:
        raise ValueError(f"root must be a joint index in [0, {num_joints}), got {root}")
    pred_centred = pred_array - pred_array[:, root : root + 1]
    gt_centred = gt_array - gt_array[:, root : root + 1]
    numerator = np.einsum("sjc,sjc->s", pred_centred, gt_centred)
    denominator = np.einsum("sjc,sjc->s", pred_centred, pred_centred)
    safe = np.where(denominator > 0, denominator, 1.0)
    scale = np.where(denominator > 0, numerator / safe, 0.0)
    return scale[:, None, None] * pred_centred, gt_centred


def n_mpjpe(pred: np.ndarray, gt: np.ndarray, root: int = 0) -> PoseErrors:
    """MPJPE after root-centring both poses and scaling the prediction optimally (per sample).

    Args:
        pred: (S, J, 3) predicted joints, metres.
        gt: (S, J, 3) ground-truth joints, metres.
        root: index of the root joint; its error is 0 by construction and still counted in
            the means, as the peers' code does.
    Returns:
        Errors in millimetres.
    """
    aligned, gt_centred = scale_aligned(pred, gt, root)
    return _errors_mm(aligned, gt_centred)


def procrustes_aligned(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The prediction after the per-sample similarity transform that best fits the ground truth.

    Minimises sum_j ||s R p_hat_j + t - p_j||^2 over rotations R (det +1, the reflection
    fix), scales s >= 0 and translations t, in closed form by SVD (Umeyama 1991).

    Args:
        pred: (S, J, 3) predicted joints.
        gt: (S, J, 3) ground-truth joints.
    Returns:
        (S, J, 3) aligned prediction, in the ground truth's frame.
    """
    pred_array, gt_array = _check_poses(pred, gt)
    pred_mean = pred_array.mean(axis=1, keepdims=True)
    gt_mean = gt_array.mean(axis=1, keepdims=True)
    pred_centred = pred_array - pred_mean
    gt_centred = gt_array - gt_mean
    # Poses are rows, so the aligned pose is s * pred_centred @ R with R = U D V^T from
    # the SVD of the cross-covariance pred_centred^T gt_centred.
    cross = np.einsum("sjc,sjd->scd", pred_centred, gt_centred)
    u, singular, vt = np.linalg.svd(cross)
    # A mirror would fit better whenever det(U V^T) < 0; flipping the smallest singular
    # direction gives the best proper rotation instead.
    sign = np.sign(np.linalg.det(u @ vt))
    sign = np.where(sign == 0, 1.0, sign)
    flip = np.ones_like(singular)
    flip[:, -1] = sign
    rotation = (u * flip[:, None, :]) @ vt
    spread = np.einsum("sjc,sjc->s", pred_centred, pred_centred)
    trace = (singular * flip).sum(axis=1)
    safe = np.where(spread > 0, spread, 1.0)
    scale = np.where(spread > 0, trace / safe, 0.0)
    return scale[:, None, None] * (pred_centred @ rotation) + gt_mean


def p_mpjpe(pred: np.ndarray, gt: np.ndarray) -> PoseErrors:
    """MPJPE after per-sample Procrustes alignment (rotation, uniform scale, translation).

    Args:
        pred: (S, J, 3) predicted joints, metres.
        gt: (S, J, 3) ground-truth joints, metres.
    Returns:
        Errors in millimetres.
    """
    aligned = procrustes_aligned(pred, gt)
    return _errors_mm(aligned, np.asarray(gt, dtype=np.float64))


def flip_aware_p_mpjpe(pred: np.ndarray, gt: np.ndarray, pairs: Sequence[tuple[int, int]]) -> FlipAwareErrors:
    """P-MPJPE per sample against the better of the ground truth as is and left/right swapped.

    For each sample the prediction is Procrustes-aligned to both labellings of its ground
    truth; the one with the smaller mean joint error is kept (the unswapped one on a tie),
    and every mean is taken over those per-sample choices. Joint j's error is that of
    predicted joint j against the label it is compared with under the sample's choice
    (under a swap, the true right knee for the predicted left knee). With no pairs this is
    `p_mpjpe`.

    Args:
        pred: (S, J, 3) predicted joints, metres.
        gt: (S, J, 3) ground-truth joints, metres.
        pairs: left/right joint index pairs, e.g. `left_right_pairs(joint_names)`.
    Returns:
        Errors in millimetres, with the per-sample choice in `swapped`.
    """
    pred_array, gt_array = _check_poses(pred, gt)
    mirrored_gt = gt_array[:, label_swap_permutation(pairs, gt_array.shape[1])]
    as_is = _distances_mm(procrustes_aligned(pred_array, gt_array), gt_array)
    mirrored = _distances_mm(procrustes_aligned(pred_array, mirrored_gt), mirrored_gt)
    swapped = mirrored.mean(axis=1) < as_is.mean(axis=1)
    distances = np.where(swapped[:, None], mirrored, as_is)
    return FlipAwareErrors(
        overall_mm=float(distances.mean()),
        per_joint_mm=distances.mean(axis=0),
        per_sample_mm=distances.mean(axis=1),
        swapped=swapped,
    )


def normalised_2d_error(
    pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, image_size: float | np.ndarray
) -> NormalisedErrors:
    """Mean 2D keypoint distance over visible joints divided by the image size.

    The birds/dogs protocol: keypoints in pixels of a square image of side `image_size`;
    the error of a visible joint is ||pred - gt|| / image_size. Invisible joints are
    ignored (their `gt` may hold anything, NaN included); a joint never visible gets a
    NaN per-joint error rather than an exception.

    Args:
        pred: (S, J, 2) predicted keypoints, pixels.
        gt: (S, J, 2) ground-truth keypoints, pixels.
        visible: (S, J) bool, which ground-truth keypoints are annotated.
        image_size: side of the image in pixels, one number or (S,) per sample.
    Returns:
        Fractions of the image size, and `overall_percent` = 100 x `overall`.
    """
    sizes: dict[str, int] = {}
    pred_array = require_shape("pred", pred, ("S", "J", 2), sizes)
    gt_array = require_shape("gt", gt, ("S", "J", 2), sizes)
    visible_array = np.asarray(visible)
    if visible_array.shape != pred_array.shape[:2] or visible_array.dtype != np.bool_:
        raise ValueError(
            f"visible must be a bool array of shape (S, J) = {pred_array.shape[:2]}, "
            f"got {visible_array.dtype} {visible_array.shape}"
        )
    size_array = np.asarray(image_size, dtype=np.float64)
    if size_array.ndim == 1:
        require_shape("image_size", size_array, ("S",), sizes)
    elif size_array.ndim != 0:
        raise ValueError(f"image_size must be a number or shape (S,), got shape {size_array.shape}")
    if not np.all(size_array > 0):
        raise ValueError(f"image_size must be > 0, got {image_size}")
    require_finite("pred (visible joints)", pred_array[visible_array])
    require_finite("gt (visible joints)", gt_array[visible_array])

    sample_sizes = np.broadcast_to(size_array, pred_array.shape[:1])[:, None]
    distances = np.linalg.norm(pred_array - gt_array, axis=-1) / sample_sizes
    distances = np.where(visible_array, distances, 0.0)
    counts = visible_array.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_joint = distances.sum(axis=0) / counts.sum(axis=0)
        per_sample = distances.sum(axis=1) / counts.sum(axis=1)
        overall = float(distances.sum() / counts.sum())
    return NormalisedErrors(
        overall=overall, overall_percent=overall * PERCENT, per_joint=per_joint, per_sample=per_sample
    )
