"""A small CPU splat renderer: points drawn as depth-tested discs, for previews and silhouettes
(and `triangle_mask`, a mesh's silhouette).

Not a Gaussian rasteriser: each Gaussian is one opaque disc of radius `footprint` x its
largest scale, the nearest disc wins a pixel. That is what a silhouette needs and is
enough for before/after previews.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from stages.cameras import orbit_cameras, project_points
from stages.manipulation.shapes import check_shape


@dataclass(frozen=True, eq=False)
class Splats:
    """One rendered view."""

    image: np.ndarray
    """(H, W, 3) float in [0, 1] on the background colour."""
    mask: np.ndarray
    """(H, W) bool, True where any disc lands."""
    depth: np.ndarray
    """(H, W) camera depth of the nearest disc, +inf elsewhere."""


def splat_points(
    points: np.ndarray,
    colours: np.ndarray,
    radii: np.ndarray,
    intrinsics: np.ndarray,
    world_to_camera: np.ndarray,
    size: int,
    background: float = 1.0,
    max_radius_px: int = 6,
) -> Splats:
    """Render points (P, 3) with colours (P, 3) as discs of world radii (P,) into one
    square view of `size` pixels with intrinsics (3, 3) and world_to_camera (4, 4)."""
    points = check_shape("points", points, (None, 3))
    p = len(points)
    colours = check_shape("colours", colours, (p, 3))
    radii = check_shape("radii", radii, (p,))
    intrinsics = check_shape("intrinsics", intrinsics, (3, 3))
    world_to_camera = check_shape("world_to_camera", world_to_camera, (4, 4))
    uv, depth = project_points(points, intrinsics[None], world_to_camera[None])
    uv, depth = uv[0], depth[0]
    front = depth > 1e-6
    # Half a pixel at least, so a point covers the pixel it falls in.
    pixel_radius = np.clip(intrinsics[0, 0] * radii / np.where(front, depth, 1.0), 0.5, max_radius_px)
    column, row = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
    reach = int(np.ceil(pixel_radius[front].max())) if front.any() else 0
    fragments_pixel, fragments_point = [], []
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            # Pixel centre to the point's projection, so that discs are round at any offset.
            cx = column + dx + 0.5 - uv[:, 0]
            cy = row + dy + 0.5 - uv[:, 1]
            keep = front & (cx * cx + cy * cy <= pixel_radius**2)
            x, y = column[keep] + dx, row[keep] + dy
            inside = (x >= 0) & (x < size) & (y >= 0) & (y < size)
            fragments_pixel.append((y * size + x)[inside])
            fragments_point.append(np.flatnonzero(keep)[inside])
    pixel = np.concatenate(fragments_pixel)
    point = np.concatenate(fragments_point)
    image = np.full((size * size, 3), float(background))
    depth_buffer = np.full(size * size, np.inf)
    if len(pixel):
        order = np.lexsort((depth[point], pixel))
        pixel, point = pixel[order], point[order]
        first = np.ones(len(pixel), dtype=bool)
        first[1:] = pixel[1:] != pixel[:-1]
        image[pixel[first]] = colours[point[first]]
        depth_buffer[pixel[first]] = depth[point[first]]
    return Splats(
        image.reshape(size, size, 3),
        np.isfinite(depth_buffer).reshape(size, size),
        depth_buffer.reshape(size, size),
    )


def triangle_mask(
    vertices: np.ndarray, faces: np.ndarray, intrinsics: np.ndarray, world_to_camera: np.ndarray, size: int
) -> np.ndarray:
    """Silhouette (size, size) bool of a triangle mesh, vertices (V, 3) and faces (F, 3), in one
    square view: a pixel is in when its centre is inside (or on the edge of) a projected
    triangle of either winding, the coverage rule of a GPU rasteriser. Triangles with a
    vertex behind the camera are skipped (an object in front of the camera has none)."""
    vertices = check_shape("vertices", vertices, (None, 3))
    faces = check_shape("faces", faces, (None, 3)).astype(np.int64)
    uv, depth = project_points(vertices, intrinsics[None], world_to_camera[None])
    corners = uv[0][faces[(depth[0][faces] > 1e-9).all(axis=1)]]  # (F, 3, 2)
    low = np.clip(np.ceil(corners.min(axis=1) - 0.5), 0, size).astype(np.int64)
    high = np.clip(np.floor(corners.max(axis=1) - 0.5), -1, size - 1).astype(np.int64)
    mask = np.zeros((size, size), dtype=bool)
    for (a, b, c), (x0, y0), (x1, y1) in zip(corners, low, high, strict=True):
        area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        if x1 < x0 or y1 < y0 or abs(area) < 1e-12:
            continue
        x = np.arange(x0, x1 + 1)[None, :] + 0.5
        y = np.arange(y0, y1 + 1)[:, None] + 0.5
        # Edge functions scaled by the area's sign: all >= 0 inside, whatever the winding.
        sign = np.sign(area)
        inside = sign * ((b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0])) >= 0
        inside &= sign * ((c[0] - b[0]) * (y - b[1]) - (c[1] - b[1]) * (x - b[0])) >= 0
        inside &= sign * ((a[0] - c[0]) * (y - c[1]) - (a[1] - c[1]) * (x - c[0])) >= 0
        mask[y0 : y1 + 1, x0 : x1 + 1] |= inside
    return mask


def render_views(
    points: np.ndarray,
    colours: np.ndarray,
    radii: np.ndarray,
    intrinsics: np.ndarray,
    world_to_camera: np.ndarray,
    size: int,
    background: float = 1.0,
) -> list[Splats]:
    """Every view of intrinsics (V, 3, 3) and world_to_camera (V, 4, 4)."""
    intrinsics = check_shape("intrinsics", intrinsics, (None, 3, 3))
    world_to_camera = check_shape("world_to_camera", world_to_camera, (len(intrinsics), 4, 4))
    return [
        splat_points(points, colours, radii, k, w, size, background)
        for k, w in zip(intrinsics, world_to_camera, strict=True)
    ]


def silhouette_iou(predicted: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Intersection over union per view of boolean masks (V, H, W) and (V, H, W). Returns (V,)."""
    predicted = np.asarray(predicted, dtype=bool)
    reference = np.asarray(reference, dtype=bool)
    if predicted.shape != reference.shape or predicted.ndim != 3:
        raise ValueError(f"masks must both be (V, H, W), got {predicted.shape} and {reference.shape}")
    union = np.sum(predicted | reference, axis=(1, 2))
    return np.sum(predicted & reference, axis=(1, 2)) / np.maximum(union, 1)


