"""Pose metrics: hand-computed cases, invariances, the reflection fix and bad input."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from stages.evaluation.errors import NonFiniteError, ShapeError
from stages.evaluation.metrics import (
    flip_aware_p_mpjpe,
    mpjpe,
    n_mpjpe,
    normalised_2d_error,
    p_mpjpe,
    procrustes_aligned,
)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A proper rotation (det +1) drawn from a normalised random quaternion."""
    w, x, y, z = rng.normal(size=4)
    norm = np.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / norm, x / norm, y / norm, z / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def random_poses(rng: np.random.Generator, samples: int = 3, joints: int = 7) -> np.ndarray:
    """(S, J, 3) non-planar, non-symmetric poses about 0.5 m across."""
    return rng.normal(scale=0.25, size=(samples, joints, 3))


# MPJPE


def test_mpjpe_of_a_10_mm_offset_is_10_mm_everywhere():
    gt = random_poses(np.random.default_rng(0))
    offset = np.array([0.006, -0.008, 0.0])  # 10 mm long, a 3-4-5 triangle
    errors = mpjpe(gt + offset, gt)
    assert errors.overall_mm == pytest.approx(10.0, abs=1e-9)
    np.testing.assert_allclose(errors.per_joint_mm, 10.0, atol=1e-9)
    np.testing.assert_allclose(errors.per_sample_mm, 10.0, atol=1e-9)
    assert errors.per_joint_mm.shape == (7,) and errors.per_sample_mm.shape == (3,)


def test_mpjpe_per_joint_and_per_sample_means_are_the_right_axes():
    gt = np.zeros((2, 3, 3))
    pred = gt.copy()
    pred[0, 1, 0] = 0.030  # sample 0, joint 1: 30 mm
    pred[1, 2, 2] = -0.060  # sample 1, joint 2: 60 mm
    errors = mpjpe(pred, gt)
    np.testing.assert_allclose(errors.per_joint_mm, [0.0, 15.0, 30.0])
    np.testing.assert_allclose(errors.per_sample_mm, [10.0, 20.0])
    assert errors.overall_mm == pytest.approx(15.0)
    assert json.loads(json.dumps(errors.to_dict()))["per_joint_mm"] == pytest.approx([0.0, 15.0, 30.0])


# N-MPJPE


def test_n_mpjpe_forgives_a_uniform_scale_and_a_translation():
    gt = random_poses(np.random.default_rng(1))
    scaled = 1.7 * (gt - gt[:, :1])
    assert n_mpjpe(scaled, gt).overall_mm == pytest.approx(0.0, abs=1e-9)
    translated = gt + np.array([0.3, -1.2, 2.0])
    assert n_mpjpe(translated, gt).overall_mm == pytest.approx(0.0, abs=1e-9)
    assert mpjpe(translated, gt).overall_mm > 1000.0


def test_n_mpjpe_hand_cases_with_two_joints():
    gt = np.array([[[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]])
    # s = <(2, 0, 0), (1, 1, 0)> / ||(2, 0, 0)||^2 = 0.5: (1, 0, 0) is 1 m from (1, 1, 0).
    pred = np.array([[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]])
    errors = n_mpjpe(pred, gt)
    np.testing.assert_allclose(errors.per_joint_mm, [0.0, 1000.0])
    assert errors.overall_mm == pytest.approx(500.0)
    # Orthogonal to the truth: the best scale is 0 and the error is the truth's length.
    orthogonal = np.array([[[5.0, 5.0, 5.0], [5.0, 5.0, 6.0]]])
    np.testing.assert_allclose(n_mpjpe(orthogonal, gt).per_joint_mm, [0.0, np.sqrt(2) * 1000.0])


def test_n_mpjpe_centres_on_the_chosen_root():
    gt = np.array([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]])
    pred = gt + np.array([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.5]]])
    # Only the root's own error is zero by construction.
    assert n_mpjpe(pred, gt, root=2).per_joint_mm[2] == 0.0
    assert n_mpjpe(pred, gt, root=0).per_joint_mm[2] > 0.0
    with pytest.raises(ValueError, match="root"):
        n_mpjpe(pred, gt, root=3)


