"""Errors raised by stage-two library code."""

from stages.errors import StageError


class StageTwoError(StageError):
    """Base class of every stage-two error."""


class ShapeError(StageTwoError, ValueError):
    """A tensor argument has the wrong shape; the message names it, expected vs actual."""


class PerceptualWeightsMissing(StageTwoError):
    """The VGG16 weights for the perceptual loss are not on this machine."""


class TrainingError(StageTwoError):
    """Training cannot go on (non-finite loss, incompatible cache, bad checkpoint)."""
