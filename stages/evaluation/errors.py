"""Errors raised by the evaluation library."""

from stages.errors import StageError


class EvaluationError(StageError):
    """Base class of every evaluation error."""


class ShapeError(EvaluationError, ValueError):
    """An array argument has the wrong shape; the message names it, expected vs actual."""


class NonFiniteError(EvaluationError, ValueError):
    """An array argument holds NaN or infinity where a number is needed; the message names it."""


class RegressorError(EvaluationError):
    """A regressor is used before `fit`, or saved data does not describe a regressor."""
