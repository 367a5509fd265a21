"""Errors raised by the manipulation library: one base class, messages that name the input."""

from stages.errors import StageError


class ManipulationError(StageError):
    """Base class of every manipulation error."""


class ShapeError(ManipulationError, ValueError):
    """An array argument has the wrong shape; the message names it, expected vs actual."""


class PlyFormatError(ManipulationError):
    """A PLY file cannot be read as 3D Gaussians (missing properties, not a PLY)."""


class PoseFileError(ManipulationError, ValueError):
    """A pose file names unknown bones or keypoints, or does not follow the schema."""


class RigFileError(ManipulationError, ValueError):
    """A rig file does not follow the schema or does not match the object it is used with."""


class SampleNotReadyError(ManipulationError):
    """A cache sample that is not done (or does not exist) was asked to be reconstructed or rigged."""
