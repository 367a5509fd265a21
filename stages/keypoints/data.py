"""Training batches from one or more caches: done samples only, never ground truth.

Which samples form the batch of step s is a pure function of (seed, s): an epoch is a
permutation of every done sample across all caches and shards, so batches mix shards
and a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cache_schema import CacheError, CacheReader, FeatureLayerSpec
from stages.keypoints.errors import TrainingError

VIEW_ARRAYS = ("views", "view_masks", "intrinsics", "world_to_camera")


@dataclass(frozen=True)
class CacheSummary:
    """What stage two needs to know about the caches it trains on (all must agree)."""

    image_size: int
    num_views: int
    feature_layers: tuple[FeatureLayerSpec, ...]
    camera_radius: float
    fov_deg: float
    fingerprints: tuple[str, ...]
    num_samples: int


def summarise_caches(paths: Sequence[Path], num_views: int, feature_source: str) -> CacheSummary:
    """Check that the caches can be trained on together with this config, or raise naming the cache."""
    if not paths:
        raise TrainingError("no cache given")
    readers = [CacheReader(path) for path in paths]
    first = readers[0]
    for reader in readers[1:]:
        for what, mine, theirs in (
            ("image size", reader.layout.image_size, first.layout.image_size),
            ("kept views", reader.layout.num_views, first.layout.num_views),
            ("feature layers", reader.layout.feature_layers, first.layout.feature_layers),
        ):
            if mine != theirs:
                raise TrainingError(f"{reader.path}: {what} {mine} differs from {first.path}'s {theirs}")
    layout = first.layout
    if num_views > layout.num_views:
        raise TrainingError(
            f"{first.path} holds {layout.num_views} views per sample; --views {num_views} asked"
        )
    if feature_source == "diffusion" and not layout.feature_layers:
        raise TrainingError(
            f"{first.path} holds no diffusion features (e.g. a render-backend cache): "
            "use feature_source 'pixels' (--features pixels)"
        )
    orbit = first.store.metadata.generation["orbit"]
    done = sum(len(reader.done_indices()) for reader in readers)
    if done == 0:
        raise TrainingError(f"no done samples in {[str(p) for p in paths]}")
    return CacheSummary(
        image_size=layout.image_size,
        num_views=layout.num_views,
        feature_layers=tuple(layout.feature_layers) if feature_source == "diffusion" else (),
        camera_radius=float(orbit["radius"]),
        fov_deg=float(orbit["fov_deg"]),
        fingerprints=tuple(reader.fingerprint for reader in readers),
        num_samples=done,
    )


def batch_indices(num_items: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Item indices (B,) of the batch at `step`: epochs are seeded permutations;
    the last partial batch of an epoch is dropped."""
    if num_items < batch_size:
        raise TrainingError(f"{num_items} done samples cannot fill a batch of {batch_size}")
    per_epoch = num_items // batch_size
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_items)
    return order[position * batch_size : (position + 1) * batch_size]


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields the batches of steps [start, stop)."""

    def __init__(self, num_items: int, batch_size: int, seed: int, start: int, stop: int):
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield batch_indices(self.num_items, self.batch_size, self.seed, step).tolist()

    def __len__(self) -> int:
        return self.stop - self.start


ArrayDict = dict[str, np.ndarray]


class CacheTrainingSet(torch.utils.data.Dataset):
    """Done samples of several caches as one indexable set; fetches whole batches at once."""

    def __init__(
        self,
        paths: Sequence[Path],
        num_views: int,
        render_size: int,
        with_features: bool,
        feature_view_size: int = 0,
        in_memory: bool = False,
    ):
        """feature_view_size: when > 0 and not render_size, batches also hold 'feature_views',
        the views at that side, for a pixel encoder that reads them at another resolution.
        in_memory: each process reads every done sample's arrays once, at its first batch,
        and serves its batches from memory (see StageTwoConfig.loader_in_memory)."""
        self.paths = [Path(p) for p in paths]
        self.num_views = num_views
        self.render_size = render_size
        self.feature_view_size = feature_view_size
        self.with_features = with_features
        readers = [CacheReader(p) for p in self.paths]
        self.items = np.array(
            [(c, int(i)) for c, reader in enumerate(readers) for i in reader.done_indices()], dtype=np.int64
        ).reshape(-1, 2)
        self.feature_names = readers[0].feature_array_names() if with_features else []
        self._readers: dict[int, list[CacheReader]] = {}
        self.in_memory = in_memory
        self._held: dict[int, list[dict[str, np.ndarray]]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _open(self) -> list[CacheReader]:
        # One set of readers per process: loader workers must not share file handles.
        pid = os.getpid()
        if pid not in self._readers:
            self._readers = {pid: [CacheReader(p) for p in self.paths]}
        return self._readers[pid]

    def _read(self, cache: int, samples: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Arrays `names` (B, ...) of the done samples `samples` (sorted) of cache `cache`."""
        reader = self._open()[cache]
        if not self.in_memory:
            return reader.read_batch(samples.tolist(), names)
        return self._from_memory(cache, samples, names, reader.read_batch)

    def _from_memory(
        self, cache: int, samples: np.ndarray, names: Sequence[str], read: Callable[..., ArrayDict]
    ) -> ArrayDict:
        """Rows of the arrays `names` held for cache `cache`, one per sample of `samples` in
        their order, reading with `read(indices, names)` the arrays this process does not hold
        yet (every done sample at once)."""
        pid = os.getpid()
        if pid not in self._held:  # a loader worker holds its own copy
            self._held = {pid: [{"index": r.done_indices()} for r in self._open()]}
        held = self._held[pid][cache]
        missing = [name for name in names if name not in held]
        if missing:
            held.update(read(held["index"].tolist(), missing))
        rows = np.searchsorted(held["index"], samples)
        return {name: held[name][rows] for name in names}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """A batch: views (B, V, 3, R, R) and masks (B, V, R, R) in [0, 1] at render size,
        'feature_views' (B, V, 3, S, S) when feature_view_size asks for them,
        intrinsics (B, V, 3, 3) and world_to_camera (B, V, 4, 4) at the cache's image size,
        feature layers 'features/...' (B, V, C_l, h_l, w_l) float16, 'index' (B,)."""
        picked = self.items[np.asarray(indices, dtype=np.int64)]
        names = VIEW_ARRAYS + tuple(self.feature_names)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        order: list[np.ndarray] = []
        for cache in np.unique(picked[:, 0]):
            rows = np.flatnonzero(picked[:, 0] == cache)
            sample_rows = picked[rows, 1]
            sort = np.argsort(sample_rows)
            arrays = self._read(int(cache), sample_rows[sort], names)
            for name in names:
                parts[name].append(arrays[name])
            order.append(rows[sort])
        # Undo the grouping by cache so row b of the batch is indices[b].
        inverse = np.argsort(np.concatenate(order))
        k = self.num_views
        batch = {name: np.concatenate(chunks)[inverse][:, :k] for name, chunks in parts.items()}
        views = torch.from_numpy(batch["views"]).float() / 255.0
        extra = {}
        if self.feature_view_size and self.feature_view_size != self.render_size:
            extra["feature_views"] = _resize(views, self.feature_view_size)
        return {
            **extra,
            "views": _resize(views, self.render_size),
            "view_masks": _resize(
                torch.from_numpy(batch["view_masks"]).float().unsqueeze(2), self.render_size
            )[:, :, 0],
            "intrinsics": torch.from_numpy(batch["intrinsics"]).float(),
            "world_to_camera": torch.from_numpy(batch["world_to_camera"]).float(),
            "index": torch.as_tensor(np.asarray(indices, dtype=np.int64)),
            **{name: torch.from_numpy(batch[name]) for name in self.feature_names},
        }


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, V, C, H, W) -> (B, V, C, size, size), area-averaged when shrinking."""
    if images.shape[-1] == size:
        return images
    b, v = images.shape[:2]
    mode = "area" if images.shape[-1] > size else "bilinear"
    return F.interpolate(images.flatten(0, 1), size=(size, size), mode=mode).unflatten(0, (b, v))


class ErrorsAsValues(torch.utils.data.Dataset):
    """A dataset whose CacheError (a damaged or missing shard) comes back from a loader
    worker as the batch itself, for the training loop to raise: torch re-raises a worker's
    exception with the worker's whole traceback pasted into its message, and the command
    line must print the error's one line."""

    def __init__(self, dataset: CacheTrainingSet):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor] | CacheError:
        try:
            return self.dataset.__getitems__(indices)
        except CacheError as exc:
            return exc


def keep_batch(batch: object) -> object:
    """collate_fn for batches the dataset already assembled (picklable for worker processes)."""
    return batch
