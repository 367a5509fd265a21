"""Stage two end to end on tiny data: training, exact resume, checkpoints, guards, prediction."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pybullet")

from typer.testing import CliRunner  # noqa: E402

from cache_schema import CacheError, CacheReader  # noqa: E402
from pipeline.generate import GenerateJob, run_generate  # noqa: E402
from pipeline.train_cli import app  # noqa: E402
from stages.config import GenerationConfig  # noqa: E402
from stages.errors import ConfigError  # noqa: E402
from stages.keypoints import (
    training,  # noqa: E402
)
from stages.keypoints.checkpoint import latest_checkpoint, load_model  # noqa: E402
from stages.keypoints.config import StageTwoConfig  # noqa: E402
from stages.keypoints.errors import PerceptualWeightsMissing, TrainingError  # noqa: E402
from stages.keypoints.predict import predict_cache  # noqa: E402
from stages.keypoints.training import FitJob, fit  # noqa: E402
from stages.synthetic.world import SyntheticWorldConfig  # noqa: E402
from tests.fixtures.stage_two import TINY_STAGE_TWO  # noqa: E402
from tests.fixtures.synthetic_caches import render_humanoid_cache  # noqa: E402

TINY = TINY_STAGE_TWO


@pytest.fixture(scope="module")
def render_cache(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage_two") / "humanoid.zarr"
    return render_humanoid_cache(out, 8, samples_per_shard=4)


def losses(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_training_writes_checkpoints_and_resume_gives_the_same_losses(render_cache, tmp_path):
    straight = fit(FitJob((render_cache,), tmp_path / "a", TINY))
    assert straight.final_step == 4 and latest_checkpoint(tmp_path / "a").name == "step_00000004"
    assert (tmp_path / "a" / "checkpoints" / "step_00000002" / "optimizer.safetensors").is_file()
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["stage_two"]["num_keypoints"] == 6 and saved["data"]["done_samples"] == 8

    first = fit(FitJob((render_cache,), tmp_path / "b", StageTwoConfig(**{**TINY.to_dict(), "steps": 2})))
    assert first.final_step == 2
    resumed = fit(FitJob((render_cache,), tmp_path / "b", TINY, resume=True))
    assert (resumed.start_step, resumed.final_step) == (2, 4)
    assert without_time(losses(tmp_path / "b")) == without_time(losses(tmp_path / "a"))
    a = load_model(latest_checkpoint(tmp_path / "a")).state_dict()
    b = load_model(latest_checkpoint(tmp_path / "b")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_with_its_caches_held_in_memory_gives_the_same_losses(render_cache, tmp_path):
    config = dataclasses.replace(TINY, steps=3, loader_workers=1)
    fit(FitJob((render_cache,), tmp_path / "read", config))
    fit(FitJob((render_cache,), tmp_path / "held", dataclasses.replace(config, loader_in_memory=True)))
    assert without_time(losses(tmp_path / "held")) == without_time(losses(tmp_path / "read"))
    assert len(losses(tmp_path / "read")) == 3


def test_learning_rate_schedules():
    assert [training.learning_rate_factor("constant", s, 10) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    cosine = [training.learning_rate_factor("cosine", s, 10) for s in range(10)]
    assert cosine[0] == 1.0 and cosine[5] == pytest.approx(0.5) and 0 < cosine[9] < 0.03
    assert all(a > b for a, b in zip(cosine[:-1], cosine[1:], strict=True))


def test_a_cosine_run_decays_its_rates_and_resumes_on_the_same_curve(render_cache, tmp_path):
    config = StageTwoConfig(**{**TINY.to_dict(), "lr_schedule": "cosine", "lr_reconstruction": 2e-3})
    fit(FitJob((render_cache,), tmp_path / "a", config))
    fit(FitJob((render_cache,), tmp_path / "b", config))
    # Kill b after step 2: its last checkpoint goes, and it resumes from step 2.
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step_00000004")
    (tmp_path / "b" / "checkpoints" / "latest.json").unlink()
    resumed = fit(FitJob((render_cache,), tmp_path / "b", config, resume=True))
    assert (resumed.start_step, resumed.final_step) == (2, 4)
    a = load_model(latest_checkpoint(tmp_path / "a")).state_dict()
    b = load_model(latest_checkpoint(tmp_path / "b")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = json.loads((latest_checkpoint(tmp_path / "a") / "trainer_state.json").read_text())
    groups = state["optimizer"]["param_groups"]
    # The last step (index 3 of 4) ran at 0.5 (1 + cos(3 pi / 4)) of each group's base rate.
    factor = training.learning_rate_factor("cosine", 3, 4)
    assert [g["base_lr"] for g in groups] == [1e-3, 2e-3]
    assert [g["lr"] for g in groups] == pytest.approx([1e-3 * factor, 2e-3 * factor])
    with pytest.raises(ConfigError, match="lr_schedule"):
        StageTwoConfig(lr_schedule="linear")


def test_a_killed_run_resumes_from_its_last_complete_checkpoint(render_cache, tmp_path):
    run = tmp_path / "run"
    fit(FitJob((render_cache,), run, TINY))
    # A checkpoint that was being written when the process died is never trusted.
    (run / "checkpoints" / ".step_00000006.partial").mkdir()
    assert latest_checkpoint(run).name == "step_00000004"
    more = fit(FitJob((render_cache,), run, StageTwoConfig(**{**TINY.to_dict(), "steps": 6}), resume=True))
    assert (more.start_step, more.final_step) == (4, 6)
    assert [r["step"] for r in losses(run)] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_changed_model_and_a_new_run_refuses_an_old_directory(render_cache, tmp_path):
    fit(FitJob((render_cache,), tmp_path / "run", TINY))
    changed = StageTwoConfig(**{**TINY.to_dict(), "num_keypoints": 7})
    with pytest.raises(TrainingError, match="num_keypoints"):
        fit(FitJob((render_cache,), tmp_path / "run", changed, resume=True))
    with pytest.raises(TrainingError, match="--resume"):
        fit(FitJob((render_cache,), tmp_path / "run", TINY))


def test_training_never_reads_ground_truth(render_cache, tmp_path):
    copy = tmp_path / "copy.zarr"
    import shutil

    shutil.copytree(render_cache, copy)
    chunks = [p for p in (copy / "ground_truth").rglob("*") if p.is_file() and "c" in p.parts]
    assert chunks
    for path in chunks:
        path.write_bytes(b"not a zarr shard")
    with pytest.raises(Exception):  # noqa: B017 - proves the damage is real
        CacheReader(copy).read_ground_truth([0])
    summary = fit(FitJob((copy,), tmp_path / "run", StageTwoConfig(**{**TINY.to_dict(), "steps": 2})))
    assert summary.final_step == 2


def test_a_non_finite_loss_stops_with_the_step_and_the_term(render_cache, tmp_path, monkeypatch):
    real = training.training_losses

    def poisoned(*args, **kwargs):
        terms, outputs = real(*args, **kwargs)
        terms["mask"] = terms["mask"] * float("nan")
        return terms, outputs

    monkeypatch.setattr(training, "training_losses", poisoned)
    with pytest.raises(TrainingError, match=r"step 1: loss term 'mask' is nan"):
        fit(FitJob((render_cache,), tmp_path / "run", TINY))


def test_missing_vgg_weights_stop_training_with_instructions(render_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    vgg = StageTwoConfig(**{**TINY.to_dict(), "perceptual": "vgg"})
    with pytest.raises(PerceptualWeightsMissing, match="--perceptual ssim"):
        fit(FitJob((render_cache,), tmp_path / "run", vgg))
    assert not (tmp_path / "run").exists()


def test_a_cache_without_features_cannot_train_on_diffusion_features(render_cache, tmp_path):
    config = StageTwoConfig(**{**TINY.to_dict(), "feature_source": "diffusion"})
    with pytest.raises(TrainingError, match="pixels"):
        fit(FitJob((render_cache,), tmp_path / "run", config))


def test_the_loss_falls_when_fitting_a_few_samples(render_cache, tmp_path):
    config = StageTwoConfig(**{**TINY.to_dict(), "steps": 40, "checkpoint_every": 40, "batch_size": 4})
    fit(FitJob((render_cache,), tmp_path / "run", config))
    totals = [r["total"] for r in losses(tmp_path / "run")]
    assert np.mean(totals[-8:]) < 0.9 * np.mean(totals[:4])


def test_cli_fit_then_predict_writes_keypoints_and_previews(render_cache, tmp_path):
    run = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "fit", str(render_cache), "--out", str(run), "--steps", "2", "--checkpoint-every", "2",
            "--perceptual", "ssim", "--num-keypoints", "5", "--volume-size", "8", "--workers", "0",
            "--no-progress",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "s/step" in result.output and "waiting for data" in result.output
    assert (run / "previews" / "step_00000002.png").stat().st_size > 1000
    assert (run / "loss_curve.png").is_file()

    out = tmp_path / "keypoints.json"
    result = runner.invoke(
        app, ["predict", str(run), str(render_cache), "--out", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert np.asarray(record["keypoints_3d"]).shape == (8, 5, 3)
    assert np.asarray(record["keypoints_2d"]).shape == (8, 4, 5, 2)
    assert len(record["sample_id"]) == 8

    result = runner.invoke(app, ["predict", str(tmp_path / "nothing"), str(render_cache), "--out", str(out)])
    assert result.exit_code == 2 and "no checkpoint" in result.output


def test_cli_fit_takes_the_part_identity_options_and_names_a_bad_one(render_cache, tmp_path):
    common = [
        "fit", str(render_cache), "--steps", "1", "--perceptual", "ssim", "--num-keypoints", "5",
        "--volume-size", "8", "--workers", "0", "--no-progress", "--features", "pixels",
    ]  # fmt: skip
    options = [
        "--pixel-encoder", "deep", "--pixel-input-size", "64", "--lambda-colour", "0.5",
        "--appearance-transport", "--adjacency-init", "-4", "--adjacency-lr-scale", "64",
        "--lr-schedule", "cosine", "--keypoint-spread", "0.5", "--keypoint-spread-steps", "1",
    ]  # fmt: skip
    result = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "run"), *options])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["stage_two"]
    assert (saved["pixel_encoder"], saved["pixel_input_size"], saved["lambda_colour"]) == ("deep", 64, 0.5)
    assert saved["appearance_transport"]
    assert (saved["adjacency_init"], saved["adjacency_lr_scale"]) == (-4, 64)
    spread = (saved["keypoint_spread"], saved["keypoint_spread_steps"])
    assert (saved["lr_schedule"], *spread) == ("cosine", 0.5, 1)
    trained = load_model(latest_checkpoint(tmp_path / "run"))
    assert "spread_anchors" in dict(trained.named_parameters())
    assert float(trained.spread_weight) == 1.0  # the weight of its only step, step 0
    bad = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "bad"), "--pixel-encoder", "resnet"])
    assert bad.exit_code == 2 and "pixel_encoder" in bad.output and "Traceback" not in bad.output


def test_prediction_projects_the_3d_keypoints_it_returns(render_cache, tmp_path):
    fit(FitJob((render_cache,), tmp_path / "run", TINY))
    model = load_model(latest_checkpoint(tmp_path / "run"))
    result = predict_cache(model, render_cache, num_views=4, batch_size=3)
    reader = CacheReader(render_cache)
    cams = reader.read_batch([0], ("intrinsics", "world_to_camera"))
    from stages.cameras import project_points

    uv, _ = project_points(result["keypoints_3d"][0], cams["intrinsics"][0], cams["world_to_camera"][0])
    assert np.allclose(uv, result["keypoints_2d"][0], atol=1e-3)
    # The volume spans the view frustum at the orbit centre: keypoints stay inside it.
    assert np.abs(result["keypoints_3d"]).max() <= model.config.volume_half_extent + 1e-5
    with pytest.raises(CacheError):
        reader.read_batch([0], ("ground_truth/joints_3d",))


def test_diffusion_features_of_a_tiny_sv3d_cache_train_and_predict(tmp_path, tiny_model_dir, good_images):
    from tests.test_generate import FAST

    cache = tmp_path / "sv3d.zarr"
    run_generate(GenerateJob(good_images, tiny_model_dir, cache, FAST, samples_per_shard=2, progress=False))
    reader = CacheReader(cache)
    layers = reader.layout.feature_layers
    config = StageTwoConfig(**{**TINY.to_dict(), "feature_source": "diffusion", "steps": 2})
    summary = fit(FitJob((cache,), tmp_path / "run", config))
    assert summary.final_step == 2
    model = load_model(latest_checkpoint(tmp_path / "run"))
    assert tuple(model.config.feature_layer_channels) == tuple(layer.channels for layer in layers)
    assert len(model.features.bottlenecks) == len(layers)
    result = predict_cache(model, cache, num_views=4)
    assert result["keypoints_3d"].shape == (len(reader.done_indices()), 6, 3)
    assert np.isfinite(result["keypoints_3d"]).all()


def test_only_done_samples_are_trained_on(render_cache, tmp_path):
    import shutil

    import zarr

    copy = tmp_path / "copy.zarr"
    shutil.copytree(render_cache, copy)
    status = zarr.open_array(copy / "status", mode="r+")
    status[[1, 6]] = 2  # recorded as failed
    from stages.keypoints.data import CacheTrainingSet

    dataset = CacheTrainingSet([copy, render_cache], 4, 32, with_features=False)
    assert len(dataset) == 14
    assert {1, 6}.isdisjoint(dataset.items[dataset.items[:, 0] == 0, 1].tolist())
    batch = dataset.__getitems__([13, 0, 7])
    assert batch["views"].shape == (3, 4, 3, 32, 32) and batch["view_masks"].shape == (3, 4, 32, 32)
    assert 0.0 <= float(batch["views"].min()) and float(batch["views"].max()) <= 1.0
    whole = CacheReader(render_cache).read_batch([7], ("world_to_camera",))["world_to_camera"][0]
    assert np.allclose(batch["world_to_camera"][0].numpy(), whole)  # row order = request order
    # Held in memory: the same batches, failed samples still skipped, any request order.
    from stages.evaluation.ground_truth_set import GroundTruthTrainingSet

    read, held = (
        GroundTruthTrainingSet([copy, render_cache], 4, 32, False, feature_view_size=48, in_memory=memory)
        for memory in (False, True)
    )
    for request in ([13, 0, 7], [2, 9, 1, 12], [5]):
        expected, got = read.__getitems__(request), held.__getitems__(request)
        assert expected.keys() == got.keys()
        for name in expected:
            assert torch.equal(expected[name], got[name]), name
    assert held._held and not read._held


def test_caches_that_disagree_are_refused_by_name(render_cache, tmp_path):
    other = tmp_path / "other.zarr"
    world = SyntheticWorldConfig("humanoid", "train", num_samples=2, seed=1)
    run_generate(
        GenerateJob(None, None, other, GenerationConfig(resolution=48), "render", world, progress=False)
    )
    with pytest.raises(TrainingError, match=r"other\.zarr: image size 48"):
        fit(FitJob((render_cache, other), tmp_path / "run", TINY))
    with pytest.raises(TrainingError, match="--views 5"):
        fit(FitJob((render_cache,), tmp_path / "run5", StageTwoConfig(**{**TINY.to_dict(), "num_views": 5})))


def test_rotation_consistency_and_single_view_variants_train(render_cache, tmp_path):
    config = StageTwoConfig(**{**TINY.to_dict(), "steps": 1, "lambda_rotation": 0.1, "aggregation": "mean"})
    fit(FitJob((render_cache,), tmp_path / "rot", config))
    assert "rotation" in losses(tmp_path / "rot")[0]
    single = StageTwoConfig(**{**TINY.to_dict(), "steps": 1, "num_views": 1})
    fit(FitJob((render_cache,), tmp_path / "k1", single))
    assert set(losses(tmp_path / "k1")[0]) == {"step", "perceptual", "mask", "total", "seconds"}


def first_step_losses(cache: Path, tmp_path: Path, field: str, values: tuple) -> list[dict]:
    """The first step's losses of 1-step tiny fits, one per value of config `field`."""
    records = []
    for index, value in enumerate(values):
        config = StageTwoConfig(**{**TINY.to_dict(), "steps": 1, field: value})
        fit(FitJob((cache,), tmp_path / f"run{index}", config))
        records.append(losses(tmp_path / f"run{index}")[0])
    return records


