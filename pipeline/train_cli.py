"""`keydiff3d-train`: stage two on the command line (thin: parse, build the config, call)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from tqdm.auto import tqdm

from cache_schema import CacheError, CacheReader
from pipeline.cli_errors import fail
from pipeline.out_paths import check_out_file, check_out_folder
from pipeline.store_lock import hold_store_lock, lock_path
from pipeline.train_report import preview_writer, write_loss_curve
from stages.devices import resolve_device
from stages.errors import StageError
from stages.keypoints.checkpoint import latest_checkpoint, load_run
from stages.keypoints.config import preset
from stages.keypoints.predict import predict_cache
from stages.keypoints.training import METRICS, FitJob, fit
from stages.threads import check_threads

app = typer.Typer(
    help="Stage two of KeyDiff3D: learn 3D keypoints from cached views by reconstruction.",
    no_args_is_help=True,
    add_completion=False,
)


def _feature_source(choice: str, caches: list[Path]) -> str:
    if choice != "auto":
        return choice
    has_features = bool(CacheReader(caches[0]).layout.feature_layers)
    return "diffusion" if has_features else "pixels"


@app.command("fit")
def fit_command(
    caches: list[Path] = typer.Argument(..., help="One or more stage-one caches (Zarr stores)."),
    out: Path = typer.Option(..., "--out", help="Run directory (config, checkpoints, metrics, previews)."),
    preset_name: str = typer.Option(
        "cpu", "--preset", help="paper | cpu (then the options below override it)."
    ),
    steps: int | None = typer.Option(None, help="Total training steps (with --resume: continue up to this)."),
    seed: int | None = typer.Option(None, help="Seed of initialisation, batches and augmentation."),
    batch_size: int | None = typer.Option(None, help="Samples per step."),
    num_keypoints: int | None = typer.Option(None, help="N, keypoints to discover (18, 32, 48...)."),
    views: int | None = typer.Option(None, help="K, cached views used (input first); 1 = single view."),
    volume_size: int | None = typer.Option(None, help="M, voxels per side."),
    features: str = typer.Option(
        "auto",
        help="diffusion (cached UNet features) | pixels (CNN over views) | auto (diffusion if cached).",
    ),
    aggregation: str | None = typer.Option(
        None, help="softmax (attention over views) | mean (visible views)."
    ),
    perceptual: str | None = typer.Option(
        None, help="vgg (VGG16 ImageNet features, needs the weights) | ssim (explicit fallback)."
    ),
    vgg_weights: Path | None = typer.Option(
        None, help="VGG16 checkpoint (vgg16-397923af.pth); default: the torch hub cache."
    ),
    lr: float | None = typer.Option(None, help="Learning rate of the keypoint network."),
    lr_reconstruction: float | None = typer.Option(None, help="Learning rate of the reconstruction network."),
    lr_schedule: str | None = typer.Option(
        None, help="constant (the paper) | cosine (every rate decays to 0 at the last step)."
    ),
    lambda_rotation: float | None = typer.Option(None, help="Weight of the 3D rotation consistency loss."),
    pixel_encoder: str | None = typer.Option(
        None, help="With --features pixels: shallow (13 px receptive field) | deep (about 127 px)."
    ),
    pixel_input_size: int | None = typer.Option(
        None, help="Side at which the pixel encoder reads the views (0: the render size)."
    ),
    lambda_colour: float | None = typer.Option(None, help="Weight of the L1 colour term."),
    appearance_transport: bool | None = typer.Option(
        None, help="Carry each keypoint's view-0 appearance to its projection in every view."
    ),
    appearance_hidden: float | None = typer.Option(
        None, help="Share of 16 x 16 blocks hidden in the decoder's view of the input (AutoLink: 0.8)."
    ),
    lambda_identity: float | None = typer.Option(
        None, help="Weight of the contrastive term that pays keypoints for staying on one part (0: off)."
    ),
    lambda_bend: float | None = typer.Option(
        None, help="Weight of the consistency term under random bends of the lifted volume (0: off)."
    ),
    lambda_outside: float | None = typer.Option(
        None, help="Weight of a term on the edge map over the background alone (0: off)."
    ),
    lambda_rigid: float | None = typer.Option(
        None, help="Weight of the term that asks each keypoint for a partner at a steady distance (0: off)."
    ),
    lambda_concentration: float | None = typer.Option(
        None, help="Weight of the spread of each keypoint's voxel distribution (0: off)."
    ),
    lambda_coverage: float | None = typer.Option(
        None, help="Weight of the chamfer term from each view's foreground to the nearest keypoint (0: off)."
    ),
    structure_heatmaps: bool | None = typer.Option(
        None, help="Feed the decoder each keypoint's heatmap beside the edge map (the paper; off: AutoLink)."
    ),
    adjacency_init: float | None = typer.Option(None, help="Initial edge logit (AutoLink: about -4)."),
    adjacency_lr_scale: float | None = typer.Option(None, help="Learning-rate multiplier of edge logits."),
    keypoint_spread: float | None = typer.Option(
        None, help="Start keypoints on learned anchors spread at this fraction of the volume (0: centre)."
    ),
    keypoint_spread_steps: int | None = typer.Option(
        None, help="Fade the spread start's prior out over this many steps (0: it holds for the whole run)."
    ),
    checkpoint_every: int | None = typer.Option(None, help="Steps between checkpoints (each writes a PNG)."),
    log_every: int | None = typer.Option(None, help="Steps between metrics.jsonl lines."),
    workers: int | None = typer.Option(None, help="Data loader worker processes."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    threads: int | None = typer.Option(
        None,
        "--threads",
        help="Torch CPU threads (default 1 on every machine, so the losses are the same anywhere; "
        "N > 1 is faster on idle cores and repeats its own bits, but rounds differently).",
    ),
    resume: bool = typer.Option(False, help="Continue the run in --out from its last checkpoint."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train the keypoint model on cached views (and features); resumable."""
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # for the lock
    try:
        check_out_folder(out)
        check_threads(threads)  # before the progress bar is drawn
        config = preset(
            preset_name,
            steps=steps,
            seed=seed,
            batch_size=batch_size,
            num_keypoints=num_keypoints,
            num_views=views,
            volume_size=volume_size,
            feature_source=_feature_source(features, caches),
            aggregation=aggregation,
            perceptual=perceptual,
            lr=lr,
            lr_reconstruction=lr_reconstruction,
            lr_schedule=lr_schedule,
            lambda_rotation=lambda_rotation,
            pixel_encoder=pixel_encoder,
            pixel_input_size=pixel_input_size,
            lambda_colour=lambda_colour,
            appearance_transport=appearance_transport,
            appearance_hidden=appearance_hidden,
            lambda_identity=lambda_identity,
            lambda_bend=lambda_bend,
            lambda_outside=lambda_outside,
            lambda_rigid=lambda_rigid,
            lambda_concentration=lambda_concentration,
            lambda_coverage=lambda_coverage,
            structure_heatmaps=structure_heatmaps,
            adjacency_init=adjacency_init,
            adjacency_lr_scale=adjacency_lr_scale,
            keypoint_spread=keypoint_spread,
            keypoint_spread_steps=keypoint_spread_steps,
            checkpoint_every=checkpoint_every,
            log_every=log_every,
            loader_workers=workers,
        )
        job = FitJob(tuple(caches), out, config, device, resume, vgg_weights, threads)
        bar = tqdm(total=config.steps, desc="training", unit="step", disable=not progress)

        def on_step(step: int, terms: dict[str, float]) -> None:
            bar.n = step
            bar.set_postfix({k: f"{v:.4f}" for k, v in terms.items()}, refresh=False)
            bar.refresh()

        # One fit per run directory: a second one would restart or resume a run that is
        # still training. The lock lies beside --out (as a store's does).
        with hold_store_lock(out, what="run"):
            try:
                summary = fit(job, on_step, preview_writer(out), notice=tqdm.write)
            finally:
                if not out.exists():  # a failed fresh fit removed its run: leave no lock behind
                    lock_path(out).unlink(missing_ok=True)
        bar.close()
    except (StageError, CacheError, ValueError, OSError) as exc:
        _remove_empty(made)
        fail(str(exc))
    except BaseException:
        _remove_empty(made)
        raise
    curve = write_loss_curve(out / METRICS, out / "loss_curve.png")
    ran = summary.final_step - summary.start_step
    typer.echo(
        f"trained steps {summary.start_step}..{summary.final_step} ({ran} this run) "
        f"in {summary.seconds:.1f} s"
    )
    if ran:
        typer.echo(
            f"  {summary.seconds / ran:.3f} s/step, waiting for data "
            f"{100 * summary.wait_fraction:.1f}% of the time"
        )
        typer.echo("  last losses: " + ", ".join(f"{k} {v:.4f}" for k, v in summary.last_terms.items()))
    typer.echo(f"  checkpoint: {latest_checkpoint(out)}")
    typer.echo(f"  previews:   {out / 'previews'}")
    typer.echo(f"  losses:     {out / METRICS} and {curve}")


