"""Errors raised by stage-one and stage-two library code."""


class StageError(Exception):
    """Base class of every stages error."""


class ConfigError(StageError, ValueError):
    """A config field has a value outside what the stage supports."""


class ImageLoadError(StageError):
    """An input image cannot be read or converted; the message names the file."""


class ModelLoadError(StageError):
    """A model directory is missing, incomplete or of the wrong layout."""


class CheckpointConversionError(StageError):
    """An official checkpoint does not have the keys or shapes a conversion expects."""


class OutputExistsError(StageError):
    """An output folder already holds something the command will not replace."""