def test_hiding_blocks_of_the_appearance_input_changes_only_the_reconstruction(render_cache, tmp_path):
    first, second = first_step_losses(render_cache, tmp_path, "appearance_hidden", (0.0, 0.8))
    assert first["mask"] == second["mask"]  # the same keypoints: the draw comes after theirs
    assert first["perceptual"] != second["perceptual"]
    with pytest.raises(ConfigError, match="multiple of 16"):
        StageTwoConfig(**{**TINY.to_dict(), "render_size": 40, "appearance_hidden": 0.8})


def test_the_identity_term_adds_a_loss_and_leaves_the_first_step_s_other_terms(render_cache, tmp_path):
    first, second = first_step_losses(render_cache, tmp_path, "lambda_identity", (0.0, 0.5))
    assert "identity" not in first and second["identity"] > 0
    # The term draws its turns after every other draw of the step and changes no input of
    # the other terms, so before the first update they are the same.
    assert (first["perceptual"], first["mask"]) == (second["perceptual"], second["mask"])
    with pytest.raises(ConfigError, match="batch_size >= 2"):
        StageTwoConfig(**{**TINY.to_dict(), "batch_size": 1, "lambda_identity": 0.5})
    with pytest.raises(ConfigError, match="feature_source 'pixels'"):
        StageTwoConfig(**{**TINY.to_dict(), "feature_source": "diffusion", "lambda_identity": 0.5})