def test_n_mpjpe_of_a_collapsed_prediction_is_the_truths_spread():
    gt = np.array([[[0.0, 0.0, 0.0], [0.0, 0.3, 0.4]]])
    collapsed = np.full((1, 2, 3), 2.0)
    assert n_mpjpe(collapsed, gt).per_joint_mm == pytest.approx([0.0, 500.0])


# P-MPJPE


def test_p_mpjpe_forgives_rotation_scale_and_translation():
    rng = np.random.default_rng(2)
    gt = random_poses(rng)
    pred = np.stack([0.6 * pose @ random_rotation(rng).T + rng.normal(size=3) for pose in gt])
    assert mpjpe(pred, gt).overall_mm > 100.0
    assert p_mpjpe(pred, gt).overall_mm == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(procrustes_aligned(pred, gt), gt, atol=1e-9)


def test_p_mpjpe_hand_case_three_joints_on_a_line():
    # Truth bends the middle joint up by 1 m; the straight prediction is already optimally
    # placed (centroids match after centring), so errors are 1/3, 2/3 and 1/3 m.
    gt = np.array([[[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])
    pred = np.array([[[-1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    errors = p_mpjpe(pred, gt)
    np.testing.assert_allclose(errors.per_joint_mm, [1000 / 3, 2000 / 3, 1000 / 3], atol=1e-9)
    assert errors.overall_mm == pytest.approx(4000 / 9)


def test_p_mpjpe_two_joints_always_align_exactly():
    gt = np.array([[[0.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])
    pred = np.array([[[1.0, 1.0, 1.0], [2.0, 1.0, 1.0]]])
    assert p_mpjpe(pred, gt).overall_mm == pytest.approx(0.0, abs=1e-9)


def sum_sq_after_best_similarity_over(rotations: np.ndarray, pred: np.ndarray, gt: np.ndarray) -> float:
    """Brute force: the least residual over the given rotations, scale and translation optimal."""
    pred_c = pred - pred.mean(axis=0)
    gt_c = gt - gt.mean(axis=0)
    rotated = np.einsum("rij,nj->rni", rotations, pred_c)
    scale = np.einsum("rni,ni->r", rotated, gt_c) / np.sum(pred_c**2)
    scale = np.maximum(scale, 0.0)
    residual = scale[:, None, None] * rotated - gt_c
    return float(np.min(np.sum(residual**2, axis=(1, 2))))


def test_p_mpjpe_never_mirrors_and_finds_the_best_proper_rotation():
    rng = np.random.default_rng(3)
    gt = random_poses(rng, samples=1, joints=6)
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    # Mirroring is a similarity with det -1, so the fixed Procrustes must not undo it.
    assert p_mpjpe(mirrored, gt).overall_mm > 10.0
    aligned = procrustes_aligned(mirrored, gt)[0]
    ours = float(np.sum((aligned - gt[0]) ** 2))
    # The unfixed SVD solution (a reflection) would reach 0: check we are far above it and
    # no better than the best of many proper rotations (we are optimal among them).
    rotations = np.stack([random_rotation(rng) for _ in range(20000)])
    brute = sum_sq_after_best_similarity_over(rotations, mirrored[0], gt[0])
    assert ours <= brute + 1e-12
    assert ours == pytest.approx(brute, rel=0.05)


def test_a_mirrored_planar_pose_is_a_proper_rotation_away():
    # In the plane z = 0, mirroring x is a 180 degree turn about y: no error even with the fix.
    rng = np.random.default_rng(4)
    gt = random_poses(rng, samples=2, joints=5) * np.array([1.0, 1.0, 0.0])
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    assert p_mpjpe(mirrored, gt).overall_mm == pytest.approx(0.0, abs=1e-6)


def test_p_mpjpe_is_per_sample():
    rng = np.random.default_rng(5)
    gt = random_poses(rng, samples=2)
    pred = gt.copy()
    pred[1] = pred[1] @ random_rotation(rng).T * 2.0
    pred[0, 0] += np.array([0.0, 0.0, 0.07])
    errors = p_mpjpe(pred, gt)
    assert errors.per_sample_mm[0] > 1.0
    assert errors.per_sample_mm[1] == pytest.approx(0.0, abs=1e-6)


# Flip-aware P-MPJPE

SIDE_PAIRS = ((1, 2), (3, 5))
"""Joints 1/2 and 3/5 of a 7-joint pose are left/right pairs; 0, 4 and 6 have no counterpart."""
MIRROR = np.array([0, 2, 1, 5, 4, 3, 6])


def similar(rng: np.random.Generator, poses: np.ndarray) -> np.ndarray:
    """Each pose (S, J, 3) turned, scaled and moved by a random similarity: P-MPJPE forgives it."""
    turned = np.stack([pose @ random_rotation(rng).T for pose in poses])
    return turned * rng.uniform(0.5, 2.0, size=(len(poses), 1, 1)) + rng.normal(size=(len(poses), 1, 3))


def test_flip_aware_equals_p_mpjpe_when_the_labels_are_already_right():
    rng = np.random.default_rng(6)
    gt = random_poses(rng, samples=5)
    pred = similar(rng, gt) + rng.normal(scale=0.005, size=gt.shape)
    plain, flip = p_mpjpe(pred, gt), flip_aware_p_mpjpe(pred, gt, SIDE_PAIRS)
    assert 0.5 < plain.overall_mm == pytest.approx(flip.overall_mm, abs=1e-9)
    np.testing.assert_allclose(flip.per_joint_mm, plain.per_joint_mm, atol=1e-9)
    assert not flip.swapped.any() and flip.to_dict()["swapped_fraction"] == 0.0


def test_flip_aware_is_zero_for_exactly_mirrored_labels_that_p_mpjpe_punishes():
    rng = np.random.default_rng(7)
    gt = random_poses(rng, samples=4)
    pred = similar(rng, gt[:, MIRROR])
    flip = flip_aware_p_mpjpe(pred, gt, SIDE_PAIRS)
    assert flip.overall_mm == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(flip.per_joint_mm, 0.0, atol=1e-6)
    assert flip.swapped.all() and p_mpjpe(pred, gt).overall_mm > 50.0


def test_flip_aware_chooses_the_labelling_per_sample_and_reports_joints_under_that_choice():
    rng = np.random.default_rng(8)
    gt = random_poses(rng, samples=6)
    mirrored = np.array([True, False, True, False, False, True])
    labels = np.where(mirrored[:, None, None], gt[:, MIRROR], gt)
    pred = similar(rng, labels) + rng.normal(scale=0.01, size=gt.shape)
    flip = flip_aware_p_mpjpe(pred, gt, SIDE_PAIRS)
    assert flip.swapped.tolist() == mirrored.tolist()
    # Each sample scores as P-MPJPE against the labelling it was made from.
    by_hand = np.linalg.norm(procrustes_aligned(pred, labels) - labels, axis=-1) * 1000.0  # (S, J) mm
    np.testing.assert_allclose(flip.per_sample_mm, by_hand.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(flip.per_joint_mm, by_hand.mean(axis=0), rtol=1e-9)
    assert flip.overall_mm == pytest.approx(by_hand.mean())
    plain = p_mpjpe(pred, gt).per_sample_mm
    assert np.all(flip.per_sample_mm <= plain + 1e-9) and np.all(
        plain[mirrored] > 5 * flip.per_sample_mm[mirrored]
    )


def test_flip_aware_without_pairs_is_p_mpjpe_and_bad_pairs_are_refused():
    rng = np.random.default_rng(9)
    gt = random_poses(rng)
    pred = similar(rng, gt[:, MIRROR])
    assert flip_aware_p_mpjpe(pred, gt, ()).overall_mm == p_mpjpe(pred, gt).overall_mm
    with pytest.raises(ValueError, match="pairs"):
        flip_aware_p_mpjpe(pred, gt, ((0, 7),))


# 2D error normalised by image size


def test_normalised_2d_error_hand_case_3_px_in_100():
    gt = np.array([[[10.0, 20.0], [50.0, 50.0]]])
    pred = gt + np.array([3.0, 0.0])
    errors = normalised_2d_error(pred, gt, np.ones((1, 2), dtype=bool), image_size=100.0)
    assert errors.overall == pytest.approx(0.03)
    assert errors.overall_percent == pytest.approx(3.0)
    np.testing.assert_allclose(errors.per_joint, [0.03, 0.03])


def test_normalised_2d_error_ignores_invisible_joints_and_gives_nan_for_never_visible():
    gt = np.array([[[0.0, 0.0], [0.0, 0.0], [np.nan, np.nan]], [[0.0, 0.0], [0.0, 0.0], [np.nan, np.nan]]])
    pred = np.zeros((2, 3, 2))
    pred[0, 0] = [6.0, 8.0]  # 10 px, visible
    pred[1, 1] = [99.0, 0.0]  # invisible: must not count
    visible = np.array([[True, True, False], [True, False, False]])
    errors = normalised_2d_error(pred, gt, visible, image_size=200.0)
    np.testing.assert_allclose(errors.per_joint[:2], [0.025, 0.0])
    assert np.isnan(errors.per_joint[2])
    np.testing.assert_allclose(errors.per_sample, [0.025, 0.0])
    assert errors.overall == pytest.approx(0.05 / 3)
    assert json.loads(json.dumps(errors.to_dict()))["per_joint"][2] is None


def test_normalised_2d_error_per_sample_image_sizes():
    gt = np.zeros((2, 1, 2))
    pred = np.full((2, 1, 2), [3.0, 4.0])
    errors = normalised_2d_error(pred, gt, np.ones((2, 1), dtype=bool), image_size=np.array([50.0, 100.0]))
    np.testing.assert_allclose(errors.per_sample, [0.1, 0.05])


# Bad input


@pytest.mark.parametrize(
    "metric", [mpjpe, n_mpjpe, p_mpjpe, functools.partial(flip_aware_p_mpjpe, pairs=((1, 2),))]
)
def test_bad_shapes_name_the_argument(metric):
    good = np.zeros((2, 4, 3))
    with pytest.raises(ShapeError, match=r"pred must have shape \(S, J, 3\)"):
        metric(np.zeros((2, 4, 2)), good)
    with pytest.raises(ShapeError, match=r"gt must have shape \(S, J, 3\) = \(2, 4, 3\), got \(2, 5, 3\)"):
        metric(good, np.zeros((2, 5, 3)))
    with pytest.raises(ShapeError, match="pred"):
        metric(np.zeros((0, 4, 3)), np.zeros((0, 4, 3)))
    with pytest.raises(ValueError, match="pred must be finite"):
        metric(np.full((2, 4, 3), np.nan), good)
    assert issubclass(ShapeError, ValueError) and issubclass(NonFiniteError, ValueError)


def test_normalised_2d_error_bad_input():
    points = np.zeros((2, 3, 2))
    visible = np.ones((2, 3), dtype=bool)
    with pytest.raises(ShapeError, match="gt"):
        normalised_2d_error(points, np.zeros((2, 3, 3)), visible, 100.0)
    with pytest.raises(ValueError, match="visible"):
        normalised_2d_error(points, points, np.ones((2, 4), dtype=bool), 100.0)
    with pytest.raises(ValueError, match="visible"):
        normalised_2d_error(points, points, np.ones((2, 3)), 100.0)
    with pytest.raises(ValueError, match="image_size"):
        normalised_2d_error(points, points, visible, 0.0)
    with pytest.raises(ShapeError, match="image_size"):
        normalised_2d_error(points, points, visible, np.ones(3))
