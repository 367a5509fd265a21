"""Keypoints made from the true joints by a known rule, to score what keypoints of each kind can carry.

numpy only. Letters: S samples, J joints, B bones, P points, N keypoints. The regressors
score keypoints that a network found; these rules build keypoints whose meaning is known,
so that the same regression protocol says how far keypoints of each kind can carry a
pose to unseen motions:

- `points_on_bones`: N points at fixed places along the bones, each one on the same part
  in every sample (keypoints that follow the figure's parts);
- `support_points`: for N fixed world directions, the body point that lies furthest in
  that direction (keypoints tied to the world: each marks whatever part of the figure is
  outermost that way, which is where the unsupervised keypoints of the screenings sit);
- `support_points` with directions turned by each figure's heading (`turn_about_z`):
  keypoints tied to the figure's frame but not to its parts;
- `points_on_bones` of the joints with their left/right labels swapped, averaged with the
  plain ones (keypoints that cannot tell a left limb from a right one).

Bones are pairs of joint names (`SYNTHETIC_BONES` for the synthetic world's figures).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stages.evaluation.shapes import require_finite, require_shape

SYNTHETIC_BONES: dict[str, tuple[tuple[str, str], ...]] = {
    "humanoid": (
        ("pelvis", "chest"),
        ("chest", "neck"),
        ("neck", "head"),
        ("chest", "right_shoulder"),
        ("right_shoulder", "right_elbow"),
        ("right_elbow", "right_wrist"),
        ("chest", "left_shoulder"),
        ("left_shoulder", "left_elbow"),
        ("left_elbow", "left_wrist"),
        ("pelvis", "right_hip"),
        ("right_hip", "right_knee"),
        ("right_knee", "right_ankle"),
        ("pelvis", "left_hip"),
        ("left_hip", "left_knee"),
        ("left_knee", "left_ankle"),
    ),
    "quadruped": tuple(
        bone
        for leg in ("FR", "FL", "RR", "RL")
        for bone in (("body", f"{leg}_hip"), (f"{leg}_hip", f"{leg}_knee"), (f"{leg}_knee", f"{leg}_foot"))
    ),
}
"""Bones of the synthetic world's figures as (parent, child) joint names."""


def bone_indices(bones: Sequence[tuple[str, str]], joint_names: Sequence[str]) -> np.ndarray:
    """(B, 2) int joint indices of bones given by name; a name not in joint_names is a ValueError."""
    index = {name: i for i, name in enumerate(joint_names)}
    missing = sorted({name for bone in bones for name in bone if name not in index})
    if missing:
        raise ValueError(f"bones: joints {missing} are not among the joint names {list(joint_names)}")
    return np.array([[index[a], index[b]] for a, b in bones], dtype=np.int64).reshape(-1, 2)


def points_on_bones(joints: np.ndarray, bones: np.ndarray, bone: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Points at fraction t along bones: (1 - t) parent + t child.

    Args:
        joints: (S, J, 3).
        bones: (B, 2) int parent and child joint indices.
        bone: (N,) int, the bone each point lies on.
        t: (N,) in [0, 1], how far along it (0 at the parent).
    Returns:
        (S, N, 3).
    """
    joints = require_shape("joints", joints, ("S", "J", 3), {})
    require_finite("joints", joints)
    if bone.shape != t.shape or bone.ndim != 1:
        raise ValueError(f"bone and t: expected two (N,) arrays, got {bone.shape} and {t.shape}")
    parent, child = joints[:, bones[bone, 0]], joints[:, bones[bone, 1]]
    return (1.0 - t)[None, :, None] * parent + t[None, :, None] * child


def sphere_directions(n: int) -> np.ndarray:
    """(n, 3) unit vectors spread evenly over the sphere (a Fibonacci lattice, z from 1 to -1)."""
    if n < 1:
        raise ValueError(f"n: expected at least 1 direction, got {n}")
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    azimuth = np.pi * (1.0 + 5.0**0.5) * i
    ring = np.sqrt(1.0 - z**2)
    return np.stack([ring * np.cos(azimuth), ring * np.sin(azimuth), z], axis=1)


def support_points(points: np.ndarray, directions: np.ndarray, temperature: float) -> np.ndarray:
    """The body point furthest in each direction, softened over its near rivals.

    Args:
        points: (S, P, 3) points on the body, in the world frame.
        directions: (N, 3) unit vectors in the world frame, the same for every sample, or
            (S, N, 3), one set per sample (directions fixed in each figure's own frame).
        temperature: length (the points' unit) over which the weights soften; the weight of
            a point is exp((its reach - the furthest reach) / temperature), so a point one
            temperature short of the furthest has 1/e the weight.
    Returns:
        (S, N, 3): for each sample and direction, the weighted mean of the points.
    """
    sizes: dict[str, int] = {}
    points = require_shape("points", points, ("S", "P", 3), sizes)
    if np.ndim(directions) == 2:
        directions = np.broadcast_to(directions, (points.shape[0], *np.shape(directions)))
    directions = require_shape("directions", directions, ("S", "N", 3), sizes)
    require_finite("points", points)
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    reach = np.einsum("spc,snc->snp", points, directions)
    weights = np.exp((reach - reach.max(axis=2, keepdims=True)) / temperature)
    weights /= weights.sum(axis=2, keepdims=True)
    return np.einsum("snp,spc->snc", weights, points)


def turn_about_z(directions: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """directions (N, 3) turned counter-clockwise about z by each angle (S,) in radians: (S, N, 3)."""
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    x, y = directions[None, :, 0], directions[None, :, 1]
    z = np.broadcast_to(directions[None, :, 2], (len(angles), len(directions)))
    return np.stack([cos * x - sin * y, sin * x + cos * y, z], axis=-1)
