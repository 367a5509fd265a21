"""Read input images of any common mode and prepare them the way SV3D expects.

Preparation: foreground mask (alpha, or the difference from a plain background),
background made white, object centred in a square whose side is the bounding box's
longer side divided by `object_fraction`, resized to the model resolution. The square
(`crop_box`) is kept so results map back to the source pixels.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stages.errors import ImageLoadError
from stages.folder_walk import missing_file_reason

SUPPORTED_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class LoadedImage:
    """An image in RGB on white with its foreground mask."""

    rgb: np.ndarray
    """(H, W, 3) uint8, background white."""
    mask: np.ndarray
    """(H, W) bool foreground."""
    mode: str
    """PIL mode the file was stored in (for the record)."""


@dataclass(frozen=True)
class PreparedImage:
    """The model-ready square image and how it maps back to the source."""

    image: np.ndarray
    """(3, S, S) uint8 RGB on white."""
    mask: np.ndarray
    """(S, S) uint8, 1 = foreground."""
    crop_box: np.ndarray
    """(3,) float64: x0, y0, side of the square in source pixels; a point (u, v) of the
    prepared image is (x0 + u * side / S, y0 + v * side / S) in the source."""
    source_size: np.ndarray
    """(2,) int32: source width and height."""


def load_image(path: str | Path, background_threshold: int, max_pixels: int) -> LoadedImage:
    """Decode `path` into RGB on white plus a mask; raise ImageLoadError naming the file."""
    path = Path(path)
    rgba, mode = read_rgba(path, max_pixels)
    alpha = rgba[..., 3]
    color = rgba[..., :3].astype(np.float32)
    if alpha.min() < 255:
        mask = alpha >= 128
        a = alpha[..., None].astype(np.float32) / 255.0
        rgb = color * a + 255.0 * (1.0 - a)
    else:
        mask = background_mask(rgba[..., :3], background_threshold)
        rgb = np.where(mask[..., None], color, 255.0)
    if not mask.any():
        raise ImageLoadError(f"{path}: no foreground found (empty alpha or plain image)")
    return LoadedImage(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), mask, mode)


def read_rgba(path: str | Path, max_pixels: int) -> tuple[np.ndarray, str]:
    """Decode any common image file into (H, W, 4) uint8 RGBA and the PIL mode it was stored in.

    Raises ImageLoadError naming the file for a missing, empty, oversized or corrupt file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"{path}: {missing_file_reason(path)}")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{path}: empty file (0 bytes)")
    too_big = f"exceeds max_image_pixels = {max_pixels / 1e6:.0f} MP"
    try:
        with warnings.catch_warnings(), _pil_pixel_limit(max_pixels):
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageLoadError(
                        f"{path}: {width}x{height} = {width * height / 1e6:.0f} MP {too_big}"
                    )
                img.load()
                img = ImageOps.exif_transpose(img)
                mode = img.mode
                rgba = _to_rgba(img)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"{path}: {too_big} ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(f"{path}: not a readable image ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{path}: corrupt or truncated image ({exc})") from exc
    return rgba, mode


def image_format(path: str | Path) -> str | None:
    """The format PIL recognises in the file's header ('PNG', 'JPEG', 'TIFF', ...), or None
    for a file that is not an image. Only the header is read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return img.format or "image"
    except Image.DecompressionBombError:
        return "image"  # an image, too large to decode: load_image names that per sample
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


@contextmanager
def _pil_pixel_limit(max_pixels: int) -> Iterator[None]:
    """PIL's decompression-bomb limit set to `max_pixels` for the block, then restored.

    PIL refuses images over its own MAX_IMAGE_PIXELS (89.5 MP) before our check runs, so
    without this a larger --max-image-pixels had no effect. Stage one decodes in one
    thread per process, so the module-level setting is not shared with another decode.
    """
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _to_rgba(img: Image.Image) -> np.ndarray:
    """(H, W, 4) uint8 from any PIL mode; 16-bit and float greys are rescaled, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or grey.max() > 255 else 255.0
        if img.mode == "F":
            top = max(float(grey.max()), 1.0)
        grey8 = np.clip(grey / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.dstack([grey8, grey8, grey8, np.full_like(grey8, 255)])
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return np.asarray(img.convert("RGBA"), dtype=np.uint8)


def background_mask(rgb: np.ndarray, threshold: int) -> np.ndarray:
    """Foreground of an image on a plain background (the median colour of its border).

    rgb: (H, W, 3) uint8. Returns (H, W) bool.
    """
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.int16)
    background = np.median(border, axis=0)
    diff = np.abs(rgb.astype(np.int16) - background[None, None]).max(axis=-1)
    return _majority3(diff > threshold)