@app.command("predict")
def predict_command(
    run_dir: Path = typer.Argument(
        ..., help="A run directory written by `fit` (its last checkpoint is used)."
    ),
    cache: Path = typer.Argument(..., help="Cache to predict (every done sample)."),
    out: Path = typer.Option(..., "--out", help="keypoints.json or keypoints.npz"),
    batch_size: int = typer.Option(8, help="Samples per forward pass."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
) -> None:
    """Keypoints for every done sample: 3D in the cache's world frame and 2D per view."""
    try:
        if out.suffix not in (".json", ".npz"):
            raise ValueError(f"--out {out}: must end in .json or .npz")
        check_out_file(out)
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        where = resolve_device(device)
        run = load_run(run_dir, where)
        if run.note:
            typer.echo(run.note)
        total = len(CacheReader(cache).done_indices())
        with tqdm(total=total, desc="predicting", unit="sample") as bar:
            result = predict_cache(run.model, cache, run.num_views, batch_size, where, bar.update)
    except (StageError, CacheError, ValueError, OSError) as exc:
        fail(str(exc))
    result["edge_weights"] = run.model.edge_weights().detach().cpu().numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npz":
        np.savez(out, **result)
    else:
        record = {k: v.tolist() for k, v in result.items()}
        record["checkpoint"] = str(run.checkpoint)
        record["frame"] = "cache world frame (keypoints_3d); view pixels, corner at 0 (keypoints_2d)"
        out.write_text(json.dumps(record))
    typer.echo(f"wrote keypoints of {len(result['index'])} samples from {run.checkpoint.name} to {out}")


@app.command("eval")
def eval_command(
    run_dir: Path = typer.Argument(..., help="A run directory written by `fit`."),
    train_cache: Path = typer.Option(
        ..., "--train-cache", help="Cache whose ground truth fits the regressors."
    ),
    test_cache: Path = typer.Option(..., "--test-cache", help="Cache the errors are measured on."),
    out: Path = typer.Option(..., "--out", help="Folder for metrics.json, table.md and the PNGs."),
    regressor: str = typer.Option("linear,mlp", help="Comma list of linear | mlp."),
    ridge: float = typer.Option(0.0, help="Ridge penalty of the linear regressor."),
    seed: int = typer.Option(0, help="Seed of the MLP regressor."),
    mlp_seeds: int = typer.Option(
        1,
        "--mlp-seeds",
        help="MLPs fitted from seeds SEED, SEED+1, ...; the mlp row (labelled 'mlp xN' above 1) "
        "predicts their mean. 1 is the paper's single MLP.",
    ),
    mirror_mlp_seeds: int = typer.Option(
        5,
        "--mirror-mlp-seeds",
        help="With --mirror-fit: MLPs averaged in the mirror-image row ('mlp+mirror x5' by default, "
        "the project's regression protocol).",
    ),
    root_joint: int = typer.Option(0, help="Joint index N-MPJPE centres on."),
    space: str = typer.Option(
        "auto", help="3d (MPJPE family) | 2d (input-view error / image size, birds and dogs) | auto"
    ),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    threads: int | None = typer.Option(
        None,
        "--threads",
        help="Torch CPU threads for predicting (default 1: the same numbers on every machine).",
    ),
    mirror_fit: bool = typer.Option(
        False,
        "--mirror-fit",
        help="Also fit the MLP on the training pairs plus their mirror images (views flipped, joints "
        "reflected and relabelled left/right), the mean of --mirror-mlp-seeds of them: an extra "
        "'mlp+mirror x5' row, the project's regression protocol. 3D, pixel-feature runs only.",
    ),
) -> None:
    """Map discovered keypoints to ground-truth joints and report MPJPE, N-MPJPE, P-MPJPE and
    flip-aware P-MPJPE (mm), per joint too, and how consistently each keypoint stays on one joint."""
    from pipeline.evaluate import run_eval
    from stages.evaluation.evaluate import EvalConfig

    try:
        check_out_folder(out)
        check_threads(threads)  # before the progress bar is drawn
        config = EvalConfig(
            tuple(r.strip() for r in regressor.split(",") if r.strip()),
            ridge,
            seed,
            root_joint,
            mlp_seeds,
            mirror_mlp_seeds,
        )
        with tqdm(desc="predicting", unit="sample") as bar:
            record = run_eval(
                run_dir, train_cache, test_cache, out, config, resolve_device(device), bar.update, space,
                threads, mirror_fit,
            )  # fmt: skip
    except (StageError, CacheError, ValueError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"train {record['train_samples']} samples, test {record['test_samples']} samples")
    typer.echo((out / "table.md").read_text().rstrip())
    if "keypoint_consistency" in record:
        mean = record["keypoint_consistency"]["mean_consistency"]
        typer.echo(f"keypoint consistency (share of samples on its usual nearest joint), mean {mean:.2f}")
    written = ", ".join(
        str(path) for path in sorted(out.iterdir()) if path.suffix in (".json", ".md", ".png")
    )
    typer.echo(f"wrote {written}")


def _remove_empty(folders: list[Path]) -> None:
    """The parent folders a failed fit created for its lock, deepest first, while empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
