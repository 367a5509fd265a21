"""Keypoint consistency and direction concentration: constructed keypoints whose answers are known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stages.evaluation.consistency import direction_concentration, keypoint_joint_consistency
from stages.evaluation.errors import ShapeError


def spread_joints(rng: np.random.Generator, samples: int, joints: int = 7) -> np.ndarray:
    """(S, J, 3) joints on a line 0.2 m apart, each pose moved and turned about z at random."""
    line = np.stack([np.arange(joints) * 0.2, np.zeros(joints), np.zeros(joints)], axis=1)
    yaw = rng.uniform(0, 2 * np.pi, size=samples)
    cos, sin = np.cos(yaw), np.sin(yaw)
    turns = np.stack(
        [
            np.stack([cos, -sin, 0 * yaw], 1),
            np.stack([sin, cos, 0 * yaw], 1),
            np.tile([0.0, 0.0, 1.0], (samples, 1)),
        ],
        axis=1,
    )
    return np.einsum("sij,nj->sni", turns, line) + rng.normal(size=(samples, 1, 3))


def test_keypoints_exactly_on_joints_3_3_5_are_fully_consistent():
    joints = spread_joints(np.random.default_rng(0), samples=10)
    keypoints = joints[:, [3, 3, 5]]
    result = keypoint_joint_consistency(keypoints, joints)
    assert result.nearest_joint.tolist() == [3, 3, 5]
    np.testing.assert_array_equal(result.consistency, 1.0)
    assert result.mean_consistency == 1.0
    expected = np.zeros((3, 7))
    expected[[0, 1, 2], [3, 3, 5]] = 1.0
    np.testing.assert_array_equal(result.frequencies, expected)


def test_noisy_keypoints_that_sometimes_move_to_another_joint():
    rng = np.random.default_rng(1)
    joints = spread_joints(rng, samples=40)
    keypoints = joints[:, [1, 4]] + rng.normal(scale=0.01, size=(40, 2, 3))  # 1 cm noise, joints 20 cm apart
    keypoints[:10, 0] = joints[:10, 2] + rng.normal(
        scale=0.01, size=(10, 3)
    )  # a quarter of the time on joint 2
    keypoints[:, 1] += rng.normal(scale=5.0, size=(40, 3))  # keypoint 1 wanders metres away
    result = keypoint_joint_consistency(keypoints, joints)
    assert result.nearest_joint[0] == 1 and result.consistency[0] == pytest.approx(0.75)
    assert result.frequencies[0, 2] == pytest.approx(0.25)
    np.testing.assert_allclose(result.frequencies.sum(axis=1), 1.0)
    assert result.consistency[1] < 0.75
    assert result.mean_consistency == pytest.approx(result.consistency.mean())

    record = json.loads(json.dumps(result.to_dict([f"j{k}" for k in range(7)])))
    assert record["per_keypoint"][0] == {"keypoint": 0, "nearest_joint": "j1", "consistency": 0.75}
    assert np.asarray(record["frequencies"]).shape == (2, 7)


def test_bad_shapes_name_the_argument():
    with pytest.raises(ShapeError, match="joints"):
        keypoint_joint_consistency(np.zeros((4, 3, 3)), np.zeros((5, 7, 3)))
    with pytest.raises(ShapeError, match="keypoints"):
        keypoint_joint_consistency(np.zeros((4, 3, 2)), np.zeros((4, 7, 3)))
    with pytest.raises(ValueError, match="keypoints must be finite"):
        keypoint_joint_consistency(np.full((4, 3, 3), np.nan), np.zeros((4, 7, 3)))


def test_keypoints_on_the_figure_keep_its_frame_and_keypoints_fixed_in_the_world_keep_the_world():
    joints = spread_joints(np.random.default_rng(3), 400)  # turned about z at random
    left, right = 6, 0  # the line's ends, as a pair of hips
    on_parts = joints[:, [0, 1, 5, 6]]  # off the midpoint, which has no direction
    followed = direction_concentration(on_parts, joints, left, right)
    assert followed.figure == pytest.approx(1.0)
    assert followed.world < 0.15  # uniform headings: about 1 / sqrt(400) per keypoint
    root = 0.5 * (joints[:, left] + joints[:, right])
    fixed = root[:, None] + np.array([[0.3, 0.0, 0.1], [0.0, -0.2, 0.0], [-0.1, -0.1, 0.5]])
    tied = direction_concentration(fixed, joints, left, right)
    assert tied.world == pytest.approx(1.0) and tied.figure < 0.15
    with pytest.raises(ShapeError, match="keypoints"):
        direction_concentration(on_parts[..., :2], joints, left, right)
