"""Run directories (issue 13): a fit that fails before its first checkpoint leaves nothing in
the way of the next one, and `predict` refuses a model of the wrong size, or a run whose
stage-one settings are lost, before it runs stage one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("pybullet")

from typer.testing import CliRunner  # noqa: E402

import pipeline.predict_images  # noqa: E402
from cache_schema import CacheError  # noqa: E402
from pipeline.main_cli import app as main_app  # noqa: E402
from pipeline.train_cli import app  # noqa: E402
from stages.keypoints import run_dir, training  # noqa: E402
from stages.keypoints.run_stage_one import STAGE_ONE  # noqa: E402
from tests.fixtures.synthetic_caches import render_humanoid_cache  # noqa: E402

FIT = [
    "--perceptual", "ssim", "--num-keypoints", "5", "--volume-size", "8", "--workers", "0",
    "--batch-size", "2", "--checkpoint-every", "1", "--log-every", "1", "--no-progress", "--steps", "2",
]  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A 32 px render-backend cache (the tiny SV3D-p model makes 64 px views)."""
    return render_humanoid_cache(tmp_path_factory.mktemp("run_dir_faults") / "humanoid.zarr", 4)


def _fit(cache, run, *extra):
    return CliRunner().invoke(app, ["fit", str(cache), "--out", str(run), *FIT, *extra])


def _refused(result, *words):
    """Exit 2, one error line naming `words`, no traceback."""
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(w in errors[0] for w in words), result.output
    assert "Traceback" not in result.output


def _fail_at_step(monkeypatch, failing_step, error):
    """Make training_losses raise `error` at step `failing_step` (1-based); undo with monkeypatch."""
    real, calls = training.training_losses, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == failing_step:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "training_losses", failing)


# A fit that fails before step 1 leaves nothing that blocks the next try.


@pytest.mark.parametrize(
    ("error", "exit_code"),
    [(RuntimeError("boom in the first batch"), 1), (KeyboardInterrupt(), 130), (CacheError("bad shard"), 2)],
    ids=["error", "ctrl_c", "bad_cache"],
)
def test_a_fit_that_fails_in_its_first_step_leaves_no_folder(cache, tmp_path, monkeypatch, error, exit_code):
    run = tmp_path / "new" / "parent" / "run"
    _fail_at_step(monkeypatch, 1, error)
    assert _fit(cache, run).exit_code == exit_code
    assert not (tmp_path / "new").exists()  # the run and the parents fit made are gone
    monkeypatch.undo()
    result = _fit(cache, run)
    assert result.exit_code == 0, result.output
    assert (run / "checkpoints" / "step_00000002").is_dir()


