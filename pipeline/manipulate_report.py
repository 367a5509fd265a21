"""Pictures of manipulation: orbit renders with the skeleton, before/after sheets, turntables,
and silhouette overlays for the check."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from stages.manipulation.gaussians import Gaussians
from stages.manipulation.render import draw_skeleton, render_views, to_uint8

PREVIEW_FOOTPRINT = 1.6
"""Preview discs are this many sigmas wide, so a surface sampled at one voxel has no holes."""
MIN_PREVIEW_OPACITY = 0.2
"""Gaussians fainter than this are left out of previews."""
MAX_PREVIEW_POINTS = 300_000
"""Previews of larger files draw a fixed random sample of this many Gaussians."""


def render_row(
    gaussians: Gaussians,
    joints: np.ndarray | None,
    bones: Sequence[tuple[int, int]],
    intrinsics: np.ndarray,
    world_to_camera: np.ndarray,
    size: int,
) -> np.ndarray:
    """Views (V, 3, 3), (V, 4, 4) side by side (size, V * size, 3) uint8, skeleton drawn over."""
    # Discs are opaque: faint Gaussians (3DGS floaters) would otherwise cover the object, and a
    # scene-sized file is thinned to a fixed sample so the preview stays fast.
    keep = np.flatnonzero(gaussians.opacities >= MIN_PREVIEW_OPACITY)
    if len(keep) > MAX_PREVIEW_POINTS:
        keep = np.sort(np.random.default_rng(0).choice(keep, MAX_PREVIEW_POINTS, replace=False))
    splats = render_views(
        gaussians.means[keep],
        gaussians.colours[keep],
        PREVIEW_FOOTPRINT * gaussians.scales[keep].max(axis=1),
        intrinsics,
        world_to_camera,
        size,
    )
    images = []
    for view, splat in enumerate(splats):
        image = to_uint8(splat.image)
        if joints is not None:
            image = draw_skeleton(image, joints, bones, intrinsics[view], world_to_camera[view])
        images.append(image)
    return np.concatenate(images, axis=1)


def skinning_colours(weights: np.ndarray) -> np.ndarray:
    """Colours (P, 3) in [0, 1] of points by their skinning weights (P, N-1): a blend of one
    tab20 colour per bone, so that smooth weights show as smooth gradients."""
    palette = np.array([plt.get_cmap("tab20")(b % 20)[:3] for b in range(weights.shape[1])])
    return weights @ palette


def labelled(image: np.ndarray, text: str) -> np.ndarray:
    """Image (H, W, 3) uint8 with a caption in its top-left corner."""
    canvas = Image.fromarray(np.ascontiguousarray(image))
    ImageDraw.Draw(canvas).text((4, 2), text, fill=(0, 0, 0))
    return np.asarray(canvas)


def save_png(image: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(path, optimize=True)
    return path


def silhouette_overlay(predicted: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: grey where both masks agree, red where only the reference (missed),
    blue where only the prediction (extra), white elsewhere."""
    image = np.full((*predicted.shape, 3), 255, dtype=np.uint8)
    image[predicted & reference] = (120, 120, 120)
    image[reference & ~predicted] = (220, 40, 40)
    image[predicted & ~reference] = (40, 90, 220)
    return image


def overlay_sheet(
    rows: dict[str, np.ndarray], ious: dict[str, np.ndarray], reference: np.ndarray
) -> np.ndarray:
    """One row per variant of masks (V, H, W) against reference masks (V, H, W), captioned with IoUs."""
    lines = []
    for name, masks in rows.items():
        tiles = [silhouette_overlay(p, r) for p, r in zip(masks, reference, strict=True)]
        lines.append(labelled(np.concatenate(tiles, axis=1), f"{name}: IoU {np.mean(ious[name]):.3f}"))
    return np.concatenate(lines, axis=0)