def test_deep_full_resolution_encoder_transport_and_colour_train_and_predict(render_cache, tmp_path):
    fields = {"steps": 2, "pixel_encoder": "deep", "pixel_input_size": 64, "appearance_transport": True}
    config = StageTwoConfig(**{**TINY.to_dict(), **fields, "lambda_colour": 1.0})
    fit(FitJob((render_cache,), tmp_path / "run", config))
    assert "colour" in losses(tmp_path / "run")[0]
    model = load_model(latest_checkpoint(tmp_path / "run"))
    assert model.config.pixel_input_size == 64 and model.transport is not None
    predicted = predict_cache(model, render_cache, config.num_views, limit=2)
    assert predicted["keypoints_3d"].shape == (2, config.num_keypoints, 3)
    batch = training.CacheTrainingSet([render_cache], 2, 32, False, feature_view_size=64).__getitems__([0])
    assert batch["feature_views"].shape[-1] == 64 and batch["views"].shape[-1] == 32


def test_mixed_precision_keeps_the_geometry_in_float32(render_cache):
    from stages.keypoints.data import CacheTrainingSet
    from stages.keypoints.losses import training_losses
    from stages.keypoints.perceptual import build_perceptual_loss
    from stages.keypoints.training import build_model, step_generator

    model, _ = build_model(TINY, (render_cache,))
    batch = CacheTrainingSet([render_cache], 4, TINY.render_size, False).__getitems__([0, 1])
    # CPU bf16 autocast stands in for the CUDA path, which this machine cannot run.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms, outputs = training_losses(
            model, build_perceptual_loss("ssim", None), batch, TINY, step_generator(0, 0)
        )
    terms["total"].backward()
    assert outputs.keypoints.dtype == outputs.uv.dtype == outputs.edges.dtype == torch.float32
    assert torch.isfinite(terms["total"]) and model.adjacency.grad is not None


