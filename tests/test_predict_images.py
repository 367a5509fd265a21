"""`keydiff3d predict`: stage one on new images, the keypoint model, 2D on the original pixels."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from typer.testing import CliRunner

from cache_schema import CacheReader
from pipeline.generate import GenerateJob, run_generate
from pipeline.main_cli import app
from stages.cameras import project_points
from stages.config import GenerationConfig, OrbitConfig
from stages.images import load_image, prepare_image, prepared_to_source
from stages.keypoints.training import FitJob, fit
from tests.fixtures.images import write_bad_images
from tests.fixtures.stage_two import TINY_STAGE_TWO

FAST = GenerationConfig(orbit=OrbitConfig(num_frames=8), num_inference_steps=2, decode_chunk_size=8)
TINY = dataclasses.replace(TINY_STAGE_TWO, num_keypoints=5, steps=2)


def test_predict_maps_keypoints_to_original_pixels_and_skips_a_broken_image(
    tmp_path, tiny_model_dir, good_images, one_torch_thread
):
    training_cache = tmp_path / "train.zarr"
    run_generate(GenerateJob(good_images, tiny_model_dir, training_cache, FAST, progress=False))
    fit(FitJob((training_cache,), tmp_path / "run", TINY))
    images = sorted(p for p in good_images.rglob("*") if p.suffix == ".png")[:2]
    broken = write_bad_images(tmp_path / "bad")["truncated"]
    kept = tmp_path / "predict.zarr"
    out = tmp_path / "out"
    args = [*map(str, [*images, broken]), "--model", str(tiny_model_dir), "--run", str(tmp_path / "run")]
    result = CliRunner().invoke(
        app, ["predict", *args, "--out", str(out), "--cache", str(kept), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert "2 images predicted, 1 skipped" in result.output

    record = json.loads((out / "keypoints.json").read_text())
    assert [f["image"] for f in record["failed"]] == [str(broken.resolve())]
    assert len(record["skeleton"]) == TINY.num_keypoints - 1
    # The stage-one settings came from the run's training cache, not the defaults.
    assert CacheReader(kept).layout.num_views == CacheReader(training_cache).layout.num_views
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


def test_predict_names_a_missing_image_and_a_run_without_checkpoint(tmp_path, tiny_model_dir, good_images):
    image = next(good_images.rglob("*.png"))
    common = ["--model", str(tiny_model_dir), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "nope.png"), "--run", str(tmp_path), *common])
    assert result.exit_code == 2 and "nope.png" in result.output
    result = CliRunner().invoke(app, ["predict", str(image), "--run", str(tmp_path), *common])
    assert result.exit_code == 2 and "no checkpoint" in result.output
