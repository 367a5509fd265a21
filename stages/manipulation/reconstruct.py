"""CPU reconstruction of a sample's object: visual hull on a voxel grid, coloured from the views.

The voxel grid spans the cube that every view sees around the origin (where stage one
centres the object). A voxel stays when its centre falls inside the foreground mask of
every view; the surface voxels (an empty face neighbour) become isotropic Gaussians,
each coloured by averaging the views that see it front-most (a per-view depth test
against the splatted surface), weighted by how squarely they face it. With the four
kept views a visual hull is blocky between the views; it reprojects onto their masks
nearly exactly, which is what rigging and the silhouette check need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stages.cameras import project_points
from stages.manipulation.errors import ManipulationError
from stages.manipulation.gaussians import Gaussians
from stages.manipulation.render import render_views
from stages.manipulation.sample import ObjectViews
from stages.manipulation.shapes import check_shape


@dataclass(frozen=True)
class CarvingConfig:
    """Visual-hull reconstruction settings."""

    grid: int | None = None
    """M, voxels per side of the cube; None: 1.5 voxels per image pixel at the origin (192 for
    128-pixel views), so that voxel centres sample even one-pixel-wide parts of the masks."""
    half_extent: float | None = None
    """Half side of the cube, world units; None: the largest the narrowest view frames at the origin."""
    depth_tolerance: float = 1.5
    """Voxel sizes behind the front-most surface that still count as seen by a view."""
    splat_scale: float = 0.5
    """Gaussian sigma (and splat radius) as a fraction of the voxel size: neighbours touch, and
    the splatted hull reprojects onto the masks (silhouette IoU 0.997+ on the synthetic humanoid)."""
    opacity: float = 0.95
    """Opacity given to every Gaussian."""

    def __post_init__(self) -> None:
        if self.grid is not None and self.grid < 4:
            raise ValueError(f"grid must be >= 4, got {self.grid}")
        if self.half_extent is not None and self.half_extent <= 0:
            raise ValueError(f"half_extent must be > 0, got {self.half_extent}")


@dataclass(frozen=True, eq=False)
class Reconstruction:
    """A reconstructed object and how it was made."""

    gaussians: Gaussians
    voxel_size: float
    """World size of one voxel."""
    occupied_voxels: int
    """Voxels inside the hull (the Gaussians are its surface)."""


def framed_half_extent(intrinsics: np.ndarray, world_to_camera: np.ndarray, size: int) -> float:
    """Half side of the cube around the origin that the narrowest view (V, 3, 3), (V, 4, 4) frames."""
    intrinsics = check_shape("intrinsics", intrinsics, (None, 3, 3))
    world_to_camera = check_shape("world_to_camera", world_to_camera, (len(intrinsics), 4, 4))
    origin_depth = world_to_camera[:, 2, 3]
    margin_px = np.minimum.reduce(
        [intrinsics[:, 0, 2], size - intrinsics[:, 0, 2], intrinsics[:, 1, 2], size - intrinsics[:, 1, 2]]
    )
    return float(np.min(origin_depth * margin_px / np.maximum(intrinsics[:, 0, 0], intrinsics[:, 1, 1])))


def auto_grid(half_extent: float, intrinsics: np.ndarray, world_to_camera: np.ndarray, cap: int = 256) -> int:
    """Voxels per side giving 1.5 voxels per pixel at the origin in the finest view (at most `cap`)."""
    pixel = np.min(world_to_camera[:, 2, 3] / np.maximum(intrinsics[:, 0, 0], intrinsics[:, 1, 1]))
    return int(min(cap, np.ceil(1.5 * 2.0 * half_extent / pixel)))


def carve_visual_hull(
    masks: np.ndarray, intrinsics: np.ndarray, world_to_camera: np.ndarray, centres: np.ndarray
) -> np.ndarray:
    """Which voxel centres (P, 3) fall inside the foreground masks (V, H, W) of every view; (P,) bool."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
        raise ManipulationError(f"masks must be (V, H, W) square, got {masks.shape}")
    v, size = masks.shape[0], masks.shape[1]
    intrinsics = check_shape("intrinsics", intrinsics, (v, 3, 3))
    world_to_camera = check_shape("world_to_camera", world_to_camera, (v, 4, 4))
    centres = check_shape("centres", centres, (None, 3))
    keep = np.ones(len(centres), dtype=bool)
    for view in range(v):
        one = slice(view, view + 1)
        uv, depth = project_points(centres[keep], intrinsics[one], world_to_camera[one])
        col, row, depth = np.floor(uv[0, :, 0]), np.floor(uv[0, :, 1]), depth[0]
        # The object is framed whole in every view: outside the image means outside the object.
        inside = (depth > 0) & (col >= 0) & (col < size) & (row >= 0) & (row < size)
        hit = np.zeros(len(depth), dtype=bool)
        hit[inside] = masks[view, row[inside].astype(np.int64), col[inside].astype(np.int64)]
        keep[np.flatnonzero(keep)[~hit]] = False
    return keep


