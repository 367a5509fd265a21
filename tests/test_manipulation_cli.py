"""`keydiff3d manipulate` end to end on a tiny synthetic cache and a tiny trained run."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pybullet")

from typer.testing import CliRunner  # noqa: E402

from cache_schema import CacheReader  # noqa: E402
from pipeline.generate import GenerateJob, run_generate  # noqa: E402
from pipeline.manipulate_cli import app  # noqa: E402
from stages.cameras import project_points  # noqa: E402
from stages.config import GenerationConfig  # noqa: E402
from stages.keypoints.training import FitJob, fit  # noqa: E402
from stages.manipulation.errors import SampleNotReadyError  # noqa: E402
from stages.manipulation.frame_pairs import ClipMoment, clip_moments, same_clip_pairs  # noqa: E402
from stages.manipulation.ply import read_gaussians_ply  # noqa: E402
from stages.manipulation.reconstruct import reconstruct_visual_hull  # noqa: E402
from stages.manipulation.render import render_views, silhouette_iou  # noqa: E402
from stages.manipulation.sample import read_object_views  # noqa: E402
from stages.synthetic import world as world_module  # noqa: E402
from stages.synthetic.world import SyntheticWorldConfig  # noqa: E402
from tests.fixtures.stage_two import TINY_STAGE_TWO  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "poses"
TINY = dataclasses.replace(TINY_STAGE_TWO, steps=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_torch_thread) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("manipulation")
    cache = root / "humanoid.zarr"
    world = SyntheticWorldConfig("humanoid", "test", num_samples=4, seed=0)
    job = GenerateJob(
        None,
        None,
        cache,
        GenerationConfig(resolution=48),
        "render",
        world,
        samples_per_shard=4,
        progress=False,
    )
    run_generate(job)
    fit(FitJob((cache,), root / "run", TINY))
    return {"root": root, "cache": cache, "run": root / "run"}


def invoke(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_reconstruction_lies_inside_the_masks_and_reprojects_onto_them(tiny):
    views = read_object_views(tiny["cache"], 0)
    gaussians = reconstruct_visual_hull(views).gaussians
    assert gaussians.num_points > 200
    uv, _ = project_points(gaussians.means, views.intrinsics, views.world_to_camera)
    pixels = np.clip(np.floor(uv).astype(int), 0, 47)
    inside = views.masks[np.arange(len(uv))[:, None], pixels[..., 1], pixels[..., 0]]
    assert inside.all(axis=0).mean() > 0.99  # every point lies in the foreground of every view
    splats = render_views(
        gaussians.means,
        gaussians.colours,
        gaussians.scales.max(axis=1),
        views.intrinsics,
        views.world_to_camera,
        48,
    )
    iou = silhouette_iou(np.stack([s.mask for s in splats]), views.masks)
    assert iou.min() > 0.9, iou
    # Colours come from the object, not the white background.
    assert gaussians.colours.mean() < 0.9


def test_a_sample_that_is_not_done_is_refused(tiny, tmp_path):
    import zarr

    copy = tmp_path / "copy.zarr"
    shutil.copytree(tiny["cache"], copy)
    zarr.open_array(copy / "status", mode="r+")[2] = 2  # recorded as failed
    with pytest.raises(SampleNotReadyError, match="sample 2 is not done"):
        read_object_views(copy, 2)
    result = invoke("reconstruct", copy, "--sample", "humanoid/test/000002", "--out", tmp_path / "o.ply")
    assert result.exit_code == 2 and "is not done" in result.output and "Traceback" not in result.output
    with pytest.raises(SampleNotReadyError, match="no sample with id"):
        read_object_views(copy, "humanoid/test/999999")


def test_reconstruct_rig_pose_and_check_on_the_command_line(tiny, tmp_path):
    ply, rig = tmp_path / "object.ply", tmp_path / "rig.json"
    result = invoke("reconstruct", tiny["cache"], "--sample", 0, "--out", ply)
    assert result.exit_code == 0, result.output
    assert "silhouette IoU" in result.output and read_gaussians_ply(ply).num_points > 200
    assert invoke("load", ply).exit_code == 0

    result = invoke("rig", tiny["run"], tiny["cache"], "--sample", 0, "--ply", ply, "--out", rig)
    assert result.exit_code == 0, result.output
    record = json.loads(rig.read_text())
    assert len(record["bones"]) == TINY.num_keypoints - 1 and rig.with_suffix(".png").is_file()

    posed = tmp_path / "posed.ply"
    renders = tmp_path / "renders"
    result = invoke(
        "pose", rig, ply, EXAMPLES / "lift_foot.json", "--out", posed, "--renders", renders, "--size", 64
    )
    assert result.exit_code == 0, result.output
    assert (renders / "before_after.png").is_file() and (renders / "turntable.gif").is_file()
    keypoints = json.loads(posed.with_suffix(".keypoints.json").read_text())
    rest, moved = np.array(keypoints["rest"]), np.array(keypoints["posed"])
    assert not np.allclose(rest, moved)
    before, after = read_gaussians_ply(ply), read_gaussians_ply(posed)
    assert before.num_points == after.num_points and not np.allclose(before.means, after.means)

    out = tmp_path / "check"
    result = invoke("check", tiny["run"], tiny["cache"], "--sample-a", 0, "--sample-b", 1, "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "check.json").read_text())
    truth = report["mean"]["ground_truth"]
    assert 0.0 <= truth["iou_undeformed"] <= 1.0 and truth["keypoint_residual"] < 0.02
    assert (out / "pair_0_1_predicted.png").is_file() and (out / "pair_0_1_ground_truth.png").is_file()


def test_bad_inputs_give_a_message_and_no_traceback(tiny, tmp_path):
    ply, rig = tmp_path / "object.ply", tmp_path / "rig.json"
    assert invoke("reconstruct", tiny["cache"], "--sample", 1, "--out", ply).exit_code == 0
    assert (
        invoke(
            "rig", tiny["run"], tiny["cache"], "--sample", 1, "--out", rig, "--keypoints", "ground-truth"
        ).exit_code
        == 0
    )
    pose = tmp_path / "pose.json"
    pose.write_text(json.dumps({"rotations": {"left_knee-nose": {"axis": [0, 0, 1], "degrees": 20}}}))
    result = invoke("pose", rig, ply, pose, "--out", tmp_path / "posed.ply")
    assert result.exit_code == 2 and "unknown keypoint 'nose'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "posed.ply").exists()
    pose.write_text(json.dumps({"rotations": {"left_knee-head": {"axis": [0, 0, 1], "degrees": 20}}}))
    result = invoke("pose", rig, ply, pose, "--out", tmp_path / "posed.ply")
    assert result.exit_code == 2 and "unknown bone 'left_knee-head'" in result.output
    (tmp_path / "points.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0\n"
    )
    result = invoke("load", tmp_path / "points.ply")
    assert result.exit_code == 2 and "missing 3D Gaussian properties" in result.output
    result = invoke("rig", tmp_path / "no_run", tiny["cache"], "--sample", 0, "--out", rig)
    assert result.exit_code == 2 and "no_run" in result.output


def test_clip_moments_repeat_the_synthetic_worlds_draws(tiny, monkeypatch):

    reader = CacheReader(tiny["cache"])
    ids = [str(i) for i in reader.sample_ids()]
    moments = clip_moments(reader.store.metadata.source["world"], ids)
    seen = []
    real_pose_at = world_module.pose_at

    def recording_pose_at(clip, t):  # noqa: ANN001, ANN202
        seen.append((clip.name, t))
        return real_pose_at(clip, t)

    monkeypatch.setattr(world_module, "pose_at", recording_pose_at)
    renderer = world_module.SyntheticRenderer(
        SyntheticWorldConfig("humanoid", "test", num_samples=4, seed=0), GenerationConfig(resolution=8)
    )
    for sample_id in ids[:2]:
        renderer.make_sample(sample_id, renderer.intrinsics, renderer.world_to_camera)
    assert [(m.clip, m.seconds) for m in moments[:2]] == seen

    fake = [ClipMoment("a", 0.0), ClipMoment("a", 0.5), ClipMoment("b", 0.6), ClipMoment("a", 3.0)]
    pairs = same_clip_pairs(fake, count=5, min_gap=0.3, max_gap=1.0)
    assert sorted(pairs) == [(0, 1), (1, 0)]
