"""Shape checks on entry: errors name the argument, the expected and the actual shape."""

from __future__ import annotations

import numpy as np

from stages.manipulation.errors import ShapeError
from stages.shapes import require_shape


def check_shape(name: str, array: np.ndarray, expected: tuple[int | None, ...]) -> np.ndarray:
    """Return `array` as float64 if its shape matches `expected` (None = any size), else raise."""
    return require_shape(name, array, expected, error=ShapeError)
