"""Stage one for one shard: make each unfinished sample, then write the whole shard.

`write_shard` is shared by every source: it takes a `make_sample(sample_id)` callable
and owns skipping, failure recording and the status-last write. For image files,
`ImageSampleMaker` loads and prepares the image, asks a view backend (SV3D-p) for the
kept views and features, and adds masks and cameras here, so that every view backend
writes the same schema; the synthetic renderer makes its samples itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from cache_schema import STATUS_DONE, STATUS_FAILED, CacheStore, FeatureLayerSpec, GroundTruthSpec
from stages.cameras import orbit_cameras
from stages.config import GenerationConfig
from stages.datasets.preparation import ground_truth_rows, prepare_annotated_image
from stages.errors import ImageLoadError, StageError
from stages.images import PreparedImage, load_image, prepare_image, white_background_mask
from stages.sources import ImageSource, sample_seed


class SampleFailure(StageError):
    """A sample cannot be produced for a reason tied to that sample (recorded, skipped)."""


@dataclass(frozen=True)
class GeneratedViews:
    """What a backend returns for one sample."""

    views: np.ndarray
    """(K, 3, H, W) uint8 kept views; view 0 is the input azimuth."""
    features: dict[str, np.ndarray] = field(default_factory=dict)
    """layer name -> (K, C, h, w) float32."""


class ViewBackend(Protocol):
    """Turns a prepared input image into the kept views (and features) of the orbit."""

    name: str

    def image_size(self) -> int: ...

    def feature_layers(self) -> tuple[FeatureLayerSpec, ...]: ...

    def generate(self, prepared: PreparedImage, seed: int) -> GeneratedViews: ...


@dataclass
class ShardReport:
    """What one shard task did."""

    shard: int
    done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0
    generate_seconds: float = 0.0


def kept_view_cameras(config: GenerationConfig, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Intrinsics (K, 3, 3) and world-to-camera (K, 4, 4) of the kept views."""
    orbit = config.orbit
    frames = list(orbit.kept_frame_indices())
    return orbit_cameras(
        orbit.frame_elevations_deg()[frames],
        orbit.frame_azimuths_deg()[frames],
        orbit.radius,
        orbit.fov_deg,
        image_size,
    )


def build_sample(
    source: ImageSource,
    backend: ViewBackend,
    config: GenerationConfig,
    ground_truth: GroundTruthSpec | None = None,
) -> tuple[dict[str, np.ndarray], float]:
    """Every data array of one sample (no sample axis) and the seconds spent generating.

    A source with an annotation (a dataset reader's) is cropped to its box, and, when
    the store has `ground_truth`, its joints are written (stages/datasets/preparation.py).
    """
    size = backend.image_size()
    if source.problem is not None:
        raise SampleFailure(f"{source.path}: {source.problem}")
    try:
        if source.annotation is None:
            loaded = load_image(source.path, config.background_threshold, config.max_image_pixels)
            prepared = prepare_image(loaded, size, config.object_fraction, config.max_image_pixels)
        else:
            prepared = prepare_annotated_image(
                source.path, source.annotation, size, config.object_fraction, config.max_image_pixels
            )
    except ImageLoadError as exc:
        raise SampleFailure(str(exc)) from exc
    tic = time.perf_counter()
    generated = backend.generate(prepared, sample_seed(config.seed, source.sample_id))
    seconds = time.perf_counter() - tic

    views = generated.views.copy()
    num_views = config.orbit.num_kept_views
    if views.shape != (num_views, 3, size, size) or views.dtype != np.uint8:
        raise StageError(
            f"backend {backend.name} returned views {views.shape} {views.dtype}, expected "
            f"({num_views}, 3, {size}, {size}) uint8"
        )
    masks = np.stack([white_background_mask(v, config.background_threshold) for v in views])
    if config.replace_input_frame:
        views[0] = prepared.image
        masks[0] = prepared.mask
    intrinsics, world_to_camera = kept_view_cameras(config, size)
    rows: dict[str, np.ndarray] = {
        "input_image": prepared.image,
        "input_mask": prepared.mask,
        "crop_box": prepared.crop_box,
        "source_size": prepared.source_size,
        "views": views,
        "view_masks": masks,
        "intrinsics": intrinsics.astype(np.float32),
        "world_to_camera": world_to_camera.astype(np.float32),
    }
    for layer in backend.feature_layers():
        value = generated.features[layer.name].astype(config.feature_dtype)
        if not np.all(np.isfinite(value)):
            raise SampleFailure(
                f"{source.path}: non-finite values in feature {layer.name} "
                f"(overflow in {config.feature_dtype}?)"
            )
        rows[layer.array_name] = value
    if ground_truth is not None and source.annotation is not None:
        rows.update(ground_truth_rows(source.annotation, prepared, num_views, ground_truth))
    return rows, seconds


