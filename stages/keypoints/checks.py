"""Argument checks and the pixel grid shared by the stage-two geometry modules (geometry, edge_maps)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from stages.keypoints.errors import ShapeError

Dim = int | str


def check_shape(name: str, tensor: Tensor, pattern: Sequence[Dim], sizes: dict[str, int]) -> None:
    """Check `tensor` against `pattern`; letters bind to sizes shared across the arguments of one call."""
    actual = tuple(tensor.shape)
    bound = dict(sizes)
    matches = len(actual) == len(pattern)
    for dim, size in zip(pattern, actual, strict=False):
        expected = bound.setdefault(dim, size) if isinstance(dim, str) else dim
        matches = matches and size == expected
    if not matches:
        letters = ", ".join(str(d) for d in pattern)
        resolved = ", ".join(str(sizes.get(d, "*")) if isinstance(d, str) else str(d) for d in pattern)
        raise ShapeError(f"{name} must have shape ({letters}) = ({resolved}), got {actual}")
    sizes.update(bound)


def require_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def pixel_centres(height: int, width: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates u (W,) and v (H,) in the dtype and on the device of `like`."""
    require_positive("height", height)
    require_positive("width", width)
    u = torch.arange(width, dtype=like.dtype, device=like.device) + 0.5
    v = torch.arange(height, dtype=like.dtype, device=like.device) + 0.5
    return u, v
