"""Errors of the dataset readers."""

from __future__ import annotations

from stages.errors import StageError


class AnnotationError(StageError, ValueError):
    """A dataset's annotation files are missing, malformed or of an unknown kind.

    The message names the file (and the line, or the JSON key, where one is at fault)
    and, for a missing file, the layout the reader expects.
    """