def preview_cameras(
    points: np.ndarray,
    size: int,
    num_views: int = 4,
    elevation_deg: float = 10.0,
    fov_deg: float = 33.8,
    radius: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Orbit cameras (V, 3, 3), (V, 4, 4) around the origin, azimuths from 0 in equal steps.

    radius None: far enough that every point (P, 3) stays in view."""
    points = check_shape("points", points, (None, 3))
    if radius is None:
        reach = float(np.max(np.linalg.norm(points, axis=1))) if len(points) else 1.0
        radius = 1.15 * reach / np.sin(np.deg2rad(fov_deg) / 2.0)
    azimuths = np.arange(num_views) * 360.0 / num_views
    return orbit_cameras(np.full(num_views, elevation_deg), azimuths, radius, fov_deg, size)


def draw_skeleton(
    image: np.ndarray,
    joints: np.ndarray,
    bones: Sequence[tuple[int, int]],
    intrinsics: np.ndarray,
    world_to_camera: np.ndarray,
    colour: tuple[int, int, int] = (220, 20, 60),
) -> np.ndarray:
    """Image (H, W, 3) uint8 with the skeleton joints (N, 3) and bones drawn over it."""
    uv, depth = project_points(
        check_shape("joints", joints, (None, 3)), intrinsics[None], world_to_camera[None]
    )
    canvas = Image.fromarray(np.ascontiguousarray(image))
    pen = ImageDraw.Draw(canvas)
    width = max(1, image.shape[0] // 160)
    for parent, child in bones:
        if depth[0, parent] > 0 and depth[0, child] > 0:
            pen.line([tuple(uv[0, parent]), tuple(uv[0, child])], fill=colour, width=width)
    for u, v in uv[0][depth[0] > 0]:
        r = 1.5 * width + 0.5
        pen.ellipse([u - r, v - r, u + r, v + r], fill=(255, 255, 255), outline=colour)
    return np.asarray(canvas)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8."""
    return np.clip(np.round(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)


def save_gif(frames: Sequence[np.ndarray], path: str | Path, seconds_per_frame: float = 0.08) -> Path:
    """Frames (H, W, 3) uint8 as a looping GIF."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(
        path,
        save_all=True,
        append_images=images[1:],
        duration=int(1000 * seconds_per_frame),
        loop=0,
        optimize=True,
    )
    return path
