"""Stage-two benchmarks: loader throughput, time per step and peak memory per preset, data wait, edge maps.

Run by `nox -s bench` as

    python benchmarks/bench_stage_two.py [--out bench-results/stage_two.json]
        [--samples N] [--steps S]

Everything runs on a synthetic-world render cache (128 px, 4 views, no diffusion
features, so both presets use the pixel feature source and the SSIM loss: no
weights can be downloaded here). Each preset's step time and peak memory are
measured in a fresh subprocess, so one preset's allocations do not hide another's.
The paper preset runs a single timed step after one warm-up step. The cpu preset is also
timed with `edge_maps_reference` (the former edge-map search) in place of `edge_maps`, and
the two edge-map functions alone, forward and backward on one thread, at its shapes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_common import machine_info

from pipeline.generate import GenerateJob, run_generate
from stages.config import GenerationConfig
from stages.keypoints import geometry
from stages.keypoints.config import preset
from stages.keypoints.data import CacheTrainingSet, StepBatchSampler, keep_batch
from stages.keypoints.training import FitJob, build_model, fit, step_generator
from stages.synthetic.world import SyntheticWorldConfig


def make_cache(folder: Path, samples: int) -> Path:
    out = folder / "humanoid.zarr"
    world = SyntheticWorldConfig("humanoid", "train", num_samples=samples, seed=0)
    run_generate(
        GenerateJob(None, None, out, GenerationConfig(resolution=128), "render", world, progress=False)
    )
    return out


def loader_throughput(cache: Path, workers: int, batches: int, batch_size: int = 4) -> float:
    """Samples per second the loader alone delivers at the cpu preset's render size."""
    config = preset("cpu")
    dataset = CacheTrainingSet([cache], 4, config.render_size, with_features=False)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=StepBatchSampler(len(dataset), batch_size, 0, 0, batches + 2),
        num_workers=workers,
        collate_fn=keep_batch,
    )
    iterator = iter(loader)
    next(iterator), next(iterator)  # workers started and warm
    tic = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - tic)


def edge_map_times(repeats: int) -> dict:
    """Median seconds of `edge_maps` and `edge_maps_reference`, forward and backward, one thread.

    The shapes are the cpu preset's (B, V, N, render size, sigma); keypoints are uniform in
    the image and the weights softplus of normal draws, as the model makes them.
    """
    config = preset("cpu")
    batch, views = config.batch_size, config.num_views
    keypoints, size = config.num_keypoints, config.render_size
    draws = torch.Generator().manual_seed(0)
    uv = (torch.rand(batch, views, keypoints, 2, generator=draws) * size).requires_grad_()
    adjacency = torch.randn(keypoints, keypoints, generator=draws)
    weights = torch.nn.functional.softplus(adjacency).requires_grad_()
    functions = {"reference": geometry.edge_maps_reference, "fast": geometry.edge_maps}
    seconds: dict[str, list[float]] = {name: [] for name in functions}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(repeats + 1):  # the first round warms up; the two take turns
            for name, function in functions.items():
                tic = time.perf_counter()
                function(uv, weights, size, size, config.edge_sigma).sum().backward()
                seconds[name].append(time.perf_counter() - tic)
    finally:
        torch.set_num_threads(threads)
    medians = {name: statistics.median(values[1:]) for name, values in seconds.items()}
    return {
        "shape_bvn_size": [batch, views, keypoints, size],
        "sigma": config.edge_sigma,
        "repeats": repeats,
        "reference_seconds": medians["reference"],
        "fast_seconds": medians["fast"],
        "speedup": medians["reference"] / medians["fast"],
    }


