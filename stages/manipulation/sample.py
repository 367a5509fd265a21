"""One cache sample's views, masks and cameras, with a clear error when it cannot be used."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cache_schema import CacheError, CacheReader
from cache_schema.errors import SampleNotDoneError
from stages.manipulation.errors import SampleNotReadyError

OBJECT_ARRAYS = ("views", "view_masks", "intrinsics", "world_to_camera")


@dataclass(frozen=True, eq=False)
class ObjectViews:
    """What reconstruction needs from one sample (the cache's kept views)."""

    sample_id: str
    index: int
    views: np.ndarray
    """(V, 3, H, W) uint8."""
    masks: np.ndarray
    """(V, H, W) bool foreground."""
    intrinsics: np.ndarray
    """(V, 3, 3) at the cache's image size."""
    world_to_camera: np.ndarray
    """(V, 4, 4) OpenCV."""


def sample_index(reader: CacheReader, sample: str | int) -> int:
    """A sample given by index ('3') or id ('humanoid/test/000003') -> its index."""
    ids = reader.sample_ids()
    text = str(sample)
    if text.isdigit():
        index = int(text)
        if index >= len(ids):
            raise SampleNotReadyError(f"{reader.path}: sample index {index} is not in [0, {len(ids)})")
        return index
    found = np.flatnonzero(ids == text)
    if not len(found):
        raise SampleNotReadyError(f"{reader.path}: no sample with id {text!r} (ids look like {ids[0]!r})")
    return int(found[0])


def read_object_views(cache: str | Path, sample: str | int) -> ObjectViews:
    """Views, masks and cameras of one done sample; SampleNotReadyError names it otherwise."""
    try:
        reader = CacheReader(cache)
        index = sample_index(reader, sample)
        arrays = reader.read_sample(index, OBJECT_ARRAYS)
    except SampleNotDoneError as exc:
        raise SampleNotReadyError(
            f"{cache}: sample {sample} is not done, so it has no views to reconstruct ({exc}); "
            "pick a done sample, or rerun `keydiff3d-cache generate` on the cache (it resumes; "
            "--retry-failed redoes failed samples)"
        ) from exc
    except CacheError as exc:
        raise SampleNotReadyError(f"{cache}: cannot read sample {sample} ({exc})") from exc
    return ObjectViews(
        sample_id=str(reader.sample_ids()[index]),
        index=index,
        views=arrays["views"],
        masks=arrays["view_masks"] > 0,
        intrinsics=arrays["intrinsics"].astype(np.float64),
        world_to_camera=arrays["world_to_camera"].astype(np.float64),
    )
