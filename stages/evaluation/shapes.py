"""Shape and value checks shared by the metrics and the regressors (numpy arrays)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stages import shapes
from stages.evaluation.errors import NonFiniteError, ShapeError


def require_shape(
    name: str, value: object, pattern: Sequence[int | str], sizes: dict[str, int]
) -> np.ndarray:
    """`value` as a float64 array of shape `pattern`; letters bind to sizes shared across one call.

    Every lettered dimension must be at least 1, because an empty batch has no mean error.
    """
    return shapes.require_shape(name, value, pattern, sizes, ShapeError)


def require_finite(name: str, array: np.ndarray) -> None:
    """Raise `NonFiniteError` naming `name` if any entry of `array` is NaN or infinite."""
    bad = ~np.isfinite(array)
    if bad.any():
        raise NonFiniteError(f"{name} must be finite, got {int(bad.sum())} NaN or infinite entries")
