"""Faults of stage two (reliability issue): damaged or partly deleted checkpoints, bad --out
paths and options. Each is refused with one line naming the file or option and exit code 2,
or, for a run that lost latest.json or its newest checkpoint, resumed from the newest good one."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

pytest.importorskip("pybullet")

from typer.testing import CliRunner  # noqa: E402

from pipeline.cache_cli import app as cache_app  # noqa: E402
from pipeline.main_cli import app as main_app  # noqa: E402
from pipeline.train_cli import app  # noqa: E402
from stages.errors import ConfigError  # noqa: E402
from stages.evaluation.evaluate import EvalConfig  # noqa: E402
from stages.keypoints.checkpoint import latest_checkpoint, load_run  # noqa: E402
from stages.keypoints.checkpoint_files import DIGESTS  # noqa: E402
from stages.keypoints.config import StageTwoConfig  # noqa: E402
from stages.keypoints.errors import TrainingError  # noqa: E402
from tests.fixtures.stage_two import TINY_STAGE_TWO  # noqa: E402
from tests.fixtures.synthetic_caches import render_humanoid_cache  # noqa: E402

MODEL = "model/diffusion_pytorch_model.safetensors"
# The cpu preset shrunk to seconds a step; steps and --resume are added per call.
FIT = [
    "--perceptual", "ssim", "--num-keypoints", "5", "--volume-size", "8", "--workers", "0",
    "--batch-size", "2", "--checkpoint-every", "1", "--log-every", "1", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return render_humanoid_cache(tmp_path_factory.mktemp("train_faults") / "humanoid.zarr", 4)


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory, one_torch_thread) -> Path:
    """A CLI run of 2 steps with a checkpoint after each: step_00000001 and step_00000002."""
    run = tmp_path_factory.mktemp("train_faults_run") / "run"
    result = CliRunner().invoke(app, ["fit", str(cache), "--out", str(run), "--steps", "2", *FIT])
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run that a test may damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _fit(cache, run, *extra):
    return CliRunner().invoke(app, ["fit", str(cache), "--out", str(run), *FIT, *extra])


def _predict(run, cache, out, *extra):
    return CliRunner().invoke(app, ["predict", str(run), str(cache), "--out", str(out), *extra])


def _refused(result, *words):
    """Exit 2, one error line naming `words`, no traceback."""
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(w in errors[0] for w in words), result.output
    assert "Traceback" not in result.output


def _steps(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _checkpoint(run, step):
    return run / "checkpoints" / f"step_{step:08d}"


def _flip_tensor_bytes(path):
    data = bytearray(path.read_bytes())
    data[-6:-2] = bytes(b ^ 0xFF for b in data[-6:-2])  # inside the last tensor's data
    path.write_bytes(bytes(data))


# Item 2: a run that lost latest.json, or the checkpoint it names, resumes from the newest good one.


def test_resume_without_latest_json_continues_from_the_newest_complete_checkpoint(cache, run):
    (run / "checkpoints" / "latest.json").unlink()
    result = _fit(cache, run, "--resume", "--steps", "3")
    assert result.exit_code == 0, result.output
    assert "latest.json is missing: using step_00000002" in result.output
    assert "trained steps 2..3" in result.output
    assert _steps(run) == [1, 2, 3]


def test_resume_when_latest_json_names_a_deleted_checkpoint_says_which_one_it_uses(cache, run):
    shutil.rmtree(_checkpoint(run, 2))
    result = _fit(cache, run, "--resume", "--steps", "3")
    assert result.exit_code == 0, result.output
    assert "names step_00000002, which is missing: using step_00000001" in result.output
    assert _steps(run) == [1, 2, 3]  # the line of step 2 was logged again, once
    assert latest_checkpoint(run).name == "step_00000003"


def test_resume_skips_an_incomplete_checkpoint_and_refuses_when_none_is_complete(cache, run):
    (run / "checkpoints" / "latest.json").unlink()
    (_checkpoint(run, 2) / "optimizer.safetensors").unlink()
    assert latest_checkpoint(run).name == "step_00000001"
    (_checkpoint(run, 1) / "trainer_state.json").write_text('{"step": 1, "opt')
    metrics = (run / "metrics.jsonl").read_text()
    _refused(_fit(cache, run, "--resume", "--steps", "3"), "no checkpoint", "is complete")
    assert (run / "metrics.jsonl").read_text() == metrics  # nothing restarted from step 0


# Item 4: digests recorded at save and checked at every load.


def test_checkpoints_record_the_sha256_of_each_file(trained):
    digests = json.loads((_checkpoint(trained, 2) / DIGESTS).read_text())["sha256"]
    assert set(digests) == {MODEL, "model/config.json", "optimizer.safetensors", "trainer_state.json"}
    assert all(len(value) == 64 for value in digests.values())


def test_flipped_bytes_in_a_checkpoint_are_refused_by_name(cache, run, tmp_path):
    _flip_tensor_bytes(_checkpoint(run, 2) / MODEL)
    with pytest.raises(TrainingError, match="diffusion_pytorch_model.safetensors does not match its SHA-256"):
        load_run(run)
    _refused(_predict(run, cache, tmp_path / "k.json", "--device", "cpu"), "SHA-256", MODEL)
    _refused(_fit(cache, run, "--resume", "--steps", "3"), "SHA-256", MODEL)
    _flip_tensor_bytes(_checkpoint(run, 2) / MODEL)  # flipped back: intact again
    _flip_tensor_bytes(_checkpoint(run, 2) / "optimizer.safetensors")
    assert load_run(run).checkpoint.name == "step_00000002"  # prediction needs no optimiser
    _refused(_fit(cache, run, "--resume", "--steps", "3"), "SHA-256", "optimizer.safetensors")


def test_a_checkpoint_from_before_digests_still_loads_and_resumes(cache, run):
    for step in (1, 2):
        (_checkpoint(run, step) / DIGESTS).unlink()
    assert load_run(run).checkpoint.name == "step_00000002"
    result = _fit(cache, run, "--resume", "--steps", "3")
    assert result.exit_code == 0 and "trained steps 2..3" in result.output, result.output


# Item 5: damaged files and bad paths are one line and exit 2, never a traceback.


@pytest.mark.parametrize("digests", [True, False], ids=["with_digests", "before_digests"])
def test_a_damaged_safetensors_header_is_one_line(cache, run, tmp_path, digests):
    if not digests:
        for step in (1, 2):
            (_checkpoint(run, step) / DIGESTS).unlink()
    for name in (MODEL, "optimizer.safetensors"):
        path = _checkpoint(run, 2) / name
        path.write_bytes(b"\xff" * 8 + path.read_bytes()[8:])  # header length of 2^64 - 1
    _refused(_predict(run, cache, tmp_path / "k.json", "--device", "cpu"), MODEL)
    _refused(_fit(cache, run, "--resume", "--steps", "3"), MODEL)
    evaluate = ["eval", str(run), "--train-cache", str(cache), "--test-cache", str(cache)]
    _refused(CliRunner().invoke(app, [*evaluate, "--out", str(tmp_path / "e"), "--device", "cpu"]), MODEL)


@pytest.mark.parametrize("digests", [True, False], ids=["with_digests", "before_digests"])
def test_a_missing_optimizer_or_truncated_trainer_state_is_one_line(cache, run, digests):
    if not digests:
        (_checkpoint(run, 2) / DIGESTS).unlink()
    (_checkpoint(run, 2) / "optimizer.safetensors").unlink()
    _refused(_fit(cache, run, "--resume", "--steps", "3"), "optimizer.safetensors", "missing")
    shutil.copy(_checkpoint(run, 1) / "optimizer.safetensors", _checkpoint(run, 2))
    if digests:
        (_checkpoint(run, 2) / DIGESTS).unlink()  # the copied optimiser is of step 1
    state = _checkpoint(run, 2) / "trainer_state.json"
    state.write_text(state.read_text()[:40])
    _refused(_fit(cache, run, "--resume", "--steps", "3"), "trainer_state.json")


def test_out_that_is_an_existing_file_is_one_line(cache, trained, tmp_path, tiny_model_dir):
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me")
    _refused(_fit(cache, afile, "--steps", "1"), "notes.txt", "is a file")
    _refused(_predict(trained, cache, afile / "k.json", "--device", "cpu"), "notes.txt", "is a file")
    _refused(_predict(trained, cache, tmp_path, "--device", "cpu"), "--out")
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    args = ["predict", str(image), "--model", str(tiny_model_dir), "--run", str(trained), "--out", str(afile)]
    _refused(CliRunner().invoke(main_app, args), "notes.txt", "is a file")
    evaluate = ["eval", str(trained), "--train-cache", str(cache), "--test-cache", str(cache)]
    _refused(CliRunner().invoke(app, [*evaluate, "--out", str(afile)]), "notes.txt", "is a file")
    _refused(CliRunner().invoke(cache_app, ["preview", str(cache), "--out", str(afile)]), ".png")
    _refused(CliRunner().invoke(cache_app, ["preview", str(cache), "--out", str(tmp_path)]), ".png")
    nested = afile / "p.png"
    _refused(CliRunner().invoke(cache_app, ["preview", str(cache), "--out", str(nested)]), "is a file")
    assert afile.read_text() == "keep me"


def test_an_unknown_device_and_a_zero_batch_size_are_one_line(cache, trained, tmp_path):
    _refused(_fit(cache, tmp_path / "r", "--steps", "1", "--device", "tpu"), "--device", "tpu")
    _refused(_predict(trained, cache, tmp_path / "k.json", "--device", "tpu"), "--device", "tpu")
    evaluate = ["eval", str(trained), "--train-cache", str(cache), "--test-cache", str(cache)]
    _refused(CliRunner().invoke(app, [*evaluate, "--out", str(tmp_path / "e"), "--device", "tpu"]), "tpu")
    _refused(_predict(trained, cache, tmp_path / "k.json", "--batch-size", "0"), "--batch-size", ">= 1")
    assert not (tmp_path / "r").exists() and not (tmp_path / "k.json").exists()


# Item 6: numbers out of range are refused by the configs, naming the field, and by the CLIs.


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr", math.nan),
        ("lr", -1e-3),
        ("lr", 0.0),
        ("lr_reconstruction", math.inf),
        ("lambda_rotation", -0.1),
        ("lambda_colour", math.nan),
        ("lambda_perceptual", math.inf),
        ("lambda_mask", -1.0),
        ("adjacency_lr_scale", math.inf),
        ("adjacency_init", math.nan),
        ("appearance_hidden", -0.1),
        ("appearance_hidden", 1.0),
        ("lambda_identity", -0.5),
        ("identity_temperature", 0.0),
        ("lambda_bend", math.nan),
        ("bend_max_deg", -1.0),
        ("lambda_outside", -0.1),
        ("lambda_rigid", math.inf),
        ("rigid_min_distance", -0.1),
        ("lambda_concentration", math.nan),
        ("lambda_coverage", -1.0),
        ("seed", -1),
        ("steps", 0),
        ("batch_size", 0),
    ],
)
def test_the_stage_two_config_refuses_numbers_out_of_range(field, value):
    with pytest.raises(ConfigError, match=field):
        StageTwoConfig(**{**TINY_STAGE_TWO.to_dict(), field: value})


def test_the_eval_config_refuses_a_bad_ridge_and_seed():
    for fields in ({"ridge": math.nan}, {"ridge": -1.0}, {"seed": -1}):
        with pytest.raises(ValueError, match=next(iter(fields))):
            EvalConfig(**fields)


@pytest.mark.parametrize(
    ("option", "value", "field"),
    [
        ("--lr", "nan", "lr"),
        ("--lr", "-0.001", "lr"),
        ("--lambda-rotation", "inf", "lambda_rotation"),
        ("--lambda-colour", "-1", "lambda_colour"),
        ("--appearance-hidden", "1", "appearance_hidden"),
        ("--lambda-identity", "nan", "lambda_identity"),
        ("--lambda-bend", "-1", "lambda_bend"),
        ("--lambda-outside", "inf", "lambda_outside"),
        ("--lambda-rigid", "-1", "lambda_rigid"),
        ("--lambda-concentration", "nan", "lambda_concentration"),
        ("--lambda-coverage", "inf", "lambda_coverage"),
        ("--seed", "-1", "seed"),
        ("--steps", "0", "steps"),
        ("--batch-size", "0", "batch_size"),
    ],
)
def test_cli_fit_names_an_option_out_of_range(cache, tmp_path, option, value, field):
    result = CliRunner().invoke(
        app, ["fit", str(cache), "--out", str(tmp_path / "r"), *FIT, "--steps", "1", option, value]
    )
    _refused(result, field)
    assert not (tmp_path / "r").exists()


def test_cli_eval_and_demo_name_a_non_finite_number(cache, trained, tmp_path):
    evaluate = ["eval", str(trained), "--train-cache", str(cache), "--test-cache", str(cache)]
    _refused(CliRunner().invoke(app, [*evaluate, "--out", str(tmp_path / "e"), "--ridge", "nan"]), "ridge")
    demo = ["demo", "--out", str(tmp_path / "d"), "--minutes", "nan"]
    _refused(CliRunner().invoke(main_app, demo), "--minutes")
    assert not (tmp_path / "d").exists()
