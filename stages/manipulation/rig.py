"""The rig: a skeleton over the keypoints (minimum spanning tree) and Gaussian skinning weights.

Edge cost (the issue's "learned adjacency combined with Euclidean distance"):
    cost_ij = ||s_i - s_j|| / (w_ij / max w + adjacency_floor)
Strongly learned pairs are cheap, far pairs are expensive; with a flat adjacency (an
untrained model, or none given) it is the Euclidean minimum spanning tree. The floor
keeps a pair the adjacency ignores finite, so the tree always spans every keypoint.

Skinning weights are per point and per BONE (P, N - 1), a softmax of -d^2 / (2 sigma^2)
over bones, d the distance from the point to the bone's segment: exactly the
normalised Gaussian of the issue, computed in log space so that far points still get
a valid partition of unity instead of 0 / 0.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stages.keypoints.skeleton import maximum_spanning_tree
from stages.manipulation.errors import RigFileError
from stages.manipulation.shapes import check_shape

RIG_FORMAT = "keydiff3d-rig/1"


@dataclass(frozen=True)
class RigConfig:
    """How a rig is built from keypoints."""

    adjacency_floor: float = 0.1
    """Added to the max-normalised learned edge weight in the cost's denominator."""
    root: int | None = None
    """Keypoint the tree hangs from; None: the keypoint nearest the keypoints' centroid
    (the pelvis or chest of a humanoid, the body of a quadruped), so that limbs are leaves."""
    sigma_fraction: float = 0.04
    """Skinning sigma as a fraction of the keypoints' bounding-box diagonal (0.07 m for a
    1.7 m humanoid): small enough that a limb does not drag its neighbour."""

    def __post_init__(self) -> None:
        if self.adjacency_floor <= 0:
            raise ValueError(f"adjacency_floor must be > 0, got {self.adjacency_floor}")
        if self.sigma_fraction <= 0:
            raise ValueError(f"sigma_fraction must be > 0, got {self.sigma_fraction}")


