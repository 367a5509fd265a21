"""`keydiff3d-train`: stage two. Not implemented yet (see the issue "Stage two")."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Stage two of KeyDiff3D (3D lifter and keypoint head). NOT IMPLEMENTED YET: "
    "this release only builds stage-one caches.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def fit() -> None:
    """Train from cached shards (not implemented yet: exits with status 3)."""
    typer.secho(
        "keydiff3d-train fit is not implemented yet: stage two (lifter, keypoint head, "
        "reconstruction) has not landed. Nothing was trained.",
        fg=typer.colors.YELLOW,
        err=True,
    )
    raise typer.Exit(3)


@app.command()
def status() -> None:
    """Say what stage two can do in this release."""
    typer.echo("stage two: not implemented yet; use keydiff3d-cache to build caches")
