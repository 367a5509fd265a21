"""The command lines are thin: check the wiring, messages and exit codes."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from pipeline.cache_cli import app
from pipeline.train_cli import app as train_app

FAST = ["--frames", "8", "--steps", "4", "--decode-chunk-size", "8", "--no-progress"]


def test_generate_inspect_verify_preview(tmp_path, tiny_model_dir, good_images):
    runner = CliRunner()
    out = tmp_path / "cli.zarr"
    result = runner.invoke(
        app, ["generate", str(good_images), "--model", str(tiny_model_dir), "--out", str(out), *FAST]
    )
    assert result.exit_code == 0, result.output
    assert "6 done now, 0 failed" in result.output and "samples/s" in result.output

    again = runner.invoke(
        app, ["generate", str(good_images), "--model", str(tiny_model_dir), "--out", str(out), *FAST]
    )
    assert again.exit_code == 0 and "0 done now, 0 failed, 6 skipped" in again.output

    other = runner.invoke(
        app,
        [
            "generate",
            str(good_images),
            "--model",
            str(tiny_model_dir),
            "--out",
            str(out),
            *FAST,
            "--tau",
            "300",
        ],
    )
    assert (
        other.exit_code == 2 and "different model or config" in other.output and "--overwrite" in other.output
    )

    inspected = runner.invoke(app, ["inspect", str(out)])
    assert inspected.exit_code == 0
    assert "6 done" in inspected.output and "features/up_blocks_2" in inspected.output
    assert '"tau": 500' in inspected.output

    verified = runner.invoke(app, ["verify", str(out)])
    assert verified.exit_code == 0 and "ok: no problems found" in verified.output

    png = tmp_path / "grid.png"
    shown = runner.invoke(app, ["preview", str(out), "--out", str(png), "--samples", "2"])
    assert shown.exit_code == 0 and png.stat().st_size > 1000


def test_bad_arguments_name_the_problem(tmp_path, tiny_model_dir, good_images):
    runner = CliRunner()
    missing = runner.invoke(
        app,
        ["generate", str(good_images), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "x.zarr")],
    )
    assert missing.exit_code == 2 and "nope" in missing.output and "make-tiny-model" in missing.output
    both = runner.invoke(
        app,
        [
            "generate",
            str(good_images),
            "--model",
            str(tiny_model_dir),
            "--out",
            str(tmp_path / "x.zarr"),
            "--workers",
            "2",
            "--scheduler",
            "tcp://127.0.0.1:1",
        ],
    )
    assert both.exit_code == 2 and "pick one" in both.output
    keep = runner.invoke(
        app,
        [
            "generate",
            str(good_images),
            "--model",
            str(tiny_model_dir),
            "--out",
            str(tmp_path / "x.zarr"),
            "--keep-azimuths",
            "90,180",
        ],
    )
    assert keep.exit_code == 2 and "must start with 0" in keep.output
    nothing = runner.invoke(app, ["verify", str(tmp_path / "none.zarr")])
    assert nothing.exit_code == 2 and "zarr.json missing" in nothing.output


def test_make_tiny_model_writes_a_loadable_directory(tmp_path):
    result = CliRunner().invoke(app, ["make-tiny-model", str(tmp_path / "tiny")])
    assert result.exit_code == 0
    index = json.loads((tmp_path / "tiny" / "model_index.json").read_text())
    assert {"unet", "vae", "image_encoder", "scheduler", "feature_extractor"} <= set(index)


def test_train_fit_names_a_missing_cache(tmp_path):
    result = CliRunner().invoke(
        train_app, ["fit", str(tmp_path / "absent.zarr"), "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 2 and "absent.zarr" in result.output
    assert not (tmp_path / "run").exists()
