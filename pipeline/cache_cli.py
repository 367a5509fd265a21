"""`keydiff3d-cache`: stage one on the command line (thin: parse, build configs, call)."""

from __future__ import annotations

from pathlib import Path

import typer

from cache_schema import CacheError
from pipeline import store_repair, store_report
from pipeline.cli_errors import USAGE_ERROR, fail
from pipeline.generate import GenerateJob, run_generate
from pipeline.out_paths import check_out_file
from pipeline.runner import SchedulerTLS
from stages.config import GenerationConfig, OrbitConfig
from stages.datasets.selection import DatasetSelection
from stages.errors import StageError
from stages.synthetic.versions import LATEST_WORLD_VERSION

app = typer.Typer(
    help="Stage one of KeyDiff3D: multi-view diffusion once per image, cached in Zarr.",
    no_args_is_help=True,
    add_completion=False,
)


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise typer.BadParameter(f"{option} takes comma-separated numbers, got {text!r}") from exc


def _world(source: str | None, split: str, num_samples: int, seed: int, version: int) -> object:
    if source is None or not source.startswith("synthetic:"):
        raise ValueError(f"--source must be synthetic:humanoid or synthetic:quadruped, got {source!r}")
    from stages.synthetic.world import SyntheticWorldConfig

    return SyntheticWorldConfig(source.split(":", 1)[1], split, num_samples, seed, version=version)


def _selection(
    source: str | None, split: str, stride: int | None, actions: str | None, cameras: str | None
) -> DatasetSelection:
    """What to read of a dataset; dataset-only options without a dataset are refused."""
    if source is None:
        options = (("--stride", stride), ("--actions", actions), ("--cameras", cameras))
        given = [name for name, value in options if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} need --source h36m:ROOT | cub:ROOT | dogs:ROOT")
        return DatasetSelection(split=split)
    camera_ids = tuple(c.strip() for c in cameras.split(",") if c.strip()) if cameras is not None else None
    return DatasetSelection(split=split, stride=stride, actions=actions or "all", cameras=camera_ids)


