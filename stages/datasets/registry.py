"""Dataset readers by name, and the `NAME:ROOT` form of --source that picks one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from stages.datasets.cub import read_cub
from stages.datasets.errors import AnnotationError
from stages.datasets.h36m import read_h36m
from stages.datasets.selection import DatasetSelection, DatasetSources
from stages.datasets.stanford_dogs import read_stanford_dogs

READERS: dict[str, Callable[[Path, DatasetSelection], DatasetSources]] = {
    "h36m": read_h36m,
    "cub": read_cub,
    "dogs": read_stanford_dogs,
}


def split_source(source: str) -> tuple[str, Path]:
    """'h36m:/data/h36m' -> ('h36m', Path('/data/h36m')); an unknown name lists the choices."""
    name, sep, root = source.partition(":")
    if not sep or not root:
        raise AnnotationError(
            f"--source must be NAME:ROOT with NAME one of {', '.join(READERS)}, got {source!r}"
        )
    if name not in READERS:
        raise AnnotationError(
            f"--source {source!r}: unknown dataset {name!r}; choose from {', '.join(READERS)} "
            "(synthetic:CATEGORY is for --backend render)"
        )
    return name, Path(root)


def read_dataset(source: str, selection: DatasetSelection) -> DatasetSources:
    """Read the dataset that `source` (NAME:ROOT) names, restricted to `selection`."""
    name, root = split_source(source)
    if not root.is_dir():
        raise AnnotationError(f"--source {source!r}: {root} is not a folder")
    return READERS[name](root, selection)
