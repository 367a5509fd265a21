"""Posing: rotations, forward kinematics, IK, linear blend skinning, pose files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stages.manipulation.errors import PoseFileError
from stages.manipulation.gaussians import Gaussians
from stages.manipulation.kinematics import (
    SkeletonPose,
    blend_rotations,
    forward_kinematics,
    linear_blend_skinning,
    pose_gaussians,
    solve_targets,
)
from stages.manipulation.pose_file import load_pose, parse_pose, solve_pose
from stages.manipulation.rig import Rig, RigConfig, build_rig, skinning_weights
from stages.rotations import (
    axis_angle_to_matrix,
    fit_rotation,
    matrix_to_quaternion,
    quaternion_multiply,
    quaternion_to_matrix,
)

QUARTER_TURN_Z = axis_angle_to_matrix(np.array([0.0, 0.0, 1.0]), np.pi / 2)


def chain_rig() -> Rig:
    """0 -- 1 -- 2 along +x, rooted at 0, bones (0, 1) and (1, 2)."""
    return Rig(np.array([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0]]), ((0, 1), (1, 2)), root=0, sigma=0.05)


def test_quaternions_and_matrices_agree():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(20, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 0] < 0] *= -1
    np.testing.assert_allclose(matrix_to_quaternion(quaternion_to_matrix(q)), q, atol=1e-12)
    product = quaternion_to_matrix(quaternion_multiply(q[0], q[1]))
    np.testing.assert_allclose(product, quaternion_to_matrix(q[0]) @ quaternion_to_matrix(q[1]), atol=1e-12)
    np.testing.assert_allclose(QUARTER_TURN_Z @ [1.0, 0, 0], [0, 1, 0], atol=1e-12)
    vectors = rng.normal(size=(6, 3))
    rotation = quaternion_to_matrix(q[2])
    np.testing.assert_allclose(fit_rotation(vectors, vectors @ rotation.T, prior=0.0), rotation, atol=1e-10)


def test_a_quarter_turn_of_the_outer_bone_moves_its_points_by_hand():
    rig = chain_rig()
    local = np.stack([np.eye(3), QUARTER_TURN_Z])
    transforms = forward_kinematics(rig, SkeletonPose(local, np.eye(3), np.zeros(3)))
    np.testing.assert_allclose(transforms.joints, [[0, 0, 0], [1, 0, 0], [1, 1, 0]], atol=1e-12)
    points = np.array([[0.5, 0.0, 0.0], [2.0, 0.0, 0.0], [1.5, 0.1, 0.0]])
    weights = skinning_weights(points, rig)  # sigma 0.05: each point belongs to its nearest bone
    moved = linear_blend_skinning(points, weights, transforms.rotations, transforms.translations)
    # On the root bone: unmoved. On the outer bone: turned 90 degrees about joint 1.
    np.testing.assert_allclose(moved, [[0.5, 0, 0], [1.0, 1.0, 0], [0.9, 0.5, 0]], atol=1e-9)


def test_blending_two_bones_half_and_half_averages_their_transforms():
    rotations = np.stack([np.eye(3), QUARTER_TURN_Z])
    translations = np.array([[0.0, 0, 0], [1.0, -1.0, 0]])
    weights = np.array([[0.5, 0.5]])
    moved = linear_blend_skinning(np.array([[2.0, 0, 0]]), weights, rotations, translations)
    # Bone 0 leaves (2, 0, 0) there, bone 1 takes it to (1, 1, 0): the blend is their mean.
    np.testing.assert_allclose(moved, [[1.5, 0.5, 0.0]], atol=1e-12)
    half = quaternion_to_matrix(blend_rotations(weights, rotations))[0]
    np.testing.assert_allclose(half, axis_angle_to_matrix(np.array([0.0, 0, 1]), np.pi / 4), atol=1e-12)


def test_posed_gaussians_turn_their_orientation_with_their_bone():
    rig = chain_rig()
    gaussians = Gaussians.from_colours(np.array([[0.5, 0, 0], [2.0, 0, 0]]), np.full((2, 3), 0.5), 0.01)
    transforms = forward_kinematics(
        rig, SkeletonPose(np.stack([np.eye(3), QUARTER_TURN_Z]), np.eye(3), np.zeros(3))
    )
    posed = pose_gaussians(gaussians, skinning_weights(gaussians.means, rig), transforms)
    np.testing.assert_allclose(quaternion_to_matrix(posed.rotations[0]), np.eye(3), atol=1e-9)
    np.testing.assert_allclose(quaternion_to_matrix(posed.rotations[1]), QUARTER_TURN_Z, atol=1e-9)
    np.testing.assert_array_equal(posed.scales, gaussians.scales)


def test_ik_reaches_every_keypoint_of_a_pose_of_the_same_skeleton():
    rng = np.random.default_rng(3)
    joints = np.cumsum(rng.normal(size=(9, 3)), axis=0)
    rig = build_rig(joints)
    q = rng.normal(size=(len(rig.bones), 4)) + np.array([3.0, 0, 0, 0])
    wanted = forward_kinematics(rig, SkeletonPose(quaternion_to_matrix(q), np.eye(3), np.zeros(3))).joints
    solved = solve_targets(rig, dict(enumerate(wanted)), SkeletonPose.rest(len(rig.bones)), iterations=30)
    np.testing.assert_allclose(forward_kinematics(rig, solved).joints, wanted, atol=1e-6)


def test_ik_with_one_target_moves_only_the_chain_above_it():
    rig = chain_rig()
    request = parse_pose({"targets": {"2": [1.0, 1.0, 0.0]}, "ik": {"chain_length": 1}}, rig)
    joints = forward_kinematics(rig, solve_pose(rig, request)).joints
    np.testing.assert_allclose(joints, [[0, 0, 0], [1, 0, 0], [1, 1, 0]], atol=1e-9)


def test_pose_file_rotations_offsets_and_selectors(tmp_path):
    rig = Rig(chain_rig().joints, chain_rig().bones, 0, 0.05, keypoint_names=("hip", "knee", "foot"))
    path = tmp_path / "pose.json"
    path.write_text(json.dumps({"rotations": {"to:max:x": {"axis": [0, 0, 1], "degrees": 90}}}))
    joints = forward_kinematics(rig, solve_pose(rig, load_pose(path, rig))).joints
    np.testing.assert_allclose(joints[2], [1, 1, 0], atol=1e-12)
    by_name = parse_pose({"rotations": {"knee-foot": {"quaternion_wxyz": [1, 0, 0, 0]}}}, rig)
    assert list(by_name.rotations) == [1]
    offsets = parse_pose({"offsets": {"foot": [0, 0, 0.5]}}, rig)
    np.testing.assert_allclose(offsets.targets[2], [2, 0, 0.5])


def test_a_pose_naming_an_unknown_bone_is_refused_with_the_known_ones(tmp_path):
    rig = chain_rig()
    path = tmp_path / "pose.json"
    path.write_text(json.dumps({"rotations": {"0-2": {"axis": [0, 0, 1], "degrees": 10}}}))
    with pytest.raises(PoseFileError, match=r"pose.json.*unknown bone '0-2'.*\['0-1', '1-2'\]"):
        load_pose(path, rig)
    with pytest.raises(PoseFileError, match="unknown keypoint 'elbow'"):
        parse_pose({"targets": {"elbow": [0, 0, 0]}}, rig)
    with pytest.raises(PoseFileError, match="keypoint 7 is not in"):
        parse_pose({"offsets": {"7": [0, 0, 0]}}, rig)
    with pytest.raises(PoseFileError, match=r"unknown sections \['rotation'\]"):
        parse_pose({"rotation": {}}, rig)
    with pytest.raises(PoseFileError, match="a rotation is"):
        parse_pose({"rotations": {"0-1": [0, 0, 1]}}, rig)
    with pytest.raises(PoseFileError, match=r"expected \[x, y, z\]"):
        parse_pose({"targets": {"1": [0, 0]}}, rig)
    with pytest.raises(PoseFileError, match="the root"):
        parse_pose({"rotations": {"to:0": {"axis": [0, 0, 1], "degrees": 10}}}, rig)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(PoseFileError, match="broken.json: not valid JSON"):
        load_pose(tmp_path / "broken.json", rig)


def test_fitting_the_root_moves_a_rigidly_turned_skeleton_exactly():
    rig = build_rig(np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1.0]]), config=RigConfig(root=0))
    turned = rig.joints @ QUARTER_TURN_Z.T + np.array([0.3, -0.2, 0.1])
    request = parse_pose({"targets": {str(k): v.tolist() for k, v in enumerate(turned)}}, rig)
    request = type(request)(targets=request.targets, fit_root_to_targets=True, ik_iterations=0)
    np.testing.assert_allclose(forward_kinematics(rig, solve_pose(rig, request)).joints, turned, atol=1e-9)
