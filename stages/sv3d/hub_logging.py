"""Quiet diffusers/transformers while loading or saving: our CLI reports progress itself."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import diffusers.utils.logging as diffusers_logging
import transformers.utils.logging as transformers_logging


@contextlib.contextmanager
def quiet_hub_logging() -> Iterator[None]:
    """Silence the libraries' loading bars and notices; our CLI reports progress itself."""
    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    bars = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
        if bars[0]:
            diffusers_logging.enable_progress_bar()
        if bars[1]:
            transformers_logging.enable_progress_bar()