def surface_voxels(occupancy: np.ndarray) -> np.ndarray:
    """Occupied voxels (M, M, M) with at least one empty face neighbour (the grid's outside is empty)."""
    padded = np.pad(occupancy, 1)
    interior = np.ones_like(occupancy)
    for axis in range(3):
        for step in (-1, 1):
            interior &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return occupancy & ~interior


def occupancy_normals(occupancy: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Outward unit normals (P, 3) at voxel indices (P, 3) from the box-smoothed occupancy (M, M, M)."""
    field = np.pad(occupancy.astype(np.float64), 2)
    for axis in range(3):  # a 3-voxel box blur per axis smooths the staircase
        field = (np.roll(field, -1, axis) + field + np.roll(field, 1, axis)) / 3.0
    i, j, k = (indices + 2).T
    gradient = np.stack(
        [
            field[i + 1, j, k] - field[i - 1, j, k],
            field[i, j + 1, k] - field[i, j - 1, k],
            field[i, j, k + 1] - field[i, j, k - 1],
        ],
        axis=1,
    )
    norm = np.linalg.norm(gradient, axis=1, keepdims=True)
    return np.where(norm > 1e-12, -gradient / np.maximum(norm, 1e-12), 0.0)


def colour_points(
    points: np.ndarray, normals: np.ndarray, radius: float, tolerance: float, views: ObjectViews
) -> np.ndarray:
    """Colours (P, 3) in [0, 1] of surface points (P, 3) from the views that see them front-most."""
    size = views.masks.shape[-1]
    renders = render_views(
        points,
        np.zeros_like(points),
        np.full(len(points), radius),
        views.intrinsics,
        views.world_to_camera,
        size,
    )
    total = np.zeros((len(points), 3))
    weight = np.zeros(len(points))
    fallback = np.zeros((len(points), 3))
    fallback_count = np.zeros(len(points))
    uv, depth = project_points(points, views.intrinsics, views.world_to_camera)
    for view, splats in enumerate(renders):
        w2c = views.world_to_camera[view]
        col = np.clip(np.floor(uv[view, :, 0]).astype(np.int64), 0, size - 1)
        row = np.clip(np.floor(uv[view, :, 1]).astype(np.int64), 0, size - 1)
        rgb = views.views[view][:, row, col].T / 255.0
        seen = depth[view] <= splats.depth[row, col] + tolerance
        centre = -w2c[:3, :3].T @ w2c[:3, 3]
        towards = centre[None] - points
        facing = np.einsum("pk,pk->p", normals, towards) / np.linalg.norm(towards, axis=1)
        w = np.where(seen, np.clip(facing, 0.0, None) + 0.05, 0.0)
        total += w[:, None] * rgb
        weight += w
        fallback += rgb
        fallback_count += 1
    colours = np.where(
        weight[:, None] > 0, total / np.maximum(weight, 1e-12)[:, None], fallback / fallback_count[:, None]
    )
    return np.clip(colours, 0.0, 1.0)


def voxel_axis(half_extent: float, m: int) -> np.ndarray:
    """Centres (M,) of M voxels spanning [-half_extent, half_extent] along one axis."""
    voxel = 2.0 * half_extent / m
    return -half_extent + voxel * (np.arange(m) + 0.5)


def carve_grid(views: ObjectViews, axis: np.ndarray) -> np.ndarray:
    """Visual-hull occupancy (M, M, M) bool, [i, j, k] the voxel at (axis[i], axis[j], axis[k]).

    Raises ManipulationError naming the sample when no voxel survives."""
    m = len(axis)
    occupancy = np.zeros((m, m, m), dtype=bool)
    slab = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)
    for i, x in enumerate(axis):  # one x-slab at a time keeps memory at M^2 points
        centres = np.concatenate([np.full((len(slab), 1), x), slab], axis=1)
        hull = carve_visual_hull(views.masks, views.intrinsics, views.world_to_camera, centres)
        occupancy[i] = hull.reshape(m, m)
    if not occupancy.any():
        raise ManipulationError(
            f"sample {views.sample_id}: the visual hull is empty (do the masks of all views show the object?)"
        )
    return occupancy


def reconstruct_visual_hull(
    views: ObjectViews,
    config: CarvingConfig = CarvingConfig(),
    progress: Callable[[str], None] | None = None,
) -> Reconstruction:
    """Gaussians on the visual hull's surface of one sample, in the cache's world frame."""
    size = views.masks.shape[-1]
    half = config.half_extent or framed_half_extent(views.intrinsics, views.world_to_camera, size)
    m = config.grid or auto_grid(half, views.intrinsics, views.world_to_camera)
    voxel = 2.0 * half / m
    axis = voxel_axis(half, m)
    if progress:
        progress(f"carving {m}^3 voxels against {len(views.masks)} masks")
    occupancy = carve_grid(views, axis)
    indices = np.argwhere(surface_voxels(occupancy))
    points = axis[indices]
    normals = occupancy_normals(occupancy, indices)
    if progress:
        progress(f"colouring {len(points)} surface points")
    colours = colour_points(
        points, normals, config.splat_scale * voxel, config.depth_tolerance * voxel, views
    )
    gaussians = Gaussians.from_colours(points, colours, config.splat_scale * voxel, config.opacity, normals)
    return Reconstruction(gaussians, voxel, int(occupancy.sum()))
