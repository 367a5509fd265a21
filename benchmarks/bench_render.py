"""Synthetic-world benchmarks: bare renders, sample making, and samples into a cache.

Run by `nox -s bench` as

    python benchmarks/bench_render.py [--out bench-results/render.json]
        [--humanoid-samples N] [--quadruped-samples N] [--resolution PX] [--world-version 1|2]

Per category (humanoid, quadruped) at the default orbit (4 kept views):
1. bare renders: `render_views` alone on a posed figure (views per second);
2. samples made: `SyntheticRenderer` per sample (pose, colours, 4 renders, ground
   truth), nothing written;
3. samples into a cache: `run_generate` in-process, then with `workers=2` through dask
   (the same path as stage one), wall time from call to return.
The defaults (2000 humanoid + 1000 quadruped samples) take a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench_common import machine_info, print_notes, print_table, time_cluster_start, timed, write_report

from pipeline.backends import RenderBackendSpec
from pipeline.generate import GenerateJob, run_generate
from stages.config import GenerationConfig
from stages.synthetic.render import render_views
from stages.synthetic.versions import LATEST_WORLD_VERSION
from stages.synthetic.world import SyntheticWorldConfig

CATEGORIES = ("humanoid", "quadruped")
DEFAULTS = {"humanoid_samples": 2000, "quadruped_samples": 1000, "bare_samples": 100, "resolution": 128}


def bench_bare(category: str, config: GenerationConfig, samples: int, world_version: int) -> dict[str, Any]:
    """Rows 1 and 2: render_views on posed figures, then whole samples, nothing written."""
    world = SyntheticWorldConfig(category, "train", samples, seed=0, version=world_version)
    spec = RenderBackendSpec(world, config)
    renderer, build_s = timed(spec.build)
    ids = spec.world.sample_ids()
    renderer(ids[0])  # warm-up: first render allocates the renderer's buffers
    render_s = 0.0
    for sample_id in ids:
        renderer(sample_id)  # poses and dresses the figure; only the renders below are timed
        tic = time.perf_counter()
        # The light colour and coefficients are the sample's: the renderer keeps the last ones.
        render_views(renderer.client, renderer.intrinsics, renderer.world_to_camera, renderer.size)
        render_s += time.perf_counter() - tic
    _, make_s = timed(lambda: [renderer(sample_id) for sample_id in ids])
    views = samples * len(renderer.intrinsics)
    return {
        "build_s": build_s,
        "renders": views,
        "render_s": render_s,
        "renders_per_s": views / render_s,
        "samples_made": samples,
        "make_s": make_s,
        "samples_made_per_s": samples / make_s,
    }


def bench_cache(
    category: str,
    config: GenerationConfig,
    samples: int,
    workers: int | None,
    work: Path,
    shard: int,
    world_version: int,
) -> dict[str, Any]:
    """Row 3: run_generate into a fresh store, in-process (workers None) or on dask."""
    job = GenerateJob(
        None,
        None,
        work / f"{category}-{workers or 0}.zarr",
        config,
        backend="render",
        world=SyntheticWorldConfig(category, "train", samples, seed=0, version=world_version),
        workers=workers,
        samples_per_shard=shard,
        progress=False,
    )
    summary, wall = timed(lambda: run_generate(job))
    if summary.errors or summary.failed or summary.done != samples:
        raise RuntimeError(f"{category}: {summary.done}/{samples} done, {summary.errors} {summary.failed}")
    return {
        "samples": samples,
        "workers": workers,
        "wall_s": wall,
        "samples_per_s": samples / wall,
        "store_mb": summary.bytes_after / 1e6,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/render.json"))
    parser.add_argument("--humanoid-samples", type=int, default=DEFAULTS["humanoid_samples"])
    parser.add_argument("--quadruped-samples", type=int, default=DEFAULTS["quadruped_samples"])
    parser.add_argument(
        "--bare-samples", type=int, default=DEFAULTS["bare_samples"], help="samples of rows 1 and 2"
    )
    parser.add_argument("--resolution", type=int, default=DEFAULTS["resolution"])
    parser.add_argument("--samples-per-shard", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="dask workers of the parallel row")
    parser.add_argument(
        "--world-version", type=int, default=LATEST_WORLD_VERSION, help="synthetic world version, 1 or 2"
    )
    args = parser.parse_args(argv)
    for key in ("humanoid_samples", "quadruped_samples", "bare_samples", "samples_per_shard", "workers"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    config = GenerationConfig(resolution=args.resolution)
    machine = machine_info(pybullet=version("pybullet"), zarr=version("zarr"), dask=version("dask"))
    sizes = {"humanoid": args.humanoid_samples, "quadruped": args.quadruped_samples}
    print(f"KeyDiff3D synthetic-world benchmark, {date}")
    print(
        f"machine: {machine['cpu_count']} cores, load average {machine['load_average_1_5_15']}; "
        f"{args.resolution} px, world version {args.world_version}, "
        f"{config.orbit.num_kept_views} kept views, {args.samples_per_shard} samples/shard; "
        f"cache rows: {sizes['humanoid']} humanoid + {sizes['quadruped']} quadruped samples"
    )
    rows: list[dict[str, Any]] = []
    cluster_s = time_cluster_start(args.workers)
    with tempfile.TemporaryDirectory(prefix="bench_render_") as tmp:
        for category in CATEGORIES:
            bare = bench_bare(category, config, args.bare_samples, args.world_version)
            local = bench_cache(
                category, config, sizes[category], None, Path(tmp), args.samples_per_shard, args.world_version
            )
            parallel = bench_cache(
                category,
                config,
                sizes[category],
                args.workers,
                Path(tmp),
                args.samples_per_shard,
                args.world_version,
            )
            rows.append({"category": category, "bare": bare, "in_process": local, "dask": parallel})
    print_table(
        "Synthetic world on the CPU (ER_TINY_RENDERER)",
        [
            "category",
            "renders/s",
            "samples made/s",
            "samples",
            "cache s (in-process)",
            "cache samples/s",
            f"cache s (dask {args.workers})",
            "dask samples/s",
            "store MB",
        ],
        [
            [
                r["category"],
                r["bare"]["renders_per_s"],
                r["bare"]["samples_made_per_s"],
                r["in_process"]["samples"],
                r["in_process"]["wall_s"],
                r["in_process"]["samples_per_s"],
                r["dask"]["wall_s"],
                r["dask"]["samples_per_s"],
                r["in_process"]["store_mb"],
            ]
            for r in rows
        ],
    )
    notes = [
        "renders/s: render_views alone, one view per render, on the sample's posed figure",
        "samples made/s: SyntheticRenderer per sample (pose, colours, renders, ground truth), "
        "nothing written",
        "cache: the whole run_generate call (store creation, rendering, writing shards); the "
        f"dask row includes starting a LocalCluster (bare start+stop {cluster_s:.1f} s)",
        f"{args.bare_samples} samples for rows 1-2; seed 0, train split, world version {args.world_version}",
    ]
    print_notes(notes)
    body = {
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "cluster_start_stop_s": cluster_s,
        "rows": rows,
        "notes": notes,
    }
    return write_report(args, date, machine, started, {"generation": config.to_dict()}, body)


if __name__ == "__main__":
    main()
