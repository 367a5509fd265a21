"""Prepare an annotated photo for SV3D and carry its ground truth into the cache's arrays.

Photos from datasets are not objects on white, so the plain-image rule (foreground
from the alpha channel or from the difference to the border colour) does not apply.
Instead:
- The crop is the square of `square_around` centred on the annotated box (or, without
  a box, the mask's extent, or else the whole image), so the object ends centred with
  its longer side filling `object_fraction` of the square, like plain images.
- Background, 'mask': where the dataset has a foreground mask (Human3.6M masks/, CUB
  segmentations/, StanfordExtra 'seg'), everything outside it is made white, as SV3D
  expects, and the mask is the input mask.
- Background, 'photo': without a mask the photo is kept as it is inside the square
  (only the parts of the square beyond the image are white), and the input mask is the
  annotated box. SV3D was trained on objects on white, so such views are worse; the
  choice is recorded in the store's source record ('background').
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cache_schema import GroundTruthSpec
from stages.datasets.annotations import SourceAnnotation
from stages.datasets.coco_rle import decode_rle
from stages.errors import ImageLoadError, StageError
from stages.images import PreparedImage, crop_to_square, read_rgba, source_to_prepared, square_around

BACKGROUND_MASK = "mask"
BACKGROUND_PHOTO = "photo"
MASK_THRESHOLD = 128
"""Grey level from which a mask pixel is foreground (CUB's soft masks: most annotators agree)."""


def annotation_mask(
    annotation: SourceAnnotation, width: int, height: int, max_pixels: int
) -> np.ndarray | None:
    """The dataset's foreground mask (H, W) bool for a source of that size, or None."""
    if annotation.mask_path is not None:
        rgba, _ = read_rgba(annotation.mask_path, max_pixels)
        mask = rgba[..., :3].max(axis=-1) >= MASK_THRESHOLD
        where = str(annotation.mask_path)
    elif annotation.mask_rle is not None:
        mask = decode_rle(annotation.mask_rle, height, width)
        where = "the RLE mask"
    else:
        return None
    if mask.shape != (height, width):
        raise ImageLoadError(f"{where}: mask is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}")
    if not mask.any():
        raise ImageLoadError(f"{where}: the mask has no foreground")
    return mask


def prepare_annotated_image(
    path: str | Path, annotation: SourceAnnotation, size: int, object_fraction: float, max_pixels: int
) -> PreparedImage:
    """Crop an annotated photo to the square around its box and resize it to `size`.

    Raises ImageLoadError naming the file when the image or its mask cannot be read.
    """
    rgba, _ = read_rgba(path, max_pixels)
    rgb = rgba[..., :3]
    height, width = rgb.shape[:2]
    try:
        mask = annotation_mask(annotation, width, height, max_pixels)
    except ImageLoadError as exc:
        raise ImageLoadError(f"{path}: {exc}") from exc
    if annotation.box is not None:
        box = annotation.box
    elif mask is not None:
        ys, xs = np.nonzero(mask)
        box = (
            float(xs.min()),
            float(ys.min()),
            float(xs.max() + 1 - xs.min()),
            float(ys.max() + 1 - ys.min()),
        )
    else:
        box = (0.0, 0.0, float(width), float(height))
    if mask is None:
        mask = box_mask(box, width, height)
        if not mask.any():
            raise ImageLoadError(f"{path}: the box {box} lies outside the {width}x{height} image")
    else:
        rgb = np.where(mask[..., None], rgb, np.uint8(255))
    crop_box = square_around(*box, object_fraction=object_fraction)
    return crop_to_square(rgb, mask, crop_box, size, max_pixels)


def box_mask(box: tuple[float, float, float, float], width: int, height: int) -> np.ndarray:
    """(H, W) bool: the pixels whose centres lie inside the box (x, y, w, h)."""
    x, y, w, h = box
    cols = np.arange(width) + 0.5
    rows = np.arange(height) + 0.5
    inside_x = (cols >= x) & (cols < x + w)
    inside_y = (rows >= y) & (rows < y + h)
    return inside_y[:, None] & inside_x[None, :]


def ground_truth_rows(
    annotation: SourceAnnotation, prepared: PreparedImage, num_views: int, spec: GroundTruthSpec
) -> dict[str, np.ndarray]:
    """The ground-truth arrays of one sample (no sample axis) for a store laid out by `spec`.

    joints_3d (J, 3) as the annotation gives them. joints_2d (K, J, 2) and
    joints_2d_visible (K, J): view 0 is the prepared input image, mapped from source
    pixels through the same crop and resize as the image; a joint is visible there when
    the dataset says so and it lands inside the image. The generated views have no 2D
    ground truth: visible 0 and coordinates 0. Invisible joints get coordinates 0.
    """
    rows: dict[str, np.ndarray] = {}
    joints = spec.num_joints
    if spec.has_3d:
        if annotation.joints_3d is None or annotation.joints_3d.shape != (joints, 3):
            raise StageError(
                f"the store expects joints_3d ({joints}, 3), annotation gives {_shape(annotation.joints_3d)}"
            )
        rows["ground_truth/joints_3d"] = annotation.joints_3d.astype(np.float32)
    if spec.has_2d:
        if annotation.joints_2d is None or annotation.joints_2d.shape != (joints, 2):
            raise StageError(
                f"the store expects joints_2d ({joints}, 2), annotation gives {_shape(annotation.joints_2d)}"
            )
        size = prepared.image.shape[-1]
        uv = source_to_prepared(annotation.joints_2d, prepared.crop_box, size)
        assert annotation.visible is not None  # given together with joints_2d
        visible = annotation.visible & np.all((uv >= 0) & (uv < size), axis=-1)
        joints_2d = np.zeros((num_views, joints, 2), dtype=np.float32)
        joints_2d[0] = np.where(visible[:, None], uv, 0.0)
        visible_2d = np.zeros((num_views, joints), dtype=np.uint8)
        visible_2d[0] = visible
        rows["ground_truth/joints_2d"] = joints_2d
        rows["ground_truth/joints_2d_visible"] = visible_2d
    return rows


def _shape(array: np.ndarray | None) -> str:
    return "none" if array is None else str(array.shape)
