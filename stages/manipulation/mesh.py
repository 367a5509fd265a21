"""A triangle mesh of the visual hull: marching cubes on a supersampled carving, coloured from the views.

The hull is carved exactly as `reconstruct` carves it (same cube, same per-voxel mask
test), but at S times a coarse grid's resolution, and each coarse voxel keeps the
fraction of its S^3 fine voxels inside the hull. Marching cubes at level 0.5 on that
fraction puts the surface between coarse voxel centres with sub-voxel accuracy, so a
coarse grid (about 4,000 triangles, which viewers and Blender handle without a
decimation step) still follows the silhouettes; carving at the coarse grid directly
would staircase and drop parts thinner than a coarse voxel. Vertex colours come from
the views that see a vertex front-most, as `reconstruct` colours its Gaussians.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from skimage.measure import marching_cubes

from stages.manipulation.reconstruct import (
    CarvingConfig,
    auto_grid,
    carve_grid,
    colour_points,
    framed_half_extent,
    voxel_axis,
)
from stages.manipulation.sample import ObjectViews
from stages.manipulation.shapes import check_shape


@dataclass(frozen=True)
class MeshConfig:
    """How the visual hull becomes a mesh."""

    voxels: int = 64
    """Coarse grid, voxels per side of the carving cube: sets the triangle count (a 128-pixel
    synthetic humanoid: 2,046 triangles at 48, 3,984 at 64, 9,362 at 96)."""
    supersample: int | None = None
    """Fine voxels per coarse voxel along each axis; None: enough to reach the carving
    resolution of `reconstruct` (1.5 voxels per image pixel)."""
    half_extent: float | None = None
    """Half side of the cube, world units; None: as `reconstruct` (what every view frames)."""

    def __post_init__(self) -> None:
        if self.voxels < 4:
            raise ValueError(f"voxels must be >= 4, got {self.voxels}")
        if self.supersample is not None and self.supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {self.supersample}")
        if self.half_extent is not None and self.half_extent <= 0:
            raise ValueError(f"half_extent must be > 0, got {self.half_extent}")


@dataclass(frozen=True, eq=False)
class Mesh:
    """A triangle mesh in the cache's world frame, faces counter-clockwise seen from outside."""

    vertices: np.ndarray
    """(V, 3)."""
    faces: np.ndarray
    """(F, 3) int vertex indices."""
    normals: np.ndarray
    """(V, 3) unit outward normals."""
    colours: np.ndarray
    """(V, 3) RGB in [0, 1]."""


def hull_fraction(views: ObjectViews, half_extent: float, voxels: int, supersample: int) -> np.ndarray:
    """Fraction (M, M, M) in [0, 1] of each coarse voxel inside the visual hull, M = voxels."""
    fine = carve_grid(views, voxel_axis(half_extent, voxels * supersample))
    blocks = fine.reshape(voxels, supersample, voxels, supersample, voxels, supersample)
    return blocks.mean(axis=(1, 3, 5))


def extract_surface(fraction: np.ndarray, half_extent: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) and outward counter-clockwise faces (F, 3) of the level 0.5 of a
    fraction grid (M, M, M) whose voxels span [-half_extent, half_extent]^3."""
    m = fraction.shape[0]
    voxel = 2.0 * half_extent / m
    # Zero padding closes the surface where the hull touches the cube's sides.
    vertices, faces, _, _ = marching_cubes(np.pad(fraction, 1), level=0.5)
    vertices = -half_extent + voxel * (vertices - 1.0 + 0.5)
    faces = faces.astype(np.int64)
    if signed_volume(vertices, faces) < 0:  # orientation is fixed here, not trusted to the library
        faces = faces[:, ::-1].copy()
    return vertices, faces


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Volume enclosed by a closed triangle mesh (V, 3), (F, 3): positive when faces are
    counter-clockwise seen from outside."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    return float(np.einsum("fk,fk->f", a, np.cross(b, c)).sum() / 6.0)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit normals (V, 3): the area-weighted sum of the adjacent faces' normals."""
    vertices = check_shape("vertices", vertices, (None, 3))
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    face = np.cross(b - a, c - a)  # length = twice the area: area weighting for free
    normals = np.zeros_like(vertices)
    for i in range(3):
        np.add.at(normals, faces[:, i], face)
    norm = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.where(norm > 1e-20, normals / np.maximum(norm, 1e-20), np.array([0.0, 0.0, 1.0]))


def hull_mesh(
    views: ObjectViews,
    config: MeshConfig = MeshConfig(),
    progress: Callable[[str], None] | None = None,
) -> Mesh:
    """Coloured triangle mesh of one sample's visual hull, in the cache's world frame."""
    size = views.masks.shape[-1]
    half = config.half_extent or framed_half_extent(views.intrinsics, views.world_to_camera, size)
    supersample = config.supersample or max(
        1, int(np.ceil(auto_grid(half, views.intrinsics, views.world_to_camera) / config.voxels))
    )
    if progress:
        progress(f"carving {config.voxels * supersample}^3 voxels, meshing at {config.voxels}^3")
    vertices, faces = extract_surface(hull_fraction(views, half, config.voxels, supersample), half)
    normals = vertex_normals(vertices, faces)
    voxel = 2.0 * half / config.voxels
    carving = CarvingConfig()
    colours = colour_points(
        vertices, normals, carving.splat_scale * voxel, carving.depth_tolerance * voxel, views
    )
    return Mesh(vertices, faces, normals, colours)
