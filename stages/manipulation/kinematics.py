"""Forward kinematics down the rig's tree, a CCD inverse kinematics, and linear blend skinning.

A bone's local rotation turns its child's subtree about the bone's parent joint and
is expressed in the rest pose's world axes after its parent bone's rotation, so a
rotated upper arm carries the forearm with it. Bone b's world transform is then
x -> R_b x + t_b with R_b = R_parent(b) L_b and t_b = posed parent joint - R_b rest
parent joint; the root's transform turns everything about the root keypoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.manipulation.gaussians import Gaussians
from stages.manipulation.rig import Rig
from stages.manipulation.shapes import check_shape
from stages.rotations import (
    axis_angle_to_matrix,
    fit_rotation,
    matrix_to_quaternion,
    quaternion_multiply,
    quaternion_to_matrix,
    rotation_between,
)


@dataclass(frozen=True, eq=False)
class SkeletonPose:
    """Joint rotations of a rig; identity everywhere is the rest pose."""

    local_rotations: np.ndarray
    """(N-1, 3, 3) per bone, about its parent joint (see the module docstring)."""
    root_rotation: np.ndarray
    """(3, 3) of the whole object about the root keypoint."""
    root_translation: np.ndarray
    """(3,) of the whole object, applied after root_rotation."""

    @classmethod
    def rest(cls, num_bones: int) -> SkeletonPose:
        return cls(np.broadcast_to(np.eye(3), (num_bones, 3, 3)).copy(), np.eye(3), np.zeros(3))


@dataclass(frozen=True, eq=False)
class BoneTransforms:
    """World transforms of every bone and the posed keypoints they give."""

    rotations: np.ndarray
    """(N-1, 3, 3)."""
    translations: np.ndarray
    """(N-1, 3): a point x bound to bone b goes to rotations[b] @ x + translations[b]."""
    joints: np.ndarray
    """(N, 3) posed keypoints."""


def forward_kinematics(rig: Rig, pose: SkeletonPose) -> BoneTransforms:
    """Bone transforms and posed keypoints (N, 3) of `pose` on `rig`."""
    b = len(rig.bones)
    local = check_shape("local_rotations", pose.local_rotations, (b, 3, 3))
    root_rotation = check_shape("root_rotation", pose.root_rotation, (3, 3))
    root_translation = check_shape("root_translation", pose.root_translation, (3,))
    joints = rig.joints
    posed = np.empty_like(joints)
    posed[rig.root] = joints[rig.root] + root_translation
    rotations = np.empty((b, 3, 3))
    parent_bone = rig.parent_bone()
    for index, (parent, child) in enumerate(rig.bones):
        above = root_rotation if parent_bone[index] < 0 else rotations[parent_bone[index]]
        rotations[index] = above @ local[index]
        posed[child] = posed[parent] + rotations[index] @ (joints[child] - joints[parent])
    parents = np.array([p for p, _ in rig.bones], dtype=np.int64)
    translations = posed[parents] - np.einsum("bij,bj->bi", rotations, joints[parents])
    return BoneTransforms(rotations, translations, posed)


def fit_root(rig: Rig, targets: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Root rotation (3, 3) and translation (3,) moving the targeted rest keypoints closest
    to their targets rigidly (Kabsch about their centroid; translation only below 3 targets)."""
    keys = sorted(targets)
    source = rig.joints[keys]
    target = np.stack([targets[k] for k in keys])
    source_centre, target_centre = source.mean(axis=0), target.mean(axis=0)
    rotation = np.eye(3)
    if len(keys) >= 3:
        rotation = fit_rotation(source - source_centre, target - target_centre, prior=0.0)
    # x -> R (x - root) + root + t equals x -> R (x - c_s) + c_t.
    pivot = rig.joints[rig.root]
    translation = target_centre - rotation @ source_centre + rotation @ pivot - pivot
    return rotation, translation


def solve_targets(
    rig: Rig,
    targets: dict[int, np.ndarray],
    start: SkeletonPose,
    iterations: int = 20,
    chain_length: int | None = None,
) -> SkeletonPose:
    """Cyclic coordinate descent: leaf-to-root sweeps, each bone turned about its parent joint.

    A bone whose child keypoint has a target aims the child at it, then twists about
    itself to bring the targeted keypoints further down closest to theirs; any other
    bone turns its whole subtree to fit the targets below it (Kabsch). Bone lengths are
    kept, so targets from a skeleton with equal bone lengths are reached exactly once
    the sweeps have run down the tree's depth. targets: keypoint -> (3,).
    chain_length: how many bones above a target may turn for it (None: all up to the root).
    """
    for key, value in targets.items():
        if not 0 <= key < len(rig.joints):
            raise ValueError(f"target keypoint {key} is not in [0, {len(rig.joints)})")
        check_shape(f"target of keypoint {key}", value, (3,))
    below = _targets_below(rig, set(targets), chain_length)
    local = start.local_rotations.copy()
    parent_bone = rig.parent_bone()
    for _ in range(iterations):
        for index in reversed(range(len(rig.bones))):
            moved = below[index]
            if not moved:
                continue
            transforms = forward_kinematics(
                rig, SkeletonPose(local, start.root_rotation, start.root_translation)
            )
            parent, child = rig.bones[index]
            pivot = transforms.joints[parent]
            source = transforms.joints[moved] - pivot
            goal = np.stack([targets[k] for k in moved]) - pivot
            if child in targets:
                delta = _aim_and_twist(source, goal, moved.index(child))
            elif len(moved) == 1:
                delta = _aim(source[0], goal[0])
            else:
                delta = fit_rotation(source, goal)
            above = (
                start.root_rotation if parent_bone[index] < 0 else transforms.rotations[parent_bone[index]]
            )
            local[index] = above.T @ delta @ above @ local[index]
    return SkeletonPose(local, start.root_rotation, start.root_translation)


