"""`keydiff3d`: the main jobs (demo, predict, manipulate); the stages have their own tools
(`keydiff3d-cache`, `keydiff3d-train`)."""

from __future__ import annotations

from pathlib import Path

import typer
from tqdm.auto import tqdm

from cache_schema import CacheError
from pipeline.cli_errors import fail
from pipeline.manipulate_cli import app as manipulate_app
from pipeline.out_paths import check_out_folder
from stages.devices import resolve_device
from stages.errors import StageError

app = typer.Typer(
    help="KeyDiff3D: unsupervised 3D keypoints of an object from one image.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(manipulate_app, name="manipulate")


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("demo"), "--out", help="Folder for caches, run, evaluation, report.md."),
    minutes: float = typer.Option(15.0, help="Wall-clock budget; scales the data and the training steps."),
    category: str = typer.Option("humanoid", help="humanoid | quadruped"),
    train_samples: int | None = typer.Option(None, help="Override the budget's training cache size."),
    test_samples: int | None = typer.Option(None, help="Override the budget's held-out cache size."),
    steps: int | None = typer.Option(None, help="Override the budget's training steps."),
    seed: int = typer.Option(0, help="Seed of the rendered poses, training and regressors."),
    threads: int | None = typer.Option(
        None,
        "--threads",
        help="Torch CPU threads for training and evaluation (default 1 on every machine, so results "
        "are the same anywhere; N > 1 rounds differently).",
    ),
) -> None:
    """Render the synthetic world, train without labels, evaluate on held-out clips, write a report."""
    from pipeline.demo import PROTOCOL, DemoConfig, against_mean_shape, run_demo

    try:
        check_out_folder(out)
        config = DemoConfig(out, minutes, category, train_samples, test_samples, steps, seed, threads=threads)
        bars: dict[str, tqdm] = {}

        def on_step(step: int, total: int, terms: dict[str, float]) -> None:
            if "train" not in bars:
                bars["train"] = tqdm(desc="training", unit="step")
            bar = bars["train"]
            bar.total = total
            bar.n = step
            bar.set_postfix({"loss": f"{terms.get('total', float('nan')):.4f}"}, refresh=False)
            bar.refresh()

        def on_eval(samples: int) -> None:
            if "eval" not in bars:
                bars["eval"] = tqdm(desc="predicting for evaluation", unit="sample")
            bars["eval"].update(samples)

        result = run_demo(config, on_step, on_eval)
        for bar in bars.values():
            bar.close()
    except (StageError, CacheError, ValueError, OSError) as exc:
        fail(str(exc))
    s = result.summary
    took = s["minutes"]
    typer.echo(
        f"\ndemo done in {took['total']:.1f} min (budget {minutes:g}): render {took['render']:.1f}, "
        f"train {took['train']:.1f}, evaluate {took['evaluate']:.1f}"
    )
    typer.echo(
        f"  {s['train_samples']} training / {s['test_samples']} held-out samples, {s['steps']} steps "
        f"at {s['seconds_per_step']:.2f} s/step"
    )
    for row in s["results"] + s["baselines"]:
        name = row.get("method", f"ours + {row['regression']}")
        typer.echo(
            f"  {name:34s} MPJPE {row['mpjpe_mm']:7.1f}  N-MPJPE {row['n_mpjpe_mm']:7.1f}  "
            f"P-MPJPE {row['p_mpjpe_mm']:7.1f}  flip-aware {row['pf_mpjpe_mm']:7.1f} mm"
        )
    typer.echo(
        f"  keypoint consistency (mean over keypoints) {s['keypoint_consistency']['mean_consistency']:.2f}"
    )
    seen = s["seen_motions"]
    for label, scored in (
        ("held-out motions", s),
        (f"seen motions ({seen['test_samples']} new draws)", seen),
    ):
        typer.echo(f"  {label}: {against_mean_shape(scored)}")
        typer.echo(f"  {' ' * len(label)}  {against_mean_shape(scored, PROTOCOL)}")
    typer.echo(f"  report:  {result.report}")
    for name, path in s["files"].items():
        typer.echo(f"  {name + ':':20s} {path}")


@app.command("predict")
def predict_command(
    images: list[Path] = typer.Argument(
        ..., help="Image files or folders (their images, recursively, sorted by path)."
    ),
    model: Path = typer.Option(..., "--model", help="Local SV3D-p model directory (stage one)."),
    run: Path = typer.Option(..., "--run", help="Training run directory (`keydiff3d-train fit --out`)."),
    out: Path = typer.Option(..., "--out", help="Folder for keypoints.json and the overlay PNGs."),
    cache: Path | None = typer.Option(None, help="Keep stage one's output here (default: temporary)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    stage_one_defaults: bool = typer.Option(
        False,
        help="For a run from before stage_one.json whose training cache is gone (e.g. synthetic "
        "renders): run stage one with the SV3D-p defaults instead of refusing.",
    ),
) -> None:
    """3D keypoints of each image (model frame) and 2D keypoints in the original image's pixels."""
    from pipeline.predict_images import PredictJob, predict_images

    try:
        check_out_folder(out)
        job = PredictJob(
            tuple(images),
            model,
            run,
            out,
            cache,
            resolve_device(device),
            stage_one_defaults=stage_one_defaults,
        )
        record = predict_images(job, lambda note: typer.secho(f"note: {note}", fg=typer.colors.YELLOW))
    except (StageError, CacheError, ValueError, OSError) as exc:
        fail(str(exc))
    for item in record["predictions"]:
        typer.echo(f"  {item['image']}: {len(item['keypoints_3d'])} keypoints, overlay {item['overlay']}")
    for item in record["failed"]:
        typer.secho(f"  skipped {item['image']}: {item['reason']}", fg=typer.colors.YELLOW)
    typer.echo(
        f"wrote {out / 'keypoints.json'}: {len(record['predictions'])} images predicted, "
        f"{len(record['failed'])} skipped"
    )
    if not record["predictions"]:
        raise typer.Exit(1)
