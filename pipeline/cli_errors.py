"""How every keydiff3d command line reports a user's error: one red line, exit code 2, no traceback."""

from __future__ import annotations

from typing import NoReturn

import typer

USAGE_ERROR = 2
"""Exit code of a refused input (bad option, file, cache or run)."""


def fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(USAGE_ERROR)
