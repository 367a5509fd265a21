"""Errors of the synthetic world."""

from stages.errors import StageError


class SyntheticWorldError(StageError, ValueError):
    """A category, clip name, clip file or pose time the synthetic world cannot use."""
