"""What a dataset knows about one image, and the pixel convention every reader converts to.

Pixels: the cache's convention (stages/cameras.py): continuous coordinates with the
image's top-left CORNER at (0, 0), so the centre of pixel column j is x = j + 0.5.
Dataset files give points in pixel-INDEX coordinates (the centre of pixel column j is
x = j: OpenCV, COCO keypoints, CUB part locations, Human3.6M's camera centres), so
readers add `INDEX_TO_CORNER` to points. Boxes (x, y, w, h) are read as the corner of
their top-left pixel and their extent, so they are used as given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDEX_TO_CORNER = 0.5
"""Added to a dataset's pixel-index point coordinates to get the cache's corner convention."""


@dataclass(frozen=True, eq=False)
class SourceAnnotation:
    """Ground truth and object location of one source image (every field optional).

    eq=False: annotations compare by identity, because numpy arrays have no single
    truth value; the arrays are read-only copies, so the value is frozen all the same.
    """

    joints_3d: np.ndarray | None = None
    """(J, 3) float64 joints in the INPUT camera's frame (OpenCV axes: x right, y down,
    z forward), metres."""
    joints_2d: np.ndarray | None = None
    """(J, 2) float64 joints in source-image pixels, cache (corner) convention."""
    visible: np.ndarray | None = None
    """(J,) bool: the 2D joint is annotated and visible. Given exactly when joints_2d is."""
    box: tuple[float, float, float, float] | None = None
    """x, y, w, h of the object in source pixels; stage one crops a square around it."""
    mask_path: Path | None = None
    """Foreground mask image of the source's size (grey level >= 128 is the object)."""
    mask_rle: str | None = None
    """Foreground mask as COCO compressed RLE counts, of the source's size (StanfordExtra)."""

    def __post_init__(self) -> None:
        joints_3d = _frozen_array("joints_3d", self.joints_3d, (None, 3), np.float64)
        joints_2d = _frozen_array("joints_2d", self.joints_2d, (None, 2), np.float64)
        visible = _frozen_array("visible", self.visible, (None,), np.bool_)
        if (joints_2d is None) != (visible is None):
            raise ValueError("joints_2d and visible must be given together")
        if joints_2d is not None and visible is not None and len(visible) != len(joints_2d):
            raise ValueError(f"visible must be ({len(joints_2d)},) like joints_2d, got {visible.shape}")
        if joints_3d is not None and joints_2d is not None and len(joints_3d) != len(joints_2d):
            raise ValueError(f"joints_3d has {len(joints_3d)} joints, joints_2d {len(joints_2d)}")
        if self.box is not None:
            box = tuple(float(v) for v in self.box)
            if len(box) != 4 or not (box[2] > 0 and box[3] > 0) or not np.all(np.isfinite(box)):
                raise ValueError(f"box must be (x, y, w, h) with w, h > 0, got {self.box}")
            object.__setattr__(self, "box", box)
        if self.mask_path is not None and self.mask_rle is not None:
            raise ValueError("give mask_path or mask_rle, not both")
        object.__setattr__(self, "joints_3d", joints_3d)
        object.__setattr__(self, "joints_2d", joints_2d)
        object.__setattr__(self, "visible", visible)

    @property
    def num_joints(self) -> int | None:
        for joints in (self.joints_2d, self.joints_3d):
            if joints is not None:
                return len(joints)
        return None

    @property
    def has_mask(self) -> bool:
        return self.mask_path is not None or self.mask_rle is not None


def _frozen_array(
    name: str, value: np.ndarray | None, shape: tuple[int | None, ...], dtype: type
) -> np.ndarray | None:
    """A read-only copy of `value` with the expected shape (None: any length)."""
    if value is None:
        return None
    array: np.ndarray = np.array(value, dtype=dtype)
    if array.ndim != len(shape) or any(
        n is not None and n != m for n, m in zip(shape, array.shape, strict=True)
    ):
        expected = (
            "(" + ", ".join("J" if n is None else str(n) for n in shape) + ("," if len(shape) == 1 else "")
        )
        raise ValueError(f"{name} must be {expected + ')'}, got {array.shape}")
    if array.dtype != np.bool_ and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has non-finite values")
    array.flags.writeable = False
    return array


def box_around_points(
    xy: np.ndarray, visible: np.ndarray, margin: float, width: int, height: int
) -> tuple[float, float, float, float] | None:
    """Tight box of the visible points, enlarged on every side, clamped to the image.

    xy: (J, 2) pixels (corner convention); visible: (J,) bool. Each side moves out by
    `margin` times the box's longer side. Returns (x, y, w, h), or None when no visible
    point lies inside the image.
    """
    xy = np.asarray(xy, dtype=np.float64)
    visible = np.asarray(visible, dtype=bool)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"xy must be (J, 2), got {xy.shape}")
    if visible.shape != (len(xy),):
        raise ValueError(f"visible must be ({len(xy)},), got {visible.shape}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    inside = visible & np.all((xy >= 0) & (xy <= np.array([width, height])), axis=-1)
    if not inside.any():
        return None
    lo, hi = xy[inside].min(axis=0), xy[inside].max(axis=0)
    pad = margin * float(max(hi - lo))
    lo = np.maximum(lo - pad, 0.0)
    hi = np.minimum(hi + pad, np.array([width, height], dtype=np.float64))
    # A single visible point still needs an area to crop around.
    hi = np.maximum(hi, np.minimum(lo + 1.0, np.array([width, height], dtype=np.float64)))
    lo = np.minimum(lo, hi - 1.0)
    return float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])
