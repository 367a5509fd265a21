"""Shape and value checks shared by the metrics and the regressors (numpy arrays)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stages.evaluation.errors import NonFiniteError, ShapeError

_Dim = int | str


def require_shape(name: str, value: object, pattern: Sequence[_Dim], sizes: dict[str, int]) -> np.ndarray:
    """`value` as a float64 array of shape `pattern`; letters bind to sizes shared across one call.

    Every lettered dimension must be at least 1, because an empty batch has no mean error.
    """
    array = np.asarray(value, dtype=np.float64)
    actual = array.shape
    bound = dict(sizes)
    matches = len(actual) == len(pattern)
    for dim, size in zip(pattern, actual, strict=False):
        expected = bound.setdefault(dim, size) if isinstance(dim, str) else dim
        matches = matches and size == expected and size >= 1
    if not matches:
        letters = ", ".join(str(d) for d in pattern)
        resolved = ", ".join(str(sizes.get(d, ">=1")) if isinstance(d, str) else str(d) for d in pattern)
        raise ShapeError(f"{name} must have shape ({letters}) = ({resolved}), got {actual}")
    sizes.update(bound)
    return array


def require_finite(name: str, array: np.ndarray) -> None:
    """Raise `NonFiniteError` naming `name` if any entry of `array` is NaN or infinite."""
    bad = ~np.isfinite(array)
    if bad.any():
        raise NonFiniteError(f"{name} must be finite, got {int(bad.sum())} NaN or infinite entries")