def step_in_subprocess(cache: Path, name: str, steps: int, *, reference_edge_maps: bool = False) -> dict:
    """Run `--one-preset` in a fresh interpreter and parse its JSON line."""
    command = [sys.executable, __file__, "--one-preset", name, "--cache", str(cache), "--steps", str(steps)]
    if reference_edge_maps:
        command.append("--reference-edge-maps")
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def one_preset(cache: Path, name: str, steps: int, reference_edge_maps: bool = False) -> dict:
    """Time `steps` training steps of a preset on one fixed batch (after a warm-up step)."""
    from stages.keypoints.losses import training_losses
    from stages.keypoints.perceptual import build_perceptual_loss

    if reference_edge_maps:
        # The model calls geometry.edge_maps; this interpreter times the former search instead.
        geometry.edge_maps = geometry.edge_maps_reference

    config = preset(name, feature_source="pixels", perceptual="ssim")
    model, _ = build_model(config, (cache,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    dataset = CacheTrainingSet([cache], config.num_views, config.render_size, with_features=False)
    batch = dataset.__getitems__(list(range(config.batch_size)))
    perceptual = build_perceptual_loss("ssim", None)
    times = []
    for step in range(steps + 1):
        tic = time.perf_counter()
        terms, _ = training_losses(model, perceptual, batch, config, step_generator(0, step))
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
        times.append(time.perf_counter() - tic)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "preset": name,
        "edge_maps": "reference" if reference_edge_maps else "fast",
        "seconds_per_step": sum(times[1:]) / steps,
        "peak_rss_mib": peak_mib,
        "parameters": parameters,
        "volume_size": config.volume_size,
        "render_size": config.render_size,
        "batch_size": config.batch_size,
    }


def data_wait(cache: Path, folder: Path, steps: int) -> dict:
    """A real cpu-preset run through the trainer: seconds per step and share spent waiting for data."""
    config = dataclasses.replace(
        preset("cpu", feature_source="pixels", perceptual="ssim"), steps=steps, checkpoint_every=steps
    )
    summary = fit(FitJob((cache,), folder / "run", config))
    return {
        "steps": steps,
        "seconds_per_step": summary.seconds / steps,
        "wait_fraction": summary.wait_fraction,
        "loader_workers": config.loader_workers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/stage_two.json"))
    parser.add_argument("--samples", type=int, default=256, help="samples in the render cache")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of the cpu preset")
    parser.add_argument("--edge-repeats", type=int, default=10, help="timed edge-map calls of each kind")
    parser.add_argument("--one-preset", help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--reference-edge-maps", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_preset:
        print(json.dumps(one_preset(args.cache, args.one_preset, args.steps, args.reference_edge_maps)))
        return

    edges = edge_map_times(args.edge_repeats)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cache = make_cache(folder, args.samples)
        loader = {f"workers={w}": loader_throughput(cache, w, batches=30) for w in (0, 1, 2)}
        presets = [
            step_in_subprocess(cache, "cpu", args.steps),
            step_in_subprocess(cache, "cpu", args.steps, reference_edge_maps=True),
            step_in_subprocess(cache, "paper", 1),
        ]
        wait = data_wait(cache, folder, args.steps * 2)

    print(f"\nStage two on {platform.machine()}, torch threads {torch.get_num_threads()}")
    print("loader alone (samples/s, batch 4, 64 px):")
    for name, value in loader.items():
        print(f"  {name:10s} {value:8.1f}")
    print(f"{'preset':8s} {'edges':9s} {'s/step':>8s} {'peak MiB':>9s} {'params':>10s}  M  render  batch")
    for row in presets:
        print(
            f"{row['preset']:8s} {row['edge_maps']:9s} {row['seconds_per_step']:8.3f} "
            f"{row['peak_rss_mib']:9.0f} {row['parameters']:10d} "
            f"{row['volume_size']:3d} {row['render_size']:6d} {row['batch_size']:5d}"
        )
    b, v, n, size = edges["shape_bvn_size"]
    print(
        f"edge maps alone (B {b}, V {v}, N {n}, {size} px, sigma {edges['sigma']}), forward + backward, "
        f"one thread, median of {edges['repeats']}: reference {1000 * edges['reference_seconds']:.1f} ms, "
        f"fast {1000 * edges['fast_seconds']:.1f} ms ({edges['speedup']:.1f}x)"
    )
    print(
        f"cpu preset through the trainer: {wait['seconds_per_step']:.3f} s/step, waiting for data "
        f"{100 * wait['wait_fraction']:.1f}% ({wait['loader_workers']} loader worker)"
    )
    record = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(torch=torch.__version__, torch_threads=torch.get_num_threads()),
        "cache_samples": args.samples,
        "loader_samples_per_second": loader,
        "presets": presets,
        "trainer": wait,
        "edge_maps": edges,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