@dataclass(frozen=True, eq=False)
class Rig:
    """A skeleton in the cache's world frame and the width of its skinning Gaussians."""

    joints: np.ndarray
    """(N, 3) rest positions of the keypoints."""
    bones: tuple[tuple[int, int], ...]
    """N - 1 (parent, child) keypoint pairs, breadth-first from the root."""
    root: int
    """The keypoint without a parent."""
    sigma: float
    """Skinning Gaussian's standard deviation, world units."""
    keypoint_names: tuple[str, ...] = ()
    """Optional (N,) names (ground-truth joints); bones are always also named 'parent-child'."""
    notes: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (checkpoint, sample, cost) written to the JSON."""

    def __post_init__(self) -> None:
        joints = check_shape("joints", self.joints, (None, 3))
        n = len(joints)
        if len(self.bones) != n - 1:
            raise RigFileError(f"a rig of {n} keypoints needs {n - 1} bones, got {len(self.bones)}")
        children = [c for _, c in self.bones]
        if sorted(children + [self.root]) != list(range(n)):
            raise RigFileError(f"bones {list(self.bones)} do not form a tree rooted at {self.root}")
        seen = {self.root}
        for parent, child in self.bones:
            if parent not in seen:
                raise RigFileError(f"bone {parent}-{child} comes before a bone ending at {parent}")
            seen.add(child)
        if self.keypoint_names and len(self.keypoint_names) != n:
            raise RigFileError(f"keypoint_names has {len(self.keypoint_names)} names for {n} keypoints")
        if not self.sigma > 0:
            raise RigFileError(f"sigma must be > 0, got {self.sigma}")

    @property
    def bone_names(self) -> list[str]:
        return [bone_name(parent, child) for parent, child in self.bones]

    def parent_bone(self) -> np.ndarray:
        """(N-1,) index of the bone ending at each bone's parent joint, -1 for bones at the root."""
        ending = {child: b for b, (_, child) in enumerate(self.bones)}
        return np.array([ending.get(parent, -1) for parent, _ in self.bones], dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RIG_FORMAT,
            "frame": "cache world frame",
            "root": self.root,
            "joints": self.joints.tolist(),
            "bones": [{"name": bone_name(p, c), "parent": p, "child": c} for p, c in self.bones],
            "keypoint_names": list(self.keypoint_names),
            "skinning": {"kind": "softmax over bones of -d^2 / (2 sigma^2)", "sigma": self.sigma},
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rig:
        if data.get("format") != RIG_FORMAT:
            raise RigFileError(f"not a rig of format {RIG_FORMAT!r} (format {data.get('format')!r})")
        try:
            return cls(
                joints=np.asarray(data["joints"], dtype=np.float64),
                bones=tuple((int(b["parent"]), int(b["child"])) for b in data["bones"]),
                root=int(data["root"]),
                sigma=float(data["skinning"]["sigma"]),
                keypoint_names=tuple(data.get("keypoint_names", ())),
                notes=dict(data.get("notes", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RigFileError(f"rig JSON does not follow the schema ({exc!r})") from exc

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Rig:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError as exc:
            raise RigFileError(f"{path}: no such rig file") from exc
        except (ValueError, RigFileError) as exc:
            raise RigFileError(f"{path}: {exc}") from exc


def bone_name(parent: int, child: int) -> str:
    return f"{parent}-{child}"


def edge_costs(joints: np.ndarray, adjacency: np.ndarray | None, floor: float = 0.1) -> np.ndarray:
    """Symmetric costs (N, N) of joining keypoints (N, 3) given learned weights (N, N) or None."""
    joints = check_shape("joints", joints, (None, 3))
    n = len(joints)
    distances = np.linalg.norm(joints[:, None] - joints[None], axis=-1)
    if adjacency is None:
        return distances
    weights = check_shape("adjacency", adjacency, (n, n))
    weights = 0.5 * (weights + weights.T) * (1.0 - np.eye(n))
    top = weights.max()
    normalised = weights / top if top > 0 else np.ones_like(weights)
    return distances / (normalised + floor)


def length_stability_adjacency(poses: np.ndarray, tolerance: float = 0.05) -> np.ndarray:
    """Edge weights (N, N) in (0, 1] from keypoints seen in many poses (S, N, 3): a rigid link
    keeps its length, so w_ij = exp(-cv_ij / tolerance), cv the coefficient of variation of
    the pair's distance over the poses. An alternative to a learned adjacency (ground truth)."""
    poses = check_shape("poses", poses, (None, None, 3))
    if len(poses) < 2:
        raise ValueError(f"poses must hold at least 2 poses to measure length changes, got {len(poses)}")
    distances = np.linalg.norm(poses[:, :, None] - poses[:, None], axis=-1)
    variation = distances.std(axis=0) / np.maximum(distances.mean(axis=0), 1e-12)
    return np.exp(-variation / tolerance) * (1.0 - np.eye(poses.shape[1]))


def minimum_spanning_tree(costs: np.ndarray) -> list[tuple[int, int]]:
    """The N - 1 edges (i, j), i < j, of the spanning tree of least total cost (N, N).

    Reuses Prim's maximum tree on 1 / cost: a spanning tree depends only on the order of
    the edge costs, and 1 / cost reverses it. Coincident keypoints (cost 0) join first.
    """
    costs = check_shape("costs", costs, (None, None))
    with np.errstate(divide="ignore"):
        inverse = np.where(costs > 0, 1.0 / np.where(costs > 0, costs, 1.0), np.finfo(np.float64).max)
    np.fill_diagonal(inverse, 0.0)
    return maximum_spanning_tree(inverse)


def orient_tree(edges: list[tuple[int, int]], root: int) -> tuple[tuple[int, int], ...]:
    """Undirected tree edges -> (parent, child) bones, breadth-first from `root` (children ascending)."""
    neighbours: dict[int, list[int]] = {}
    for i, j in edges:
        neighbours.setdefault(i, []).append(j)
        neighbours.setdefault(j, []).append(i)
    bones, seen, queue = [], {root}, deque([root])
    while queue:
        parent = queue.popleft()
        for child in sorted(neighbours.get(parent, [])):
            if child not in seen:
                seen.add(child)
                bones.append((parent, child))
                queue.append(child)
    return tuple(bones)


def build_rig(
    joints: np.ndarray,
    adjacency: np.ndarray | None = None,
    config: RigConfig = RigConfig(),
    keypoint_names: tuple[str, ...] = (),
    notes: dict[str, Any] | None = None,
) -> Rig:
    """Rig of keypoints (N, 3) in the world frame, with learned edge weights (N, N) or None."""
    joints = check_shape("joints", joints, (None, 3))
    n = len(joints)
    if n < 2:
        raise ValueError(f"a rig needs at least 2 keypoints, got {n}")
    if config.root is None:
        root = int(np.argmin(np.linalg.norm(joints - joints.mean(axis=0), axis=1)))
    elif not 0 <= config.root < n:
        raise ValueError(f"root must be a keypoint index in [0, {n}), got {config.root}")
    else:
        root = config.root
    bones = orient_tree(minimum_spanning_tree(edge_costs(joints, adjacency, config.adjacency_floor)), root)
    diagonal = float(np.linalg.norm(joints.max(axis=0) - joints.min(axis=0)))
    return Rig(
        joints=joints,
        bones=bones,
        root=root,
        sigma=config.sigma_fraction * max(diagonal, 1e-9),
        keypoint_names=tuple(keypoint_names),
        notes={"adjacency": "learned" if adjacency is not None else "none", **(notes or {})},
    )


def point_segment_distances(points: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Distances (P, N-1) from points (P, 3) to the segments starts (N-1, 3) -> ends (N-1, 3)."""
    points = check_shape("points", points, (None, 3))
    starts = check_shape("starts", starts, (None, 3))
    ends = check_shape("ends", ends, (len(starts), 3))
    direction = ends - starts
    length2 = np.maximum(np.sum(direction**2, axis=1), 1e-24)
    along = np.einsum("pbk,bk->pb", points[:, None] - starts[None], direction) / length2
    closest = starts[None] + np.clip(along, 0.0, 1.0)[..., None] * direction[None]
    return np.linalg.norm(points[:, None] - closest, axis=-1)


def skinning_weights(points: np.ndarray, rig: Rig) -> np.ndarray:
    """Weights (P, N-1) of points (P, 3) on the rig's bones: rows sum to 1."""
    parents = np.array([p for p, _ in rig.bones])
    children = np.array([c for _, c in rig.bones])
    distances = point_segment_distances(points, rig.joints[parents], rig.joints[children])
    logits = -(distances**2) / (2.0 * rig.sigma**2)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)
