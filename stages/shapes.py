"""Shape checks of numpy arguments on entry, shared by the evaluation and manipulation libraries.

Each library passes its own ShapeError, so callers catch the error of the library they use.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Dim = int | str | None
"""A size, a letter (any size >= 1, the same wherever it recurs in one `sizes`), or None (any size)."""


def require_shape(
    name: str,
    value: object,
    pattern: Sequence[Dim],
    sizes: dict[str, int] | None = None,
    error: type[Exception] = ValueError,
) -> np.ndarray:
    """`value` as a float64 array of shape `pattern`, else `error` naming `name`, expected and actual.

    Letters bind in `sizes`, which is updated, so several arguments of one call can share them.
    """
    array = np.asarray(value, dtype=np.float64)
    sizes = {} if sizes is None else sizes
    bound = dict(sizes)
    actual = array.shape
    matches = len(actual) == len(pattern)
    for dim, size in zip(pattern, actual, strict=False):
        if isinstance(dim, str):
            matches = matches and size == bound.setdefault(dim, size) and size >= 1
        elif dim is not None:
            matches = matches and size == dim
    if not matches:
        letters = ", ".join("*" if d is None else str(d) for d in pattern)
        resolved = ", ".join(
            str(sizes.get(d, ">=1")) if isinstance(d, str) else "*" if d is None else str(d) for d in pattern
        )
        shown = f"({letters})" if resolved == letters else f"({letters}) = ({resolved})"
        raise error(f"{name} must have shape {shown}, got {actual}")
    sizes.update(bound)
    return array
