"""`generate` as a library call: a frozen job description in, a run summary out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cache_schema import StoreMetadata
from pipeline.backends import BackendSpec, RenderBackendSpec, SV3DBackendSpec, model_dir_exists
from pipeline.runner import RunSummary, SchedulerTLS, build_metadata, open_or_create, run_dask, run_local
from pipeline.store_lock import hold_store_lock
from stages.config import GenerationConfig
from stages.datasets.registry import read_dataset
from stages.datasets.selection import DatasetSelection
from stages.sources import list_image_sources

BACKENDS = ("sv3d", "render")


@dataclass(frozen=True)
class GenerateJob:
    """One stage-one run. Only `config` (and the world, for renders) changes the stored bytes."""

    images: Path | None
    """Folder (recursive), list file or single image (sv3d backend)."""
    model: Path | None
    """Local SV3D-p model directory (sv3d backend)."""
    out: Path
    """Zarr store, created or resumed."""
    config: GenerationConfig = GenerationConfig()
    backend: str = "sv3d"
    """'sv3d' (diffusion on image files) or 'render' (the synthetic world)."""
    world: Any = None
    """SyntheticWorldConfig for the render backend."""
    dataset: str | None = None
    """sv3d backend: NAME:ROOT of a dataset reader (h36m, cub, dogs), read instead of IMAGES."""
    selection: DatasetSelection = DatasetSelection()
    """Which part of `dataset` to read (split, stride, actions, cameras)."""
    features_model: Path | None = None
    """Render backend: local SV3D-p model directory whose features of the rendered views
    are stored (None: no features)."""
    workers: int | None = None
    """Start a dask LocalCluster of this many worker processes."""
    scheduler: str | None = None
    """Address of an existing dask scheduler."""
    tls: SchedulerTLS | None = None
    """Certificates for a tls:// scheduler (None: dask's own configuration decides)."""
    overwrite: bool = False
    retry_failed: bool = False
    device: str = "auto"
    attention: str = "auto"
    samples_per_shard: int = 16
    threads: int = 1
    """Torch intra-op threads per process. CPU kernels split reductions by thread count,
    so the stored bytes are only reproducible at a fixed count; use --workers to spread
    work over cores instead."""
    retries: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "sv3d" and (self.model is None or (self.images is None) == (self.dataset is None)):
            raise ValueError(
                "the sv3d backend needs --model and either IMAGES or --source NAME:ROOT, not both"
            )
        if self.dataset is not None and self.backend != "sv3d":
            raise ValueError(f"--source {self.dataset} names a dataset, which the sv3d backend reads")
        if self.backend == "render" and self.world is None:
            raise ValueError("the render backend needs --source synthetic:CATEGORY")
        if self.features_model is not None and self.backend != "render":
            raise ValueError("--features-model is for --backend render; the sv3d backend takes --model")
        if self.workers is not None and self.scheduler is not None:
            raise ValueError(
                "--workers starts a local cluster and --scheduler uses an existing one: pick one"
            )
        if self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.images is not None:
            inputs, out = Path(self.images).resolve(), Path(self.out).resolve()
            inside = inputs.is_dir() and out.is_relative_to(inputs)
            if out == inputs or inputs.is_relative_to(out) or inside:
                raise ValueError(
                    f"--out {self.out} and IMAGES {self.images} overlap: the store must lie outside "
                    "the inputs and must not contain them"
                )
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.tls is not None and (self.scheduler is None or not self.scheduler.startswith("tls://")):
            raise ValueError(
                f"--tls-* options need --scheduler tls://HOST:PORT, got --scheduler {self.scheduler}"
            )
        if self.retries < 0:
            raise ValueError(f"--retries must be >= 0, got {self.retries}")
        if self.samples_per_shard < 1:
            raise ValueError(f"--shard-size must be >= 1, got {self.samples_per_shard}")

    @property
    def parallel(self) -> bool:
        return self.workers is not None or self.scheduler is not None


def plan(job: GenerateJob) -> tuple[BackendSpec, list[Any], list[str], str]:
    """The backend recipe, one item per sample, the sample ids and a label of the inputs."""
    if job.backend == "render":
        ids = job.world.sample_ids()
        label = f"synthetic:{job.world.category} split={job.world.split}"
        features = None
        if job.features_model is not None:
            features = str(model_dir_exists(str(job.features_model), "--features-model").resolve())
        spec = RenderBackendSpec(job.world, job.config, features, job.device, job.attention, job.threads)
        return spec, ids, ids, label
    assert job.model is not None  # checked in __post_init__
    model_dir_exists(str(job.model))
    dataset = None
    if job.dataset is not None:
        dataset = read_dataset(job.dataset, job.selection)
        sources, label = list(dataset.sources), f"{job.dataset} split={job.selection.split}"
    else:
        assert job.images is not None  # checked in __post_init__
        sources, label = list_image_sources(job.images), str(job.images)
    spec = SV3DBackendSpec(
        model_dir=str(Path(job.model).resolve()),
        config=job.config,
        device=job.device,
        attention=job.attention,
        torch_threads=job.threads,
        dataset_ground_truth=dataset.ground_truth if dataset is not None else None,
        dataset_record=dataset.record if dataset is not None else None,
    )
    return spec, sources, [s.sample_id for s in sources], label


def run_generate(job: GenerateJob) -> RunSummary:
    """Create or resume the store and generate every unfinished shard.

    The store's writer lock (pipeline/store_lock.py) is taken before the store is
    opened or, with --overwrite, deleted, and held until the last shard is written.
    """
    spec, items, ids, label = plan(job)
    metadata = build_metadata(spec, ids, job.samples_per_shard, label)
    with hold_store_lock(Path(job.out)):
        return _run_locked(job, spec, items, ids, metadata)


def _run_locked(
    job: GenerateJob, spec: BackendSpec, items: list[Any], ids: list[str], metadata: StoreMetadata
) -> RunSummary:
    store = open_or_create(Path(job.out), metadata, ids, job.overwrite)
    summary = RunSummary(store=Path(job.out), total=len(ids), bytes_before=store.bytes_on_disk())
    shards = store.shards_to_do(job.retry_failed)
    queued = store.layout.samples_in(shards)
    tic = time.perf_counter()
    if job.parallel:
        run_dask(
            store,
            shards,
            items,
            spec,
            job.retry_failed,
            summary,
            job.workers,
            job.scheduler,
            job.retries,
            job.tls,
            job.progress,
        )
    else:
        run_local(store, shards, items, spec, job.retry_failed, summary, job.progress)
    summary.skipped += len(ids) - queued
    summary.seconds = time.perf_counter() - tic
    summary.bytes_after = store.bytes_on_disk()
    return summary
