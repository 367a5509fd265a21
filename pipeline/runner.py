"""Run stage one over a store: plan shards, execute them locally or on dask, summarise."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from cache_schema import CacheLayout, CacheStore, SchemaMismatchError, StoreMetadata, inputs_digest
from pipeline.backends import BackendSpec, weights_named_by_size_only
from stages.config import GenerationConfig
from stages.stage_one import ShardReport, write_shard


@dataclass
class RunSummary:
    """What a generate run did, for the closing summary and for tests."""

    store: Path
    total: int
    done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0
    bytes_before: int = 0
    bytes_after: int = 0
    shards: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    """Shards whose task raised (after retries); their samples stay pending."""

    @property
    def samples_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def add(self, report: ShardReport) -> None:
        self.done += report.done
        self.failed.extend(report.failed)
        self.skipped += report.skipped
        self.shards += 1

    def lines(self) -> list[str]:
        out = [
            f"store      {self.store}",
            f"samples    {self.total} total: {self.done} done now, {len(self.failed)} failed, "
            f"{self.skipped} skipped (finished earlier)",
            f"throughput {self.samples_per_second:.2f} samples/s over {self.seconds:.1f} s "
            f"({self.shards} shards)",
            f"written    {(self.bytes_after - self.bytes_before) / 1e6:.2f} MB "
            f"(store now {self.bytes_after / 1e6:.2f} MB)",
        ]
        for sample_id, reason in self.failed:
            out.append(f"failed     {sample_id}: {reason}")
        for shard, error in self.errors:
            out.append(f"error      shard {shard} (left pending, rerun to retry): {error}")
        return out


def camera_record(config: GenerationConfig) -> dict[str, Any]:
    """The orbit and conventions of the stored cameras, for the store's attributes."""
    orbit = config.orbit
    return {
        "convention": "world +z up, object at origin; OpenCV cameras (x right, y down, z "
        "forward); pixel (0,0) is the top-left corner of the top-left pixel",
        "frame_azimuths_deg": orbit.frame_azimuths_deg().tolist(),
        "frame_elevations_deg": orbit.frame_elevations_deg().tolist(),
        "kept_frames": list(orbit.kept_frame_indices()),
        "fov_deg": orbit.fov_deg,
        "radius": orbit.radius,
    }


def build_metadata(
    spec: BackendSpec, sample_ids: Sequence[str], samples_per_shard: int, source_label: str
) -> StoreMetadata:
    """Store metadata from the backend's structure (no weights are loaded)."""
    config = spec.resolved_config()
    layout = CacheLayout(
        num_samples=len(sample_ids),
        image_size=config.resolution or 0,
        num_views=config.orbit.num_kept_views,
        feature_layers=spec.feature_layers(),
        feature_dtype=config.feature_dtype,
        samples_per_shard=samples_per_shard,
        ground_truth=spec.ground_truth(),
    )
    return StoreMetadata(
        layout=layout,
        generation=config.to_dict(),
        model=spec.model_record(),
        source={**spec.source_record(), "inputs": source_label},
        cameras=camera_record(config),
        capture=spec.capture_record(),
        inputs_digest=inputs_digest(list(sample_ids)),
    )


def open_or_create(out: Path, metadata: StoreMetadata, ids: Sequence[str], overwrite: bool) -> CacheStore:
    """Resume a compatible store, refuse an incompatible one, or create a new one."""
    if out.exists() and not overwrite:
        store = CacheStore.open(out, writable=True)
        if weights_named_by_size_only(store.metadata.model):
            # Its weights were never hashed: the same sizes may hold other values, and
            # resuming would mix two models' outputs in one store.
            raise SchemaMismatchError(
                f"{out} was written by an older keydiff3d that identified the model by its weight "
                "file sizes only, so it cannot tell whether --model holds the same weights; pass "
                "--overwrite to regenerate it (or --out another store)"
            )
        store.check_compatible(metadata, ids)
        store.remove_partial_files()
        return store
    return CacheStore.create(out, metadata, ids, overwrite=overwrite)


