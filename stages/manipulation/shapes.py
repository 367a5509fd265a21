"""Shape checks on entry: errors name the argument, the expected and the actual shape."""

from __future__ import annotations

import numpy as np

from stages.manipulation.errors import ShapeError


def check_shape(name: str, array: np.ndarray, expected: tuple[int | None, ...]) -> np.ndarray:
    """Return `array` as float64 if its shape matches `expected` (None = any size), else raise."""
    array = np.asarray(array)
    if array.ndim != len(expected) or any(
        want is not None and have != want for have, want in zip(array.shape, expected, strict=True)
    ):
        wanted = "(" + ", ".join("*" if w is None else str(w) for w in expected) + ")"
        raise ShapeError(f"{name} must have shape {wanted}, got {tuple(array.shape)}")
    return array.astype(np.float64, copy=False)