@app.command()
def generate(
    images: Path | None = typer.Argument(
        None, help="Folder of images (recursive), a list file, or one image (sv3d backend)."
    ),
    model: Path | None = typer.Option(
        None, "--model", help="Local SV3D-p model directory (diffusers layout)."
    ),
    out: Path = typer.Option(..., "--out", help="Zarr store to write (created or resumed)."),
    backend: str = typer.Option("sv3d", help="sv3d (diffusion on IMAGES) | render (the synthetic world)."),
    source: str | None = typer.Option(
        None,
        help="For --backend render: synthetic:humanoid | synthetic:quadruped. For sv3d, instead of "
        "IMAGES: a dataset with ground truth, h36m:ROOT | cub:ROOT | dogs:ROOT (layouts: README).",
    ),
    split: str = typer.Option(
        "train", help="train | test: disjoint motions (render) or the dataset's protocol split."
    ),
    stride: int | None = typer.Option(
        None, help="Datasets: every N-th frame (h36m, default 5) or image (cub, dogs, default 1)."
    ),
    actions: str | None = typer.Option(
        None, help="h36m: all (default) | paper (the six of KeyDiff3D) | comma list, e.g. Walking,Eating."
    ),
    cameras: str | None = typer.Option(None, help="h36m: comma list of camera ids (default: all four)."),
    num_samples: int = typer.Option(1000, help="For --backend render: samples to render."),
    world_version: int = typer.Option(
        LATEST_WORLD_VERSION,
        help="For --backend render: 2 colours body parts by class (same left and right) and adds "
        "a face, a chest badge and a quadruped head; 1 is the older world of random link colours.",
    ),
    features_model: Path | None = typer.Option(
        None,
        "--features-model",
        help="For --backend render: a local SV3D-p model directory (e.g. from make-tiny-model); "
        "its UNet decoder features at --tau of the RENDERED views are stored as --backend sv3d "
        "stores them. Default: no features.",
    ),
    workers: int | None = typer.Option(None, help="Start a dask LocalCluster with N worker processes."),
    scheduler: str | None = typer.Option(
        None, help="Use an existing dask scheduler, tcp://HOST:PORT or tls://HOST:PORT (see README)."
    ),
    tls_ca_file: Path | None = typer.Option(None, help="With a tls:// --scheduler: the cluster's CA (PEM)."),
    tls_cert: Path | None = typer.Option(
        None, help="With a tls:// --scheduler: this client's certificate (PEM)."
    ),
    tls_key: Path | None = typer.Option(
        None, help="With a tls:// --scheduler: this client's private key (PEM)."
    ),
    overwrite: bool = typer.Option(False, help="Delete an existing store and start afresh."),
    retry_failed: bool = typer.Option(False, help="Also redo samples recorded as failed."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    attention: str = typer.Option("auto", help="auto | xformers | sdpa"),
    dtype: str = typer.Option(
        "auto", help="Model compute dtype: auto (fp16 on CUDA, fp32 on CPU) | float16 | bfloat16 | float32."
    ),
    shard_size: int = typer.Option(16, help="Samples per shard (one task writes one shard)."),
    threads: int = typer.Option(
        1, help="Torch CPU threads per process (bytes are reproducible at a fixed count)."
    ),
    seed: int = typer.Option(0, help="Base seed; each sample's noise comes from (seed, sample id)."),
    frames: int = typer.Option(21, help="Frames in the generated orbit."),
    elevation: float = typer.Option(10.0, help="Orbit elevation, degrees."),
    azimuths: str | None = typer.Option(
        None, help="Comma-separated azimuth per frame (default: SV3D's order, input last)."
    ),
    keep_azimuths: str = typer.Option(
        "0,90,180,270", help="Views kept, by azimuth (nearest frame); must start with 0."
    ),
    fov: float = typer.Option(33.8, help="Camera field of view, degrees."),
    radius: float = typer.Option(2.0, help="Camera distance from the object centre."),
    steps: int = typer.Option(50, help="Sampler steps."),
    tau: int = typer.Option(500, help="Feature timestep on the 0..1000 scale."),
    tau_mapping: str = typer.Option("ddpm", help="ddpm | trajectory (see README)."),
    feature_layers: str | None = typer.Option(
        None, help="Comma-separated up-blocks to store (default: all)."
    ),
    feature_dtype: str = typer.Option("float16", help="float16 | float32"),
    resolution: int | None = typer.Option(
        None, help="Image size (default: the model's native size; 128 for --backend render)."
    ),
    object_fraction: float = typer.Option(0.85, help="Share of the square the object's longer side fills."),
    background_threshold: int = typer.Option(20, help="Foreground threshold against the background, 0..255."),
    min_guidance: float = typer.Option(1.0, help="Guidance scale at the orbit's ends."),
    max_guidance: float = typer.Option(2.5, help="Guidance scale mid-orbit."),
    cond_aug: float = typer.Option(1e-5, help="Noise augmentation of the conditioning frame."),
    decode_chunk_size: int = typer.Option(14, help="Frames decoded at once."),
    max_image_pixels: int = typer.Option(100_000_000, help="Larger images are recorded as failed."),
    retries: int = typer.Option(2, help="Dask retries of a failed shard task."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Generate views and features for every image into a Zarr store (resumable).

    With --backend render, render the synthetic world instead (views, masks, cameras and
    ground-truth joints; features only with --features-model): a perfect multi-view
    generator with 3D truth.
    """
    try:
        config = GenerationConfig(
            orbit=OrbitConfig(
                num_frames=frames,
                elevation_deg=elevation,
                azimuths_deg=_floats(azimuths, "--azimuths"),
                kept_azimuths_deg=_floats(keep_azimuths, "--keep-azimuths") or (),
                fov_deg=fov,
                radius=radius,
            ),
            resolution=resolution,
            num_inference_steps=steps,
            min_guidance_scale=min_guidance,
            max_guidance_scale=max_guidance,
            cond_aug=cond_aug,
            tau=tau,
            tau_mapping=tau_mapping,
            feature_layers=tuple(x for x in feature_layers.split(",") if x) if feature_layers else None,
            feature_dtype=feature_dtype,
            model_dtype=dtype,
            object_fraction=object_fraction,
            background_threshold=background_threshold,
            decode_chunk_size=decode_chunk_size,
            seed=seed,
            max_image_pixels=max_image_pixels,
        )
        job = GenerateJob(
            images=images,
            model=model,
            out=out,
            config=config,
            backend=backend,
            world=_world(source, split, num_samples, seed, world_version) if backend == "render" else None,
            dataset=source if backend == "sv3d" else None,
            selection=_selection(source if backend == "sv3d" else None, split, stride, actions, cameras),
            features_model=features_model,
            workers=workers,
            scheduler=scheduler,
            tls=_tls(tls_ca_file, tls_cert, tls_key),
            overwrite=overwrite,
            retry_failed=retry_failed,
            device=device,
            attention=attention,
            samples_per_shard=shard_size,
            threads=threads,
            retries=retries,
            progress=progress,
        )
        summary = run_generate(job)
    except (StageError, CacheError, ValueError, OSError) as exc:
        fail(str(exc))
    for line in summary.lines():
        typer.echo(line)
    if summary.errors:
        raise typer.Exit(1)


def _tls(ca_file: Path | None, cert: Path | None, key: Path | None) -> SchedulerTLS | None:
    """The three --tls-* options together, or None; one or two of them is an error."""
    given = [p for p in (ca_file, cert, key) if p is not None]
    if not given:
        return None
    if len(given) < 3:
        raise ValueError("--tls-ca-file, --tls-cert and --tls-key go together: give all three")
    return SchedulerTLS(ca_file, cert, key)


@app.command("make-tiny-model")
def make_tiny_model(
    directory: Path = typer.Argument(..., help="Output directory (new or empty)."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
    overwrite: bool = typer.Option(
        False, help="Replace a tiny model this command wrote there (never any other folder)."
    ),
) -> None:
    """Save a tiny, randomly initialised SV3D-p of the real classes (tests, CI, demo)."""
    from stages.sv3d.tiny import save_tiny_sv3d

    try:
        path = save_tiny_sv3d(directory, seed=seed, overwrite=overwrite)
    except (StageError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"tiny SV3D-p model written to {path}")


def _head_counts(text: str | None) -> int | tuple[int, ...] | None:
    """--unet-heads '5,10,20,20' or '8' (all levels); whether they fit is the converter's check."""
    if text is None:
        return None
    try:
        counts = tuple(int(x) for x in text.split(","))
        return counts[0] if len(counts) == 1 else counts
    except ValueError:
        fail(f"--unet-heads takes one integer or comma-separated integers per level, got {text!r}")


@app.command("convert-sv3d")
def convert_sv3d(
    checkpoint: Path = typer.Argument(..., help="Official sv3d_p.safetensors (generative-models layout)."),
    out_dir: Path = typer.Argument(..., help="Output model directory (diffusers layout)."),
    image_encoder: Path | None = typer.Option(
        None, help="Local CLIP vision model dir, if the checkpoint has no OpenCLIP weights."
    ),
    dtype: str = typer.Option("float16", help="Storage dtype: float16 | float32."),
    unet_heads: str | None = typer.Option(
        None,
        help="UNet attention heads: one count, or one per level comma-separated (e.g. 5,10,20,20). "
        "Default: channels / 64, as SV3D-p; needed when 64 does not divide a level's width.",
    ),
    clip_heads: int | None = typer.Option(
        None,
        help="OpenCLIP image tower heads. Default: width / 80, as ViT-H/14; needed when 80 "
        "does not divide the width.",
    ),
) -> None:
    """Convert the official SV3D-p checkpoint into the model directory `generate` loads."""
    import torch

    from stages.sv3d.convert import convert_sv3d_checkpoint

    if dtype not in ("float16", "float32"):
        fail(f"--dtype must be float16 or float32, got {dtype!r}")
    unet_head_counts = _head_counts(unet_heads)
    try:
        path = convert_sv3d_checkpoint(
            checkpoint,
            out_dir,
            image_encoder_dir=image_encoder,
            dtype=getattr(torch, dtype),
            unet_heads=unet_head_counts,
            clip_heads=clip_heads,
        )
    except (StageError, FileNotFoundError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"converted {checkpoint} -> {path}")


@app.command()
def inspect(store: Path = typer.Argument(..., help="A KeyDiff3D Zarr store.")) -> None:
    """Samples by status, every array's shape, chunks, shards and compression, the config."""
    try:
        for line in store_report.inspect_lines(store):
            typer.echo(line)
    except (CacheError, OSError) as exc:
        fail(str(exc))


@app.command()
def verify(
    store: Path = typer.Argument(..., help="A KeyDiff3D Zarr store."),
    repair: bool = typer.Option(
        False,
        "--repair",
        help="First mark every sample of a damaged shard (a missing file of a done sample, a chunk "
        "that does not decode) pending and remove its undecodable files, under the writer lock, "
        "so that rerunning generate redoes them; then verify.",
    ),
) -> None:
    """Check that every done sample's files exist, read every chunk back and check statuses,
    features and cameras; exit 2 on a missing file or a store that does not open, 1 on
    another problem."""
    try:
        if repair:  # one read of the store serves the repair and the report
            repaired, report = store_repair.repair_store(store)
        else:
            repaired, report = [], store_report.verify_report(store)
    except (CacheError, OSError) as exc:
        fail(str(exc))
    for line in repaired:
        typer.echo(f"repaired: {line}")
    if repair:
        typer.echo(
            f"repair marked {len(repaired)} shards pending; rerun the same generate command to redo them"
            if repaired
            else "repair: no damaged shard found"
        )
    typer.echo(f"checked {report.checked} chunks of {store}")
    for problem in report.missing + report.problems:
        typer.secho(f"problem: {problem}", fg=typer.colors.RED)
    if report.damaged and not repair:
        typer.echo("hint: `verify --repair` marks the damaged shards' samples pending for generate to redo")
    if report.missing:
        raise typer.Exit(USAGE_ERROR)
    if report.problems:
        raise typer.Exit(1)
    typer.echo("ok: no problems found")


@app.command()
def preview(
    store: Path = typer.Argument(..., help="A KeyDiff3D Zarr store."),
    out: Path = typer.Option(Path("preview.png"), "--out", help="PNG to write."),
    samples: int = typer.Option(4, help="How many done samples to show."),
) -> None:
    """Input, kept views and masks of a few samples as one PNG."""
    try:
        if out.suffix.lower() != ".png":
            raise ValueError(f"--out {out}: must end in .png")
        check_out_file(out)
        path = store_report.write_preview(store, out, samples)
    except (CacheError, OSError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"preview written to {path}")


if __name__ == "__main__":
    app()
