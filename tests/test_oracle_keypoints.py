"""Keypoints built from the true joints by a known rule (the oracle probe's geometry)."""

from __future__ import annotations

import numpy as np
import pytest

from stages.evaluation.oracle_keypoints import (
    SYNTHETIC_BONES,
    bone_indices,
    points_on_bones,
    sphere_directions,
    support_points,
    turn_about_z,
)
from stages.synthetic.figures import HUMANOID, QUADRUPED


@pytest.mark.parametrize(("category", "figure"), [("humanoid", HUMANOID), ("quadruped", QUADRUPED)])
def test_bones_join_every_joint_of_the_synthetic_figures(category, figure):
    names = [name for name, _ in figure.keypoints]
    bones = bone_indices(SYNTHETIC_BONES[category], names)
    assert bones.shape == (len(names) - 1, 2)  # a tree over the joints
    assert set(bones.ravel()) == set(range(len(names)))


def test_bone_indices_names_a_missing_joint():
    with pytest.raises(ValueError, match="tail"):
        bone_indices((("pelvis", "tail"),), ["pelvis", "chest"])


def test_points_on_bones_interpolate_from_parent_to_child():
    joints = np.array([[[0.0, 0.0, 0.0], [1.0, 2.0, 0.0], [1.0, 2.0, 4.0]]])
    bones = np.array([[0, 1], [1, 2]])
    points = points_on_bones(joints, bones, np.array([0, 0, 1, 1]), np.array([0.0, 0.5, 0.25, 1.0]))
    expected = [[0.0, 0.0, 0.0], [0.5, 1.0, 0.0], [1.0, 2.0, 1.0], [1.0, 2.0, 4.0]]
    np.testing.assert_allclose(points[0], expected)


def test_sphere_directions_are_unit_and_balanced():
    directions = sphere_directions(32)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0)
    assert np.linalg.norm(directions.mean(axis=0)) < 0.05
    with pytest.raises(ValueError, match="n"):
        sphere_directions(0)


def test_support_points_pick_the_furthest_point_and_stay_tied_to_the_world():
    body = np.array([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    directions = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    sharp = support_points(body, directions, temperature=1e-3)
    np.testing.assert_allclose(sharp[0], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], atol=1e-9)
    # Turn the body a quarter about z: the point +x now lies +y, so the keypoint along +y
    # marks the other body point (tied to the world, not to the part).
    turned = body @ np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    moved = support_points(turned, directions, temperature=1e-3)
    np.testing.assert_allclose(moved[0, 1], [0.0, 1.0, 0.0], atol=1e-9)
    soft = support_points(body, directions, temperature=1e3)
    np.testing.assert_allclose(soft[0, 0], body[0].mean(axis=0), atol=1e-3)
    with pytest.raises(ValueError, match="temperature"):
        support_points(body, directions, temperature=0.0)


def test_directions_turned_with_each_figure_follow_it():
    directions = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    turned = turn_about_z(directions, np.array([0.0, np.pi / 2]))
    np.testing.assert_allclose(turned[1], [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], atol=1e-12)
    np.testing.assert_allclose(turned[0], directions)
    # One sample's body turned a quarter, with its directions: the keypoint stays on the
    # same body point (tied to the figure's frame).
    body = np.array([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]])
    quarter = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    both = np.concatenate([body, body @ quarter])
    found = support_points(both, turned, temperature=1e-3)
    np.testing.assert_allclose(found[1, 0], found[0, 0] @ quarter, atol=1e-9)
    np.testing.assert_allclose(found[:, 1], [[0.0, 0.0, 2.0]] * 2, atol=1e-9)