def run_local(
    store: CacheStore,
    shards: Sequence[int],
    items: Sequence[Any],
    spec: BackendSpec,
    retry_failed: bool,
    summary: RunSummary,
    progress: bool = True,
) -> None:
    """All shards in this process, one after the other. items: one per sample, in order."""
    with tqdm(
        total=store.layout.samples_in(list(shards)), desc="stage one", unit="sample", disable=not progress
    ) as bar:
        for shard in shards:
            start, stop = store.layout.shard_range(shard)
            ids, make_sample = spec.sample_maker(list(items[start:stop]))
            report = write_shard(
                store, shard, ids, make_sample, retry_failed, on_sample=lambda _id, _what: bar.update(1)
            )
            summary.add(report)


def run_shard_task(
    store_path: str, shard: int, items: list[Any], spec: BackendSpec, retry_failed: bool
) -> ShardReport:
    """One dask task: one whole shard, with the backend built once per worker."""
    store = CacheStore.open(store_path, writable=True)
    ids, make_sample = spec.sample_maker(items)
    return write_shard(store, shard, ids, make_sample, retry_failed)


@dataclass(frozen=True)
class SchedulerTLS:
    """The client's side of a dask cluster secured with TLS (dask's --tls-* options).

    Dask pickles tasks: whoever can reach an unsecured scheduler port can run code on
    every worker. TLS with client certificates closes that; see README "Distributed
    precomputation with dask".
    """

    ca_file: Path
    """CA certificate(s) that signed the scheduler's and workers' certificates (PEM)."""
    cert: Path
    """This client's certificate (PEM)."""
    key: Path
    """This client's private key (PEM)."""

    def __post_init__(self) -> None:
        for option, path in (
            ("--tls-ca-file", self.ca_file),
            ("--tls-cert", self.cert),
            ("--tls-key", self.key),
        ):
            if not Path(path).is_file():
                raise ValueError(f"{option} {path}: no such file")

    def security(self) -> Any:
        from distributed.security import Security

        return Security(
            tls_ca_file=str(self.ca_file),
            tls_client_cert=str(self.cert),
            tls_client_key=str(self.key),
            require_encryption=True,
        )


def run_dask(
    store: CacheStore,
    shards: Sequence[int],
    items: Sequence[Any],
    spec: BackendSpec,
    retry_failed: bool,
    summary: RunSummary,
    workers: int | None,
    scheduler: str | None,
    retries: int = 2,
    tls: SchedulerTLS | None = None,
    progress: bool = True,
) -> None:
    """Shards as dask tasks on a LocalCluster (`workers`) or an existing cluster (`scheduler`,
    over TLS with `tls`).

    With no shard left to do (a resumed store that is complete) it returns at once: no
    cluster is started and no scheduler is contacted, as `run_local` does nothing then."""
    if not shards:
        return
    from dask.distributed import Client, LocalCluster

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=workers or 1,
            threads_per_worker=1,
            processes=True,
            resources={"GPU": 1} if spec.uses_gpu() else None,
            dashboard_address=None,
        )
    try:
        # Without `tls`, Client's default Security() reads dask's configuration
        # (distributed.comm.tls.*), so clusters secured there keep working.
        security = {} if tls is None else {"security": tls.security()}
        with Client(cluster if cluster is not None else scheduler, **security) as client:
            _submit_and_collect(client, store, shards, items, spec, retry_failed, summary, retries, progress)
    finally:
        if cluster is not None:
            cluster.close()


def _submit_and_collect(
    client: Any,
    store: CacheStore,
    shards: Sequence[int],
    items: Sequence[Any],
    spec: BackendSpec,
    retry_failed: bool,
    summary: RunSummary,
    retries: int,
    progress: bool,
) -> None:
    from dask.distributed import as_completed

    resources = {"GPU": 1} if spec.uses_gpu() else None
    futures = {}
    for shard in shards:
        start, stop = store.layout.shard_range(shard)
        future = client.submit(
            run_shard_task,
            str(store.path),
            shard,
            list(items[start:stop]),
            spec,
            retry_failed,
            key=f"keydiff3d-shard-{shard}-{store.metadata.fingerprint[:8]}-{time.time_ns()}",
            retries=retries,
            resources=resources,
            pure=False,
        )
        futures[future] = (shard, stop - start)
    with tqdm(
        total=store.layout.samples_in(list(shards)), desc="stage one", unit="sample", disable=not progress
    ) as bar:
        for future in as_completed(futures):
            shard, count = futures[future]
            try:
                summary.add(future.result())
            except Exception as exc:  # noqa: BLE001 - reported; the shard stays pending
                summary.errors.append((shard, f"{type(exc).__name__}: {exc}"))
            bar.update(count)
