"""Rotations as 3x3 matrices and (w, x, y, z) quaternions: pure numpy, batched on leading axes.

Shared by the dataset cameras, the synthetic figures and the manipulation rig.
"""

from __future__ import annotations

import numpy as np

from stages.shapes import require_shape


def axis_angle_to_matrix(axis: np.ndarray, radians: float) -> np.ndarray:
    """Rotation (3, 3) by `radians` about `axis` (3,), right-handed (Rodrigues)."""
    axis = require_shape("axis", axis, (3,))
    norm = np.linalg.norm(axis)
    if norm == 0:
        raise ValueError("axis must be non-zero")
    x, y, z = axis / norm
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(radians) * k + (1.0 - np.cos(radians)) * (k @ k)


def quaternion_to_matrix(quaternions: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) as (w, x, y, z) -> rotations (..., 3, 3)."""
    q = np.asarray(quaternions, dtype=np.float64)
    if q.shape[-1] != 4:
        raise ValueError(f"quaternions must have shape (..., 4), got {q.shape}")
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def matrix_to_quaternion(matrices: np.ndarray) -> np.ndarray:
    """Rotations (..., 3, 3) -> unit quaternions (..., 4) (w, x, y, z) with w >= 0."""
    m = np.asarray(matrices, dtype=np.float64)
    if m.shape[-2:] != (3, 3):
        raise ValueError(f"matrices must have shape (..., 3, 3), got {m.shape}")
    # Four candidate formulas; each is well conditioned where its component is largest.
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    candidates = np.stack(
        [
            np.stack(
                [
                    1 + trace,
                    m[..., 2, 1] - m[..., 1, 2],
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 1, 0] - m[..., 0, 1],
                ],
                -1,
            ),
            np.stack(
                [
                    m[..., 2, 1] - m[..., 1, 2],
                    1 + 2 * m[..., 0, 0] - trace,
                    m[..., 0, 1] + m[..., 1, 0],
                    m[..., 0, 2] + m[..., 2, 0],
                ],
                -1,
            ),
            np.stack(
                [
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 0, 1] + m[..., 1, 0],
                    1 + 2 * m[..., 1, 1] - trace,
                    m[..., 1, 2] + m[..., 2, 1],
                ],
                -1,
            ),
            np.stack(
                [
                    m[..., 1, 0] - m[..., 0, 1],
                    m[..., 0, 2] + m[..., 2, 0],
                    m[..., 1, 2] + m[..., 2, 1],
                    1 + 2 * m[..., 2, 2] - trace,
                ],
                -1,
            ),
        ],
        axis=-2,
    )
    best = np.argmax(np.stack([trace, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1), axis=-1)
    q = np.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def quaternion_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product (..., 4) of (w, x, y, z) quaternions: rotation a after b."""
    aw, ax, ay, az = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def rotation_between(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The smallest rotation (3, 3) taking direction `source` (3,) to direction `target` (3,)."""
    a = require_shape("source", source, (3,))
    b = require_shape("target", target, (3,))
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    axis = np.cross(a, b)
    sin, cos = np.linalg.norm(axis), float(np.dot(a, b))
    if sin < 1e-12:
        if cos > 0:
            return np.eye(3)
        # Opposite directions: any axis perpendicular to a gives a half turn.
        other = np.eye(3)[int(np.argmin(np.abs(a)))]
        return axis_angle_to_matrix(np.cross(a, other), np.pi)
    return axis_angle_to_matrix(axis, float(np.arctan2(sin, cos)))


def fit_rotation(source: np.ndarray, target: np.ndarray, prior: float = 1e-3) -> np.ndarray:
    """Rotation R (3, 3) minimising sum ||R source_k - target_k||^2 (Kabsch, no reflection).

    source, target: (K, 3) vectors from a common pivot. `prior` (a fraction of the data's
    scale) pulls directions the data leaves free, such as the twist about a single
    vector or a line of collinear vectors, towards no rotation.
    """
    source = require_shape("source", source, (None, 3))
    target = require_shape("target", target, (len(source), 3))
    covariance = target.T @ source
    scale = float(np.sum(np.linalg.norm(source, axis=1) * np.linalg.norm(target, axis=1)))
    covariance = covariance + prior * max(scale, 1e-12) * np.eye(3)
    u, _, vt = np.linalg.svd(covariance)
    fix = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    return u @ fix @ vt
