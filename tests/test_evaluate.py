"""`keydiff3d-train eval` and the baselines on tiny synthetic caches."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("pybullet")

from typer.testing import CliRunner  # noqa: E402

from pipeline.train_cli import app  # noqa: E402
from stages.evaluation.evaluate import EvalConfig, mean_pose_baseline, regress_and_score  # noqa: E402
from stages.evaluation.supervised import (  # noqa: E402
    SupervisedLosses,
    joint_half_extent,
    train_supervised,
)
from stages.keypoints.config import StageTwoConfig  # noqa: E402
from stages.keypoints.training import FitJob, fit  # noqa: E402
from tests.fixtures.synthetic_caches import render_humanoid_cache  # noqa: E402
from tests.test_stage_two import TINY  # noqa: E402


@pytest.fixture(scope="module")
def split_caches(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    paths = {}
    for split, n in (("train", 12), ("test", 6)):
        paths[split] = render_humanoid_cache(folder / f"{split}.zarr", n, split)
    return paths


def test_eval_writes_the_table_json_and_pictures(split_caches, tmp_path):
    fit(FitJob((split_caches["train"],), tmp_path / "run", TINY))
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app,
        [
            "eval", str(tmp_path / "run"), "--train-cache", str(split_caches["train"]),
            "--test-cache", str(split_caches["test"]), "--out", str(out), "--regressor", "linear",
            "--ridge", "1.0", "--device", "cpu",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "metrics.json").read_text())
    assert (record["train_samples"], record["test_samples"]) == (12, 6)
    (ours,) = record["results"]
    names = record["joint_names"]
    assert ours["regression"] == "linear" and len(ours["per_joint_mpjpe_mm"]) == len(names)
    assert all(np.isfinite(ours[k]) for k in ("mpjpe_mm", "n_mpjpe_mm", "p_mpjpe_mm", "pf_mpjpe_mm"))
    for row in [ours, *record["baselines"]]:
        assert row["pf_mpjpe_mm"] <= row["p_mpjpe_mm"] + 1e-9 and 0.0 <= row["pf_swapped_fraction"] <= 1.0
        assert len(row["per_joint_pf_mpjpe_mm"]) == len(names)
        assert list(row["per_joint_by_name_mm"]) == names
        knee = row["per_joint_by_name_mm"]["left_knee"]
        assert knee["pf_mpjpe"] == row["per_joint_pf_mpjpe_mm"][names.index("left_knee")]
    consistency = record["keypoint_consistency"]
    assert len(consistency["per_keypoint"]) == 6 and np.shape(consistency["frequencies"]) == (6, len(names))
    assert all(
        k["nearest_joint"] in names and 1 / len(names) <= k["consistency"] <= 1
        for k in consistency["per_keypoint"]
    )
    assert consistency["mean_consistency"] == pytest.approx(
        np.mean([k["consistency"] for k in consistency["per_keypoint"]])
    )
    assert (out / "consistency.png").stat().st_size > 2000
    assert "| left_knee |" in (out / "per_joint.md").read_text()
    assert "| ours + linear P-MPJPE | ours + linear flip-aware |" in (out / "per_joint.md").read_text()
    assert "most often nearest joint" in (out / "consistency.md").read_text()
    assert "keypoint consistency" in result.output and "consistency.png" in result.output
    table = (out / "table.md").read_text()
    assert "| flip-aware P-MPJPE (mm) |" in table
    assert "| KeyDiff3D (ours) | 4 | 6 | linear |" in table and "| mean pose (baseline) |" in table
    assert "| Procrustes mean shape (baseline) |" in table
    assert [b["method"] for b in record["baselines"]] == [
        "mean pose (baseline)", "Procrustes mean shape (baseline)"
    ]  # fmt: skip
    assert (out / "skeletons.png").stat().st_size > 1000 and (out / "joint_errors.png").is_file()


def test_eval_with_mirror_fit_adds_the_mlp_fitted_with_the_mirror_images(split_caches, tmp_path):
    fit(FitJob((split_caches["train"],), tmp_path / "run", TINY))
    command = [
        "eval", str(tmp_path / "run"), "--train-cache", str(split_caches["train"]),
        "--test-cache", str(split_caches["test"]), "--regressor", "mlp", "--mirror-fit",
    ]  # fmt: skip
    result = CliRunner().invoke(app, [*command, "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert record["mirror_fit"] is True
    plain, mirrored = record["results"]
    # The project's protocol by default: the mean of 5 MLPs fitted with the mirror images.
    assert (plain["regression"], mirrored["regression"]) == ("mlp", "mlp+mirror x5")
    assert record["eval_config"]["mirror_mlp_seeds"] == 5 and record["eval_config"]["mlp_seeds"] == 1
    # Twice the training pairs, more fits: other predictions, scored on the same test samples.
    assert np.isfinite(mirrored["p_mpjpe_mm"]) and mirrored["p_mpjpe_mm"] != plain["p_mpjpe_mm"]
    assert "| KeyDiff3D (ours) | 4 | 6 | mlp+mirror x5 |" in (tmp_path / "eval" / "table.md").read_text()
    assert "| ours + mlp+mirror x5 P-MPJPE |" in (tmp_path / "eval" / "per_joint.md").read_text()
    single = CliRunner().invoke(app, [*command, "--mirror-mlp-seeds", "1", "--out", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())["results"]
    assert [r["regression"] for r in one] == ["mlp", "mlp+mirror"] and one[0] == plain
    assert one[1]["p_mpjpe_mm"] != mirrored["p_mpjpe_mm"]
    zero = CliRunner().invoke(app, [*command, "--mirror-mlp-seeds", "0", "--out", str(tmp_path / "zero")])
    assert zero.exit_code == 2 and "mirror_mlp_seeds must be >= 1" in zero.output
    refused = CliRunner().invoke(app, [*command, "--space", "2d", "--out", str(tmp_path / "eval2d")])
    assert refused.exit_code == 2 and "--mirror-fit needs 3D ground truth" in refused.output
    assert "Traceback" not in refused.output

    # The training side predicted once serves another evaluation with the same numbers.
    from pipeline.evaluate import predict_training_side, run_eval

    side = predict_training_side(tmp_path / "run", split_caches["train"], "3d", mirror_fit=True)
    caches = (tmp_path / "run", split_caches["train"], split_caches["test"])
    again = run_eval(*caches, tmp_path / "again", EvalConfig(regressors=("mlp",)), training=side)
    assert again["results"] == record["results"]
    with pytest.raises(ValueError, match="predicted for"):
        run_eval(*caches, tmp_path / "2d", space="2d", training=side)
    # Another run's keypoints are never mixed in, even from a copy of the same checkpoint.
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    with pytest.raises(ValueError, match="not with .*copy's current checkpoint"):
        run_eval(tmp_path / "copy", *caches[1:], tmp_path / "other", training=side)
    assert not (tmp_path / "other").exists()


def test_eval_refuses_a_cache_without_3d_truth_and_a_run_without_checkpoint(
    split_caches, tmp_path, good_images
):
    result = CliRunner().invoke(
        app,
        ["eval", str(tmp_path / "none"), "--train-cache", str(split_caches["train"]),
         "--test-cache", str(split_caches["test"]), "--out", str(tmp_path / "e")],
    )  # fmt: skip
    assert result.exit_code == 2 and "no checkpoint" in result.output


def test_regressors_beat_the_mean_pose_when_keypoints_carry_the_pose():
    rng = np.random.default_rng(0)
    joints = rng.normal(size=(200, 5, 3)) * 0.2
    mixing = rng.normal(size=(15, 24))
    keypoints = (joints.reshape(200, 15) @ mixing).reshape(200, 8, 3)  # an invertible linear code of the pose
    names = ["centre", "left_hand", "right_hand", "left_foot", "right_foot"]
    results = regress_and_score(
        keypoints[:150],
        joints[:150],
        keypoints[150:],
        joints[150:],
        EvalConfig(("linear",)),
        joint_names=names,
    )
    baseline = mean_pose_baseline(joints[:150], joints[150:], 0, joint_names=names)
    assert results[0].mpjpe.overall_mm < 1e-3 < baseline.mpjpe.overall_mm
    assert results[0].pf_mpjpe.overall_mm < 1e-3 and not results[0].pf_mpjpe.swapped.any()
    # The mean pose has no side: for some samples the swapped labels fit it better.
    assert baseline.pf_mpjpe.swapped.any() and baseline.pf_mpjpe.overall_mm < baseline.p_mpjpe.overall_mm
    with pytest.raises(ValueError, match="joint_names must name the 5 joints"):
        mean_pose_baseline(joints[:150], joints[150:], 0, joint_names=names[:4])


def test_mlp_seeds_average_the_predictions_of_mlps_from_consecutive_seeds(monkeypatch):
    import stages.evaluation.evaluate as evaluate
    from stages.evaluation.regressors import MLPRegressor

    # 5 epochs instead of 100 keep it quick; how the fits are combined is what is under test.
    monkeypatch.setattr(evaluate, "MLPRegressor", lambda seed: MLPRegressor(seed=seed, epochs=5))
    rng = np.random.default_rng(1)
    joints = rng.normal(size=(60, 4, 3)) * 0.2
    keypoints = np.tanh(joints.reshape(60, 12) @ rng.normal(size=(12, 18))).reshape(60, 6, 3)
    names = ["centre", "left_hand", "right_hand", "head"]
    flat = keypoints.reshape(60, -1)
    single = [MLPRegressor(seed=s, epochs=5).fit(flat[:40], joints[:40].reshape(40, -1)) for s in (3, 4)]
    expected = np.mean([m.predict(flat[40:]) for m in single], axis=0).reshape(20, 4, 3)
    splits = (keypoints[:40], joints[:40], keypoints[40:], joints[40:])
    config = EvalConfig(("mlp",), seed=3, mlp_seeds=2)
    (ensemble,) = regress_and_score(*splits, config, joint_names=names)
    (first,) = regress_and_score(*splits, dataclasses.replace(config, mlp_seeds=1), joint_names=names)
    np.testing.assert_allclose(ensemble.predictions, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(first.predictions, single[0].predict(flat[40:]).reshape(20, 4, 3))
    # The row says how many MLPs it averages; the paper's single MLP keeps its plain label.
    assert (ensemble.regression, first.regression) == ("mlp x2", "mlp")
    with pytest.raises(ValueError, match="mlp_seeds must be >= 1"):
        EvalConfig(mlp_seeds=0)
    with pytest.raises(ValueError, match="mirror_mlp_seeds must be >= 1"):
        EvalConfig(mirror_mlp_seeds=0)


def test_supervised_upper_bound_moves_keypoints_towards_the_joints(split_caches):
    from cache_schema import CacheReader

    joints = len(CacheReader(split_caches["train"]).layout.ground_truth.joint_names)
    config = StageTwoConfig(**{**TINY.to_dict(), "num_keypoints": joints, "steps": 30, "batch_size": 4})
    losses = []
    distance_only = SupervisedLosses(voxel_ce=0.0, heatmap_ce=0.0)
    train_supervised(config, [split_caches["train"]], lambda step, loss: losses.append(loss), distance_only)
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3])


def test_supervised_batches_read_ahead_by_a_worker_give_the_same_losses(split_caches):
    from cache_schema import CacheReader

    joints = len(CacheReader(split_caches["train"]).layout.ground_truth.joint_names)
    config = StageTwoConfig(**{**TINY.to_dict(), "num_keypoints": joints, "steps": 6, "batch_size": 4})
    runs = []
    for workers, memory in ((0, False), (1, False), (1, True)):
        losses = []
        train_supervised(
            dataclasses.replace(config, loader_workers=workers, loader_in_memory=memory),
            [split_caches["train"]],
            lambda step, loss, losses=losses: losses.append((step, loss)),
        )
        runs.append(losses)
    assert [step for step, _ in runs[0]] == [1, 2, 3, 4, 5, 6] and runs[0] == runs[1] == runs[2]


def test_supervised_bound_with_a_weight_average_ends_at_the_average_of_its_steps(split_caches):
    from cache_schema import CacheReader

    joints = len(CacheReader(split_caches["train"]).layout.ground_truth.joint_names)
    config = StageTwoConfig(**{**TINY.to_dict(), "num_keypoints": joints, "steps": 2, "batch_size": 4})
    # The last weights after step 1 and after step 2 (a step's batch depends on the seed and
    # the step only), and a run of 2 steps whose decay 0.5 averages those two equally.
    last = [
        train_supervised(dataclasses.replace(config, steps=steps), [split_caches["train"]]).state_dict()
        for steps in (1, 2)
    ]
    averaged = train_supervised(
        config, [split_caches["train"]], losses=SupervisedLosses(weight_average=0.5)
    ).state_dict()
    moved = [name for name in last[0] if not torch.equal(last[0][name], last[1][name])]
    assert moved, "the second step changed no weight"
    for name in moved:
        torch.testing.assert_close(averaged[name], 0.5 * (last[0][name] + last[1][name]))
    with pytest.raises(ValueError, match="weight_average"):
        SupervisedLosses(weight_average=1.0)


def test_joint_half_extent_holds_the_joints_and_never_passes_the_frustum():
    joints = np.array([[[0.1, -0.3, 0.2], [0.05, 0.25, -0.1]]])
    assert joint_half_extent(joints, 1.0, 1.2) == pytest.approx(0.36)
    assert joint_half_extent(joints, 0.3, 1.2) == 0.3
    with pytest.raises(ValueError, match="joint_extent_margin"):
        SupervisedLosses(joint_extent_margin=-1.0)


def test_supervised_bound_with_a_joint_margin_lifts_into_a_cube_around_the_joints(split_caches):
    from cache_schema import CacheReader
    from stages.keypoints.training import build_model

    reader = CacheReader(split_caches["train"])
    joints = reader.read_ground_truth(reader.done_indices().tolist())["joints_3d"]
    config = StageTwoConfig(
        **{**TINY.to_dict(), "num_keypoints": joints.shape[1], "steps": 1, "batch_size": 4}
    )
    frustum = build_model(config, (split_caches["train"],))[0].config.volume_half_extent
    # A margin small enough to shrink the cube, and one too large for it to pass the frustum.
    small = 0.5 * frustum / np.abs(joints).max()
    for margin, expected in ((small, 0.5 * frustum), (100.0, frustum)):
        losses = SupervisedLosses(joint_extent_margin=margin)
        model = train_supervised(config, [split_caches["train"]], losses=losses)
        assert model.config.volume_half_extent == pytest.approx(expected)
        assert np.abs(model.voxel_centres.numpy()).max() < expected


def test_mirrored_samples_show_the_mirrored_joints_where_the_flipped_views_show_them(split_caches):
    from cache_schema import CacheReader
    from stages.evaluation.ground_truth_set import GroundTruthTrainingSet
    from stages.evaluation.mirror import label_swap, mirror_samples
    from stages.keypoints.geometry import project_to_views

    reader = CacheReader(split_caches["train"])
    swap = label_swap(split_caches["train"])
    assert not torch.equal(swap, torch.arange(len(swap))), "the humanoid has left/right pairs"
    size = reader.layout.image_size
    batch = GroundTruthTrainingSet([split_caches["train"]], 4, size, False).__getitems__([0, 1, 2])
    chosen = torch.tensor([True, False, True])
    mirrored, joints = mirror_samples(batch, batch["joints_3d"], chosen, swap, size)
    assert torch.equal(mirrored["views"][1], batch["views"][1])
    assert torch.equal(joints[1], batch["joints_3d"][1])
    assert torch.equal(mirrored["views"][0], batch["views"][0].flip(-1))
    # Mirrored joint j is original joint swap[j], reflected: one pixel row, flipped column.
    uv, _ = project_to_views(batch["joints_3d"], batch["intrinsics"], batch["world_to_camera"])
    uv_mirrored, _ = project_to_views(joints, mirrored["intrinsics"], mirrored["world_to_camera"])
    torch.testing.assert_close(uv_mirrored[0, :, :, 0], size - uv[0][:, swap, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(uv_mirrored[0, :, :, 1], uv[0][:, swap, 1], atol=1e-4, rtol=0)
    torch.testing.assert_close(uv_mirrored[1], uv[1])


def test_predict_mirrored_pairs_mirrored_keypoints_with_reflected_swapped_joints(split_caches):
    from cache_schema import CacheReader
    from stages.evaluation.mirror import label_swap, predict_mirrored
    from stages.keypoints.errors import TrainingError
    from stages.keypoints.predict import predict_cache
    from stages.keypoints.training import build_model

    model, _ = build_model(TINY, (split_caches["train"],))
    plain = predict_cache(model, split_caches["train"], TINY.num_views)
    mirrored = predict_mirrored(model, split_caches["train"], TINY.num_views, batch_size=5)
    np.testing.assert_array_equal(mirrored["index"], plain["index"])
    truth = CacheReader(split_caches["train"]).read_ground_truth(plain["index"].tolist())["joints_3d"]
    expected = truth[:, label_swap(split_caches["train"]).numpy()] * np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(mirrored["joints_3d"], expected, atol=1e-6)
    assert mirrored["keypoints_3d"].shape == plain["keypoints_3d"].shape
    assert np.isfinite(mirrored["keypoints_3d"]).all()
    assert not np.allclose(mirrored["keypoints_3d"], plain["keypoints_3d"], atol=1e-3)
    model.register_to_config(feature_source="diffusion")
    with pytest.raises(TrainingError, match="pixel-feature model"):
        predict_mirrored(model, split_caches["train"], TINY.num_views)


def test_supervised_bound_with_mirrored_samples_trains_and_refuses_diffusion_features(split_caches):
    from cache_schema import CacheReader

    joints = len(CacheReader(split_caches["train"]).layout.ground_truth.joint_names)
    config = StageTwoConfig(**{**TINY.to_dict(), "num_keypoints": joints, "steps": 3, "batch_size": 4})
    runs = []
    for mirror in (False, True):
        losses = []
        train_supervised(
            config,
            [split_caches["train"]],
            lambda step, loss, losses=losses: losses.append(loss),
            SupervisedLosses(mirror=mirror),
        )
        runs.append(losses)
    assert all(np.isfinite(runs[1])) and runs[0][0] != runs[1][0]
    with pytest.raises(ValueError, match="mirror needs feature_source 'pixels'"):
        train_supervised(
            dataclasses.replace(config, feature_source="diffusion"),
            [split_caches["train"]],
            losses=SupervisedLosses(mirror=True),
        )


@pytest.mark.parametrize("losses", [{}, {"flip_invariant": True}])
def test_dense_supervised_losses_bring_predictions_closer_to_the_joints(split_caches, losses):
    from cache_schema import CacheReader
    from stages.keypoints.predict import predict_cache

    reader = CacheReader(split_caches["train"])
    joints = len(reader.layout.ground_truth.joint_names)
    config = StageTwoConfig(**{**TINY.to_dict(), "num_keypoints": joints, "steps": 40, "batch_size": 4})
    errors = []
    for steps in (1, 40):
        model = train_supervised(
            dataclasses.replace(config, steps=steps),
            [split_caches["train"]],
            losses=SupervisedLosses(**losses),
        )
        predicted = predict_cache(model, split_caches["train"], config.num_views)
        truth = reader.read_ground_truth(predicted["index"].tolist())["joints_3d"]
        errors.append(np.linalg.norm(predicted["keypoints_3d"] - truth, axis=-1).mean())
    assert errors[1] < 0.9 * errors[0], errors


def test_voxel_and_heatmap_cross_entropies_are_lowest_at_the_joint():
    import torch

    from stages.evaluation.supervised import heatmap_cross_entropy, voxel_cross_entropy
    from stages.keypoints.geometry import voxel_centres

    centres = voxel_centres(8, 1.0)
    joint = centres[2, 5, 3].reshape(1, 1, 3)
    peaked = torch.zeros(1, 1, 8, 8, 8)
    scores = []
    for index in ((2, 5, 3), (6, 1, 1)):
        logits = peaked.clone()
        logits[(0, 0, *index)] = 10.0
        probabilities = torch.softmax(logits.flatten(2), -1).reshape(logits.shape)
        scores.append(float(voxel_cross_entropy(probabilities, centres, joint, 0.25)))
    assert scores[0] < scores[1]
    logits = torch.zeros(1, 1, 1, 8, 8)
    logits[0, 0, 0, 4, 2] = 10.0  # row 4, column 2: pixel centre (2.5, 4.5)
    near = heatmap_cross_entropy(logits, torch.tensor([[[[2.5, 4.5]]]]), 0.5)
    far = heatmap_cross_entropy(logits, torch.tensor([[[[6.5, 0.5]]]]), 0.5)
    assert near < far


def test_eval_in_2d_reports_the_error_normalised_by_image_size(split_caches, tmp_path):
    fit(FitJob((split_caches["train"],), tmp_path / "run", TINY))
    out = tmp_path / "eval2d"
    result = CliRunner().invoke(
        app,
        [
            "eval", str(tmp_path / "run"), "--train-cache", str(split_caches["train"]),
            "--test-cache", str(split_caches["test"]), "--out", str(out), "--space", "2d", "--ridge", "1.0",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "metrics.json").read_text())
    assert record["space"] == "2d"
    (row,) = record["results"]
    assert 0.0 < row["overall"] < 1.0 and row["overall_percent"] == pytest.approx(100 * row["overall"])
    assert "2D error / image size (%)" in (out / "table.md").read_text()
    assert (out / "joint_errors.png").is_file() and not (out / "skeletons.png").exists()


def test_2d_regression_per_joint_uses_only_annotated_samples():
    from stages.evaluation.evaluate import regress_and_score_2d

    rng = np.random.default_rng(1)
    keypoints = rng.uniform(0, 64, size=(60, 4, 2))
    joints = keypoints[:, :3] * 0.5 + 10.0  # an exact affine map of the keypoints
    visible = np.ones((60, 3), dtype=bool)
    visible[:20, 1] = False
    joints[:20, 1] = 1e6  # unannotated garbage must not leak into the fit
    result = regress_and_score_2d(
        keypoints[:40], joints[:40], visible[:40], keypoints[40:], joints[40:], visible[40:], 64.0
    )
    assert result["overall"] < 1e-6


def test_procrustes_mean_sees_through_random_yaw_where_the_plain_mean_does_not():
    from stages.evaluation.evaluate import procrustes_mean_baseline
    from stages.keypoints.augment import random_z_rotations

    rng = np.random.default_rng(2)
    pose = rng.normal(size=(6, 3)) * 0.3
    rotations = random_z_rotations(40, __import__("torch").Generator().manual_seed(0)).numpy()
    poses = np.einsum("sij,nj->sni", rotations, pose) + rng.normal(size=(40, 1, 3)) * 0.1
    names = [f"joint{j}" for j in range(6)]
    shape = procrustes_mean_baseline(poses[:30], poses[30:], 0, joint_names=names)
    plain = mean_pose_baseline(poses[:30], poses[30:], 0, joint_names=names)
    assert shape.p_mpjpe.overall_mm < 1e-3 < 50 < plain.p_mpjpe.overall_mm
    # No side names, no pairs: flip-aware is plain P-MPJPE.
    assert shape.pf_mpjpe.overall_mm == shape.p_mpjpe.overall_mm
    assert plain.pf_mpjpe.overall_mm == plain.p_mpjpe.overall_mm


def test_nearest_training_pose_finds_a_moved_copy_and_not_an_unseen_pose():
    from stages.evaluation.evaluate import nearest_training_pose_baseline
    from stages.keypoints.augment import random_z_rotations

    rng = np.random.default_rng(3)
    train = rng.normal(size=(50, 6, 3)) * 0.3
    rotations = random_z_rotations(3, __import__("torch").Generator().manual_seed(1)).numpy()
    picked = [4, 17, 42]
    # Seen poses, turned, scaled and moved: the oracle finds them exactly.
    seen = 1.7 * np.einsum("sij,snj->sni", rotations, train[picked]) + rng.normal(size=(3, 1, 3))
    names = [f"joint{j}" for j in range(6)]
    found = nearest_training_pose_baseline(train, seen, 0, chunk=7, joint_names=names)
    assert found.p_mpjpe.overall_mm < 1e-6
    np.testing.assert_array_equal(found.predictions, train[picked])
    # Unseen poses: no training pose fits exactly, and the chunking does not change the pick.
    unseen = rng.normal(size=(10, 6, 3)) * 0.3
    nearest = nearest_training_pose_baseline(train, unseen, 0, joint_names=names)
    assert 1.0 < nearest.p_mpjpe.overall_mm
    one_chunk = nearest_training_pose_baseline(train, unseen, 0, chunk=50, joint_names=names)
    np.testing.assert_array_equal(nearest.predictions, one_chunk.predictions)
    with pytest.raises(ValueError, match="train_joints and test_joints"):
        nearest_training_pose_baseline(train[:, :5], unseen, 0, joint_names=names)


def test_errors_by_group_split_the_overall_mean_by_motion():
    from stages.evaluation.evaluate import score

    rng = np.random.default_rng(4)
    truth = rng.normal(size=(9, 5, 3)) * 0.3
    names = [f"joint{j}" for j in range(5)]
    predictions = truth.copy()
    predictions[6:] = rng.normal(size=(3, 5, 3)) * 0.3  # only the "crawl" samples are wrong
    result = score("test", predictions, truth, 0, joint_names=names)
    groups = ["walk"] * 6 + ["crawl"] * 3
    by_clip = result.by_group(groups)
    assert list(by_clip) == ["crawl", "walk"]
    assert by_clip["walk"]["samples"] == 6 and by_clip["walk"]["p_mpjpe"] < 1e-6
    assert by_clip["crawl"]["p_mpjpe"] > 10
    # Sample-weighted, the groups give back the overall means.
    weighted = sum(g["samples"] * g["pf_mpjpe"] for g in by_clip.values()) / 9
    assert weighted == pytest.approx(result.pf_mpjpe.overall_mm)
    with pytest.raises(ValueError, match="groups must label the 9 test samples"):
        result.by_group(groups[:-1])
