"""Does each discovered keypoint stay on the same body part? Nearest ground-truth joint per sample.

numpy only. Letters: S samples, N keypoints, J joints. Keypoints and joints are compared
as they are, in the world frame they share (the cache's frame): no alignment, since a
per-sample similarity fit would move the keypoints onto whatever joints suit it and hide
a keypoint that drifts. The regressors measure how much pose the keypoints carry; this
measures whether each keypoint MEANS one thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stages.evaluation.shapes import require_finite, require_shape


@dataclass(frozen=True, eq=False)
class KeypointConsistency:
    """How often each keypoint's nearest joint is the joint it is most often nearest to."""

    frequencies: np.ndarray
    """(N, J) share of the samples in which joint j is the joint nearest keypoint n; rows sum to 1."""
    nearest_joint: np.ndarray
    """(N,) int, the joint most often nearest each keypoint (the lower index on a tie)."""
    consistency: np.ndarray
    """(N,) share of the samples in which `nearest_joint` is the nearest: 1 for a keypoint that
    never leaves its part, 1 / J or less for one that wanders at random."""
    mean_consistency: float
    """Mean of `consistency` over the keypoints."""

    def to_dict(self, joint_names: list[str] | None = None) -> dict[str, Any]:
        """JSON-able numbers; nearest joints by name where `joint_names` (J,) are given."""

        def joint(j: int) -> int | str:
            return int(j) if joint_names is None else joint_names[int(j)]

        return {
            "mean_consistency": float(self.mean_consistency),
            "per_keypoint": [
                {"keypoint": n, "nearest_joint": joint(j), "consistency": float(c)}
                for n, (j, c) in enumerate(zip(self.nearest_joint, self.consistency, strict=True))
            ],
            "frequencies": self.frequencies.tolist(),
        }


def keypoint_joint_consistency(keypoints: np.ndarray, joints: np.ndarray) -> KeypointConsistency:
    """For every keypoint, which joint is nearest it in each sample, and how steadily.

    Left and right are told apart here: a keypoint that sits on the left knee in some
    samples and the right knee in others (the left/right confusion `flip_aware_p_mpjpe`
    forgives) counts as inconsistent, and shows in the frequencies as one row split
    between the two knees.

    Args:
        keypoints: (S, N, 3) discovered keypoints.
        joints: (S, J, 3) ground-truth joints, same frame and units.
    Returns:
        The (N, J) nearest-joint frequencies and their per-keypoint summary.
    """
    sizes: dict[str, int] = {}
    keypoints_array = require_shape("keypoints", keypoints, ("S", "N", 3), sizes)
    joints_array = require_shape("joints", joints, ("S", "J", 3), sizes)
    require_finite("keypoints", keypoints_array)
    require_finite("joints", joints_array)
    num_joints = joints_array.shape[1]
    # (S, N, J) squared distances; the nearest is the same for squared and plain distances.
    offsets = keypoints_array[:, :, None, :] - joints_array[:, None, :, :]
    nearest = np.einsum("snjc,snjc->snj", offsets, offsets).argmin(axis=2)
    counts = np.stack([np.bincount(column, minlength=num_joints) for column in nearest.T])
    frequencies = counts / nearest.shape[0]
    nearest_joint = frequencies.argmax(axis=1)
    consistency = frequencies.max(axis=1)
    return KeypointConsistency(
        frequencies=frequencies,
        nearest_joint=nearest_joint,
        consistency=consistency,
        mean_consistency=float(consistency.mean()),
    )


@dataclass(frozen=True)
class DirectionConcentration:
    """How steadily the keypoints lie in one horizontal direction about the figure, in two frames."""

    world: float
    """In the world frame: 1 when every keypoint marks a fixed world direction."""
    figure: float
    """In the figure's own frame (turned by its heading): 1 when every keypoint keeps its
    direction as the figure turns, as a keypoint on one part does."""


def figure_heading(joints: np.ndarray, left: int, right: int) -> np.ndarray:
    """(S,) azimuth in radians about z of the direction from joint `right` to joint `left`
    (joints (S, J, 3), z up): the figure's heading, a quarter turn from where it faces."""
    side = joints[:, left] - joints[:, right]
    return np.arctan2(side[:, 1], side[:, 0])


def direction_concentration(
    keypoints: np.ndarray, joints: np.ndarray, left: int, right: int
) -> DirectionConcentration:
    """Each keypoint's azimuth about the vertical (z) through the midpoint of joints `left`
    and `right` (the hips), in the world frame and relative to the figure's heading (the
    direction from `right` to `left`); the mean resultant length of those angles over the
    samples, averaged over keypoints. 0 for a direction spread uniformly.

    A keypoint that marks whatever part lies in one world direction scores high in the
    world frame and low in the figure's; one on a part, the reverse. (Joints themselves
    score about 0.06 and 0.65 on the humanoid's held-out motions: the figure faces any way.)

    Args:
        keypoints: (S, N, 3) discovered keypoints.
        joints: (S, J, 3) ground-truth joints, same frame, z up.
        left, right: indices of a left/right joint pair in J.
    """
    sizes: dict[str, int] = {}
    keypoints_array = require_shape("keypoints", keypoints, ("S", "N", 3), sizes)
    joints_array = require_shape("joints", joints, ("S", "J", 3), sizes)
    require_finite("keypoints", keypoints_array)
    require_finite("joints", joints_array)
    root = 0.5 * (joints_array[:, left] + joints_array[:, right])
    heading = figure_heading(joints_array, left, right)
    offsets = keypoints_array - root[:, None]
    azimuth = np.arctan2(offsets[..., 1], offsets[..., 0])

    def resultant(angles: np.ndarray) -> float:
        return float(np.abs(np.exp(1j * angles).mean(axis=0)).mean())

    return DirectionConcentration(world=resultant(azimuth), figure=resultant(azimuth - heading[:, None]))