class ImageSampleMaker:
    """Makes the samples of image files with a view backend (what dask tasks call)."""

    def __init__(
        self,
        backend: ViewBackend,
        config: GenerationConfig,
        sources: Sequence[ImageSource],
        ground_truth: GroundTruthSpec | None = None,
    ):
        self.backend = backend
        self.config = config
        self.sources = {source.sample_id: source for source in sources}
        self.ground_truth = ground_truth

    def __call__(self, sample_id: str) -> tuple[dict[str, np.ndarray], float]:
        return build_sample(self.sources[sample_id], self.backend, self.config, self.ground_truth)


def write_shard(
    store: CacheStore,
    shard: int,
    sample_ids: Sequence[str],
    make_sample: Callable[[str], tuple[dict[str, np.ndarray], float]],
    retry_failed: bool = False,
    on_sample: Callable[[str, str], None] | None = None,
) -> ShardReport:
    """Make the unfinished samples of one shard and write the whole shard.

    sample_ids: the shard's samples in store order. make_sample(sample_id) returns
    (arrays without the sample axis, seconds spent generating) or raises
    SampleFailure. Samples already done are read back and rewritten unchanged (one
    file per array and shard, one writer per shard). on_sample(sample_id, 'done' |
    'failed' | 'skipped') is called per sample.
    """
    tic = time.perf_counter()
    report = ShardReport(shard)
    start, stop = store.layout.shard_range(shard)
    if len(sample_ids) != stop - start:
        raise StageError(f"shard {shard} holds {stop - start} samples, got {len(sample_ids)} ids")
    # Only this shard's chunks: reading the whole status array per task would make a
    # run of many shards quadratic in file reads.
    status = store.statuses(start, stop).copy()
    reasons = list(store.failure_reasons(start, stop))
    names = store.data_array_names()
    keep = (status == STATUS_DONE) | ((status == STATUS_FAILED) & (not retry_failed))
    if np.any(status == STATUS_DONE):
        # Done samples are read back and rewritten: a missing file would turn them into
        # zeros that stay marked done. (A shard of only failed samples has no files.)
        store.require_shard_files(names, [shard])
    rows = (
        store.read_rows(start, stop, names)
        if keep.any()
        else {
            name: np.zeros((stop - start, *spec.shape[1:]), dtype=spec.dtype)
            for name, spec in store.layout.arrays().items()
            if name in names
        }
    )
    for offset, sample_id in enumerate(sample_ids):
        if keep[offset]:
            report.skipped += 1
            _notify(on_sample, sample_id, "skipped")
            continue
        try:
            sample, seconds = make_sample(sample_id)
        except SampleFailure as exc:
            status[offset], reasons[offset] = STATUS_FAILED, str(exc)
            for name in names:
                rows[name][offset] = 0
            report.failed.append((sample_id, str(exc)))
            _notify(on_sample, sample_id, "failed")
            continue
        for name in names:
            if name in sample:
                rows[name][offset] = sample[name]
        status[offset], reasons[offset] = STATUS_DONE, ""
        report.done += 1
        report.generate_seconds += seconds
        _notify(on_sample, sample_id, "done")
    store.write_shard(shard, rows, status, reasons, sample_ids)
    report.seconds = time.perf_counter() - tic
    return report


def _notify(callback: Callable[[str, str], None] | None, sample_id: str, what: str) -> None:
    if callback is not None:
        callback(sample_id, what)
