"""`keydiff3d predict`: stage one on new images, the keypoint model, 2D on the original pixels."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cache_schema import CacheReader, CacheStore
from pipeline.generate import GenerateJob, run_generate
from pipeline.main_cli import app
from pipeline.predict_images import overlay_names
from stages.cameras import project_points
from stages.config import GenerationConfig, OrbitConfig
from stages.images import load_image, prepare_image, prepared_to_source
from stages.keypoints.training import FitJob, fit
from tests.fixtures.images import write_bad_images, write_good_images
from tests.fixtures.stage_two import TINY_STAGE_TWO

# Not SV3D-p's defaults (tau 500, 4 kept views): predict must copy them from the run.
FAST = GenerationConfig(
    orbit=OrbitConfig(num_frames=8, kept_azimuths_deg=(0.0, 120.0, 240.0)),
    num_inference_steps=2,
    decode_chunk_size=8,
    tau=300,
)
TINY = dataclasses.replace(TINY_STAGE_TWO, num_keypoints=5, steps=2, num_views=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, one_torch_thread):
    """(training images, training cache, run directory) of a 2-step run on a tiny SV3D cache."""
    root = tmp_path_factory.mktemp("predict_images")
    write_good_images(root / "images")
    training_cache = root / "train.zarr"
    run_generate(GenerateJob(root / "images", tiny_model_dir, training_cache, FAST, progress=False))
    fit(FitJob((training_cache,), root / "run", TINY))
    return root / "images", training_cache, root / "run"


def test_predict_maps_keypoints_to_original_pixels_and_skips_a_broken_image(
    tmp_path, tiny_model_dir, trained
):
    good_images, training_cache, run = trained
    images = sorted(p for p in good_images.rglob("*") if p.suffix == ".png")[:2]
    broken = write_bad_images(tmp_path / "bad")["truncated"]
    kept = tmp_path / "predict.zarr"
    out = tmp_path / "out"
    args = [*map(str, [*images, broken]), "--model", str(tiny_model_dir), "--run", str(run)]
    result = CliRunner().invoke(
        app, ["predict", *args, "--out", str(out), "--cache", str(kept), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert "2 images predicted, 1 skipped" in result.output

    record = json.loads((out / "keypoints.json").read_text())
    assert [f["image"] for f in record["failed"]] == [str(broken.resolve())]
    assert len(record["skeleton"]) == TINY.num_keypoints - 1
    # The stage-one settings came from the run's training cache, not the defaults.
    assert CacheReader(kept).layout.num_views == CacheReader(training_cache).layout.num_views == 3
    reader = CacheReader(kept)
    by_id = {str(s): i for i, s in enumerate(reader.sample_ids())}
    for item, image in zip(record["predictions"], images, strict=True):
        assert item["image"] == str(image.resolve())
        points = np.asarray(item["keypoints_3d"])
        assert points.shape == (TINY.num_keypoints, 3)
        cameras = reader.read_sample(by_id[item["image"]], ("intrinsics", "world_to_camera"))
        uv, _ = project_points(points, cameras["intrinsics"][:1], cameras["world_to_camera"][:1])
        # The crop is recomputed from the file, so a mix-up of images or crops would show.
        crop = prepare_image(load_image(image, FAST.background_threshold, 10**8), 64, FAST.object_fraction)
        expected = prepared_to_source(uv[0], crop.crop_box, reader.layout.image_size)
        np.testing.assert_allclose(item["keypoints_2d"], expected, atol=1e-3)
        assert (out / f"{image.stem}_keypoints.png").stat().st_size > 2000


def test_predict_reproduces_the_runs_stage_one_after_its_training_cache_is_deleted(
    tmp_path, tiny_model_dir, trained
):
    good_images, training_cache, _ = trained
    cache = Path(shutil.copytree(training_cache, tmp_path / "train.zarr"))
    run = tmp_path / "run"
    fit(FitJob((cache,), run, TINY))
    shutil.rmtree(cache)
    kept = tmp_path / "predict.zarr"
    image = str(good_images / "rgba.png")
    args = [image, "--model", str(tiny_model_dir), "--run", str(run), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, ["predict", *args, "--cache", str(kept), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    generation = CacheStore.open(kept).metadata.generation
    assert generation == CacheStore.open(training_cache).metadata.generation
    assert generation["tau"] == 300 and generation["orbit"]["kept_azimuths_deg"] == [0.0, 120.0, 240.0]


def test_predict_names_a_missing_image_and_a_run_without_checkpoint(tmp_path, tiny_model_dir, good_images):
    image = next(good_images.rglob("*.png"))
    common = ["--model", str(tiny_model_dir), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "nope.png"), "--run", str(tmp_path), *common])
    assert result.exit_code == 2 and "nope.png" in result.output
    result = CliRunner().invoke(app, ["predict", str(image), "--run", str(tmp_path), *common])
    assert result.exit_code == 2 and "no checkpoint" in result.output


def test_overlay_names_are_unique_and_stable_for_images_that_share_a_stem():
    images = ["/p/b/x.png", "/p/a/x.png", "/p/x.jpg", "/p/y.png", "/p/x_1.png", "/p/Y.PNG"]
    names = overlay_names(images)
    assert names == overlay_names(reversed(images))  # the order given does not matter
    assert len({n.lower() for n in names.values()}) == len(images)
    assert names["/p/b/x.png"] == "x_2_keypoints.png"
    # Stems that differ only in case clash on macOS and Windows: numbered too.
    assert (names["/p/Y.PNG"], names["/p/y.png"]) == ("Y_1_keypoints.png", "y_2_keypoints.png")
    # The shared stem x is numbered in path order; x_1.png, whose own name a/x.png took, gets _2.
    assert [names[p] for p in ("/p/a/x.png", "/p/b/x.png", "/p/x.jpg", "/p/x_1.png")] == [
        "x_1_keypoints.png",
        "x_2_keypoints.png",
        "x_3_keypoints.png",
        "x_1_2_keypoints.png",
    ]


def test_predict_takes_folders_and_duplicates_and_keeps_every_overlay(tmp_path, tiny_model_dir, trained):
    good_images, _, run = trained
    source = Image.open(good_images / "rgba.png")
    folder = tmp_path / "photos"
    for name in ("a/x.png", "b/x.png", "x.png"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        source.save(folder / name)
    source.convert("RGB").save(folder / "x.jpg")
    again = folder / "a" / "x.png"
    out = tmp_path / "out"
    args = [str(folder), str(again), "--model", str(tiny_model_dir), "--run", str(run), "--device", "cpu"]
    result = CliRunner().invoke(app, ["predict", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "4 images predicted, 0 skipped" in result.output
    record = json.loads((out / "keypoints.json").read_text())
    overlays = {item["image"]: item["overlay"] for item in record["predictions"]}
    expected = {folder / "a/x.png": 1, folder / "b/x.png": 2, folder / "x.jpg": 3, folder / "x.png": 4}
    assert overlays == {str(p.resolve()): str(out / f"x_{n}_keypoints.png") for p, n in expected.items()}
    assert all(Path(path).stat().st_size > 2000 for path in overlays.values())

    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["predict", str(empty), *args[2:], "--out", str(out)])
    assert result.exit_code == 2 and "no images" in result.output and "Traceback" not in result.output