def white_background_mask(view: np.ndarray, threshold: int) -> np.ndarray:
    """Foreground of a generated view on white. view: (3, H, W) uint8 -> (H, W) uint8."""
    darkness = 255 - view.astype(np.int16).min(axis=0)
    return _majority3(darkness > threshold).astype(np.uint8)


def _majority3(mask: np.ndarray) -> np.ndarray:
    """3x3 majority vote: drops isolated pixels and fills pinholes."""
    padded = np.pad(mask.astype(np.uint8), 1, mode="edge")
    h, w = mask.shape
    votes = sum(padded[i : i + h, j : j + w] for i in range(3) for j in range(3))
    return votes >= 5


def prepare_image(
    loaded: LoadedImage, size: int, object_fraction: float, max_pixels: int | None = None
) -> PreparedImage:
    """Centre the object in a white square and resize it to `size` (see `crop_to_square`)."""
    ys, xs = np.nonzero(loaded.mask)
    x_lo, x_hi = xs.min(), xs.max() + 1
    y_lo, y_hi = ys.min(), ys.max() + 1
    crop_box = square_around(x_lo, y_lo, x_hi - x_lo, y_hi - y_lo, object_fraction)
    return crop_to_square(loaded.rgb, loaded.mask, crop_box, size, max_pixels)


def square_around(x: float, y: float, width: float, height: float, object_fraction: float) -> np.ndarray:
    """The pixel-aligned square centred on a box whose longer side fills `object_fraction` of it.

    Returns the crop box (3,) float64: x0, y0, side (integers, in source pixels).
    """
    side = int(np.ceil(max(width, height) / object_fraction))
    x0 = int(round(x + (width - side) / 2.0))
    y0 = int(round(y + (height - side) / 2.0))
    return np.array([x0, y0, side], dtype=np.float64)


def crop_to_square(
    rgb: np.ndarray, mask: np.ndarray, crop_box: np.ndarray, size: int, max_pixels: int | None = None
) -> PreparedImage:
    """Cut the square `crop_box` out of the image (white where it leaves the image), resize to `size`.

    rgb: (H, W, 3) uint8; mask: (H, W) bool or uint8 foreground; crop_box: (3,) x0, y0, side.
    The square is built at source resolution, so its memory grows with side^2, not with the
    image's pixel count: a 100000x1 image needs a 117647 px square (41 GB). A square of
    more than `max_pixels` pixels raises ImageLoadError, which records the sample as failed.
    """
    height, width = mask.shape
    if rgb.shape != (height, width, 3):
        raise ValueError(f"rgb must be (H, W, 3) = ({height}, {width}, 3) like mask, got {rgb.shape}")
    x0, y0, side = (int(v) for v in crop_box)
    if max_pixels is not None and side * side > max_pixels:
        raise ImageLoadError(
            f"the object's {side}x{side} px crop square ({side * side / 1e6:.0f} MP, from a {width}x{height} "
            f"image) exceeds max_image_pixels = {max_pixels / 1e6:.0f} MP"
        )
    canvas = np.full((side, side, 3), 255, dtype=np.uint8)
    canvas_mask = np.zeros((side, side), dtype=np.uint8)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, width), min(y0 + side, height)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
        canvas_mask[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = mask[sy0:sy1, sx0:sx1]

    image = Image.fromarray(canvas).resize((size, size), Image.Resampling.LANCZOS)
    resized_mask = Image.fromarray(canvas_mask * 255).resize((size, size), Image.Resampling.BILINEAR)
    return PreparedImage(
        image=np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy(),
        mask=(np.asarray(resized_mask) >= 128).astype(np.uint8),
        crop_box=np.array([x0, y0, side], dtype=np.float64),
        source_size=np.array([width, height], dtype=np.int32),
    )


def prepared_to_source(uv: np.ndarray, crop_box: np.ndarray, size: int) -> np.ndarray:
    """Map prepared-image pixel coordinates (..., 2) back to source pixels (..., 2)."""
    x0, y0, side = crop_box
    return np.asarray(uv, dtype=np.float64) * (side / size) + np.array([x0, y0])


def source_to_prepared(xy: np.ndarray, crop_box: np.ndarray, size: int) -> np.ndarray:
    """Map source pixel coordinates (..., 2) into the prepared image (..., 2).

    The inverse of `prepared_to_source`: the crop and the resize of `prepare_image` are
    a shift by (x0, y0) and a scale by size / side of continuous pixel coordinates.
    """
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim < 1 or xy.shape[-1] != 2:
        raise ValueError(f"xy must be (..., 2), got {xy.shape}")
    crop_box = np.asarray(crop_box, dtype=np.float64)
    if crop_box.shape != (3,):
        raise ValueError(f"crop_box must be (3,) = x0, y0, side, got {crop_box.shape}")
    x0, y0, side = crop_box
    return (xy - np.array([x0, y0])) * (size / side)