def test_the_optional_keypoint_terms_are_logged_and_leave_the_first_keypoints_alone(render_cache, tmp_path):
    # The spread prior is on so that the bent pass reads it where its voxels came from.
    spread = {**TINY.to_dict(), "steps": 1, "keypoint_spread": 0.5, "batch_size": 2}
    records = []
    variants = (("base", {}), ("bend", {"lambda_bend": 1.0}), ("outside", {"lambda_outside": 1.0}))
    for name, extra in (
        *variants,
        ("rigid", {"lambda_rigid": 1.0}),
        ("sharp", {"lambda_concentration": 1.0}),
        ("cover", {"lambda_coverage": 1.0}),
    ):
        fit(FitJob((render_cache,), tmp_path / name, StageTwoConfig(**{**spread, **extra})))
        records.append(losses(tmp_path / name)[0])
    base, bend, outside, rigid, sharp, cover = records
    # Their draws come after the keypoints', so the first step's keypoints are the base's.
    assert base["mask"] == bend["mask"] == outside["mask"] == rigid["mask"] == sharp["mask"] == cover["mask"]
    assert 0 < bend["bend"] < 1 and 0 < outside["outside"] < outside["mask"] / 0.5
    assert 0 < rigid["rigid"] < 1 and 0 < sharp["concentration"] < 3 and 0 < cover["coverage"] < 1
    assert not {"bend", "outside", "rigid", "concentration", "coverage"} & set(base)


def test_without_structure_heatmaps_the_decoder_reads_the_edge_map_alone(render_cache, tmp_path):
    config = StageTwoConfig(**{**TINY.to_dict(), "steps": 1, "structure_heatmaps": False})
    fit(FitJob((render_cache,), tmp_path / "edges", config))
    model = load_model(latest_checkpoint(tmp_path / "edges"))  # the decoder shape round-trips
    uv = torch.rand(1, 2, config.num_keypoints, 2) * config.render_size
    edges, structure = model.structure_maps(uv)
    assert structure.shape == (1, 2, 1, config.render_size, config.render_size)
    assert torch.equal(structure[:, :, 0], edges)
    with pytest.raises(ConfigError, match="structure_heatmaps"):
        StageTwoConfig(**{**TINY.to_dict(), "structure_heatmaps": False, "appearance_transport": True})