def test_a_failed_fit_in_an_existing_folder_keeps_the_folder_and_the_users_files(
    cache, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    _fail_at_step(monkeypatch, 1, RuntimeError("boom"))
    assert _fit(cache, run).exit_code == 1
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    monkeypatch.undo()
    assert _fit(cache, run).exit_code == 0
    assert (run / "notes.txt").read_text() == "mine"


def test_a_run_killed_before_its_first_checkpoint_is_started_afresh(cache, tmp_path, monkeypatch):
    run = tmp_path / "run"
    # A kill -9 runs no cleanup: the run config stays, with no checkpoint.
    monkeypatch.setattr(run_dir.StartedRun, "undo_if_no_checkpoint", lambda self: None)
    _fail_at_step(monkeypatch, 1, RuntimeError("killed"))
    assert _fit(cache, run).exit_code == 1
    assert (run / "config.json").is_file() and not (run / "checkpoints").exists()
    monkeypatch.undo()
    result = _fit(cache, run)
    assert result.exit_code == 0, result.output
    assert "stopped before its first checkpoint: starting it afresh" in result.output
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_a_run_with_a_checkpoint_is_kept_and_still_refused(cache, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _fail_at_step(monkeypatch, 2, RuntimeError("boom in step 2"))
    assert _fit(cache, run).exit_code == 1
    assert (run / "checkpoints" / "step_00000001").is_dir() and (run / "config.json").is_file()
    monkeypatch.undo()
    _refused(_fit(cache, run), "already holds a run", "--resume")
    result = _fit(cache, run, "--resume")
    assert result.exit_code == 0 and "trained steps 1..2" in result.output, result.output


def test_a_folder_with_someone_elses_config_json_is_refused_and_untouched(cache, tmp_path):
    run = tmp_path / "model"
    run.mkdir()
    (run / "config.json").write_text('{"_class_name": "UNet"}')
    _refused(_fit(cache, run), "already holds a run")
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]
    assert (run / "config.json").read_text() == '{"_class_name": "UNet"}'


def test_resume_saves_the_stage_one_settings_of_a_run_from_before_them(cache, tmp_path):
    run = tmp_path / "run"
    assert _fit(cache, run).exit_code == 0
    saved = (run / STAGE_ONE).read_text()
    (run / STAGE_ONE).unlink()  # as a run written before stage_one.json
    result = _fit(cache, run, "--resume")  # already at --steps: trains nothing
    assert result.exit_code == 0 and "trained steps 2..2" in result.output, result.output
    assert (run / STAGE_ONE).read_text() == saved


# predict checks the model against the run before stage one.


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run_dir_faults_run") / "run"
    result = _fit(cache, run)
    assert result.exit_code == 0, result.output
    return run


def test_fit_saves_the_stage_one_settings_in_the_run(trained, cache):
    saved = json.loads((trained / STAGE_ONE).read_text())
    assert saved["backend"] == "render" and saved["image_size"] == 32
    assert saved["generation"]["resolution"] == 32 and saved["cache"] == str(cache.resolve())


def _predict(run, model, tmp_path, *extra):
    images = Path(__file__).resolve().parents[1] / "examples" / "images"
    args = ["predict", str(images), "--model", str(model), "--run", str(run), "--device", "cpu"]
    return CliRunner().invoke(main_app, [*args, "--out", str(tmp_path / "out"), "--cache", *extra])


@pytest.fixture
def no_stage_one(monkeypatch):
    def generate(*args, **kwargs):
        raise AssertionError("stage one ran before the model was checked")

    monkeypatch.setattr(pipeline.predict_images, "run_generate", generate)


def test_predict_refuses_a_model_of_another_size_before_stage_one(
    trained, tiny_model_dir, tmp_path, no_stage_one
):
    kept = tmp_path / "kept.zarr"
    result = _predict(trained, tiny_model_dir, tmp_path, str(kept))
    _refused(result, "--model", "64 px", "32 px", str(trained))
    assert not kept.exists() and not (tmp_path / "out").exists()
    assert "note:" in result.output and "trained on synthetic renders" in result.output


def test_predict_refuses_an_old_run_whose_cache_is_gone(cache, tiny_model_dir, tmp_path, no_stage_one):
    copy = Path(shutil.copytree(cache, tmp_path / "gone.zarr"))
    run = tmp_path / "old_run"
    assert _fit(copy, run).exit_code == 0
    (run / STAGE_ONE).unlink()  # as a run written before stage_one.json
    shutil.rmtree(copy)
    kept = tmp_path / "kept.zarr"
    result = _predict(run, tiny_model_dir, tmp_path, str(kept))
    _refused(result, str(run), str(copy.resolve()), "is gone", "--stage-one-defaults")
    # With the defaults accepted, the model's size is checked next, still before stage one.
    result = _predict(run, tiny_model_dir, tmp_path, str(kept), "--stage-one-defaults")
    _refused(result, "64 px", "32 px")
    assert "stage-one settings unknown; using the SV3D-p defaults" in result.output
    assert not kept.exists()


def test_a_second_fit_on_a_run_in_use_is_refused_and_touches_nothing(cache, tmp_path):
    from pipeline.store_lock import hold_store_lock

    run = tmp_path / "run"
    with hold_store_lock(run, what="run"):  # another fit of this run is training
        _refused(_fit(cache, run), str(run), "run is in use by PID")
        assert not run.exists()
    result = _fit(cache, run)  # released: the run trains
    assert result.exit_code == 0, result.output
