"""Pinhole cameras on an orbit around the origin: pure numpy functions.

Conventions (shared by every backend, the cache and stage two):
- World: right-handed, +z up, object at the origin. A camera at elevation e and
  azimuth a is at radius * (cos e cos a, cos e sin a, sin e) and looks at the origin.
- Camera (OpenCV): +x right, +y down, +z forward. `world_to_camera` maps homogeneous
  world points to camera points.
- Pixels: continuous coordinates with the top-left corner of the image at (0, 0), so
  the centre of pixel (row i, column j) is (u, v) = (j + 0.5, i + 0.5) and the
  principal point of a W x H image is (W / 2, H / 2).
"""

from __future__ import annotations

import numpy as np


def orbit_camera_centers(elevations_deg: np.ndarray, azimuths_deg: np.ndarray, radius: float) -> np.ndarray:
    """Camera centres in world coordinates.

    elevations_deg, azimuths_deg: (V,). Returns (V, 3).
    """
    el = np.deg2rad(np.asarray(elevations_deg, dtype=np.float64))
    az = np.deg2rad(np.asarray(azimuths_deg, dtype=np.float64))
    if el.shape != az.shape or el.ndim != 1:
        raise ValueError(f"elevations {el.shape} and azimuths {az.shape} must both be (V,)")
    return radius * np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1)


def look_at_world_to_camera(
    centers: np.ndarray, target: np.ndarray | None = None, up: np.ndarray | None = None
) -> np.ndarray:
    """OpenCV world-to-camera matrices of cameras at `centers` looking at `target`.

    centers: (V, 3); target: (3,) default origin; up: (3,) default +z. Returns (V, 4, 4).
    """
    centers = np.asarray(centers, dtype=np.float64)
    if centers.ndim != 2 or centers.shape[1] != 3:
        raise ValueError(f"centers must be (V, 3), got {centers.shape}")
    target = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    up = np.array([0.0, 0.0, 1.0]) if up is None else np.asarray(up, dtype=np.float64)
    forward = target[None] - centers
    forward /= np.linalg.norm(forward, axis=-1, keepdims=True)
    right = np.cross(forward, up[None])
    norm = np.linalg.norm(right, axis=-1, keepdims=True)
    if np.any(norm < 1e-9):
        raise ValueError("a camera looks straight along the up vector (elevation +-90 deg)")
    right /= norm
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward], axis=1)  # rows: camera axes in world
    out = np.zeros((len(centers), 4, 4))
    out[:, :3, :3] = rotation
    out[:, :3, 3] = -np.einsum("vij,vj->vi", rotation, centers)
    out[:, 3, 3] = 1.0
    return out


def intrinsics_from_fov(fov_deg: float, width: int, height: int | None = None) -> np.ndarray:
    """Pinhole intrinsics with the field of view spanning the image width. Returns (3, 3)."""
    height = width if height is None else height
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    focal = 0.5 * width / np.tan(np.deg2rad(fov_deg) / 2.0)
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def orbit_cameras(
    elevations_deg: np.ndarray,
    azimuths_deg: np.ndarray,
    radius: float,
    fov_deg: float,
    image_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Intrinsics (V, 3, 3) and world-to-camera (V, 4, 4) of orbit views of a square image."""
    centers = orbit_camera_centers(elevations_deg, azimuths_deg, radius)
    extrinsics = look_at_world_to_camera(centers)
    intrinsics = np.broadcast_to(intrinsics_from_fov(fov_deg, image_size), (len(centers), 3, 3)).copy()
    return intrinsics, extrinsics


def project_points(
    points: np.ndarray, intrinsics: np.ndarray, world_to_camera: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Project world points into every view.

    points: (N, 3); intrinsics: (V, 3, 3); world_to_camera: (V, 4, 4).
    Returns pixel coordinates (V, N, 2) and camera depths (V, N).
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got {points.shape}")
    if intrinsics.shape[-2:] != (3, 3) or world_to_camera.shape[-2:] != (4, 4):
        raise ValueError(
            f"intrinsics must be (V, 3, 3) and world_to_camera (V, 4, 4), got "
            f"{intrinsics.shape} and {world_to_camera.shape}"
        )
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1)
    cam = np.einsum("vij,nj->vni", world_to_camera[:, :3, :], homogeneous)
    depth = cam[..., 2]
    pix = np.einsum("vij,vnj->vni", intrinsics, cam)
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = pix[..., :2] / pix[..., 2:3]
    return uv, depth