def _aim(source: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Smallest rotation (3, 3) turning vector source (3,) towards goal (3,); identity if either is 0."""
    if np.linalg.norm(source) < 1e-12 or np.linalg.norm(goal) < 1e-12:
        return np.eye(3)
    return rotation_between(source, goal)


def _aim_and_twist(source: np.ndarray, goal: np.ndarray, lead: int) -> np.ndarray:
    """Rotation (3, 3) aiming source[lead] at goal[lead], then twisting about that direction to
    best align the other vectors (K, 3) (least squares in the plane normal to the axis)."""
    aim = _aim(source[lead], goal[lead])
    axis = goal[lead] / max(np.linalg.norm(goal[lead]), 1e-12)
    # Others relative to the lead point, flattened onto the plane normal to the axis.
    turned = (source - source[lead]) @ aim.T
    wanted = goal - goal[lead]
    turned -= np.outer(turned @ axis, axis)
    wanted -= np.outer(wanted @ axis, axis)
    sin = float(np.sum(np.cross(turned, wanted) @ axis))
    cos = float(np.sum(turned * wanted))
    if abs(sin) < 1e-12 and cos <= 0:
        return aim
    return axis_angle_to_matrix(axis, float(np.arctan2(sin, cos))) @ aim


def _targets_below(rig: Rig, targeted: set[int], chain_length: int | None) -> list[list[int]]:
    """Per bone, the targeted keypoints in its child's subtree within chain_length bones."""
    children: dict[int, list[int]] = {}
    for parent, child in rig.bones:
        children.setdefault(parent, []).append(child)
    out = []
    for _, child in rig.bones:
        found, frontier, depth = [], [child], 1
        while frontier and (chain_length is None or depth <= chain_length):
            found += [k for k in frontier if k in targeted]
            frontier = [c for k in frontier for c in children.get(k, [])]
            depth += 1
        out.append(sorted(found))
    return out


def linear_blend_skinning(
    points: np.ndarray, weights: np.ndarray, rotations: np.ndarray, translations: np.ndarray
) -> np.ndarray:
    """Points (P, 3) moved by the weights (P, N-1) blend of bone transforms (N-1, 3, 3), (N-1, 3)."""
    points = check_shape("points", points, (None, 3))
    weights = check_shape("weights", weights, (len(points), None))
    b = weights.shape[1]
    rotations = check_shape("rotations", rotations, (b, 3, 3))
    translations = check_shape("translations", translations, (b, 3))
    per_bone = np.einsum("bij,pj->pbi", rotations, points) + translations[None]
    return np.einsum("pb,pbi->pi", weights, per_bone)


def blend_rotations(weights: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """Per-point rotations (P, 4) (w, x, y, z): the normalised weights (P, N-1) blend of the bones'
    quaternions (N-1, 3, 3), signs aligned to the point's heaviest bone (q and -q are one rotation)."""
    weights = check_shape("weights", weights, (None, None))
    rotations = check_shape("rotations", rotations, (weights.shape[1], 3, 3))
    quaternions = matrix_to_quaternion(rotations)
    heaviest = quaternions[np.argmax(weights, axis=1)]
    signs = np.sign(np.einsum("pk,bk->pb", heaviest, quaternions))
    signs[signs == 0] = 1.0
    blended = np.einsum("pb,pb,bk->pk", weights, signs, quaternions)
    return blended / np.linalg.norm(blended, axis=1, keepdims=True)


def pose_gaussians(gaussians: Gaussians, weights: np.ndarray, transforms: BoneTransforms) -> Gaussians:
    """Gaussians moved by linear blend skinning: centres blended, orientations turned by the
    blended rotation (scales, colours and opacities unchanged)."""
    means = linear_blend_skinning(gaussians.means, weights, transforms.rotations, transforms.translations)
    turn = blend_rotations(weights, transforms.rotations)
    rotations = quaternion_multiply(turn, gaussians.rotations)
    normals = None
    if gaussians.normals is not None:
        normals = np.einsum("pij,pj->pi", quaternion_to_matrix(turn), gaussians.normals)
    return gaussians.moved(means, rotations, normals)
