"""Rig: minimum spanning tree over the keypoint graph, skinning weights, rig JSON."""

from __future__ import annotations

import numpy as np
import pytest

from stages.manipulation.errors import RigFileError, ShapeError
from stages.manipulation.rig import (
    Rig,
    RigConfig,
    build_rig,
    edge_costs,
    length_stability_adjacency,
    minimum_spanning_tree,
    orient_tree,
    point_segment_distances,
    skinning_weights,
)

# A "T": a spine 0-1-2 along z, arms 3 and 4 either side of 2, a far point 5 above 2.
T_JOINTS = np.array(
    [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 2.0], [-1.0, 0.0, 2.0], [1.0, 0.0, 2.0], [0.0, 0.0, 3.5]]
)


def test_minimum_spanning_tree_of_a_hand_built_graph():
    # Costs: the cheapest tree is 0-1 (1), 1-2 (2), 1-3 (3); 0-3 (4) and 2-3 (5) close cycles.
    inf = 100.0
    costs = np.array(
        [[0, 1, inf, 4], [1, 0, 2, 3], [inf, 2, 0, 5], [4, 3, 5, 0]],
        dtype=float,
    )
    assert sorted(minimum_spanning_tree(costs)) == [(0, 1), (1, 2), (1, 3)]


def test_euclidean_tree_of_a_t_shape_and_its_orientation():
    rig = build_rig(T_JOINTS)
    assert len(rig.bones) == len(T_JOINTS) - 1
    assert {frozenset(b) for b in rig.bones} == {
        frozenset(e) for e in [(0, 1), (1, 2), (2, 3), (2, 4), (2, 5)]
    }
    # Root: the keypoint nearest the centroid (0, 0, 1.75) is 2; bones breadth-first from it.
    assert rig.root == 2
    assert rig.bones == ((2, 1), (2, 3), (2, 4), (2, 5), (1, 0))
    assert rig.bone_names == ["2-1", "2-3", "2-4", "2-5", "1-0"]


def test_a_strong_learned_edge_wins_over_a_slightly_shorter_one():
    joints = np.array([[0.0, 0, 0], [1.0, 0, 0], [0.0, 1.05, 0]])
    flat = np.ones((3, 3))
    # Euclidean: 0-1 (1.0) and 0-2 (1.05) beat 1-2 (1.45).
    assert sorted(minimum_spanning_tree(edge_costs(joints, flat))) == [(0, 1), (0, 2)]
    learned = np.full((3, 3), 0.1)
    learned[0, 2] = learned[2, 0] = learned[1, 2] = learned[2, 1] = 1.0
    assert sorted(minimum_spanning_tree(edge_costs(joints, learned))) == [(0, 2), (1, 2)]


def test_orient_tree_hangs_every_edge_from_the_root():
    assert orient_tree([(0, 1), (1, 2), (1, 3)], root=3) == ((3, 1), (1, 0), (1, 2))


def test_skinning_weights_are_a_partition_of_unity_and_local():
    rig = build_rig(T_JOINTS, config=RigConfig(sigma_fraction=0.02))  # sigma 0.08, bones 1 long
    rng = np.random.default_rng(0)
    points = rng.uniform(-1.5, 3.5, size=(500, 3))
    weights = skinning_weights(points, rig)
    assert weights.shape == (500, len(rig.bones))
    assert np.all(weights >= 0)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    # A point on the middle of a bone takes (almost) all its weight from that bone.
    for b, (parent, child) in enumerate(rig.bones):
        middle = 0.5 * (rig.joints[parent] + rig.joints[child])
        assert skinning_weights(middle[None], rig)[0, b] > 0.99
    # Far away points still get valid weights (no 0 / 0).
    far = skinning_weights(np.array([[1e3, 1e3, 1e3]]), rig)
    assert np.isfinite(far).all() and abs(far.sum() - 1.0) < 1e-12


def test_point_segment_distances_by_hand():
    starts = np.array([[0.0, 0.0, 0.0]])
    ends = np.array([[2.0, 0.0, 0.0]])
    points = np.array([[1.0, 1.0, 0.0], [-3.0, 0.0, 4.0], [2.0, 0.0, 0.0], [5.0, 4.0, 0.0]])
    np.testing.assert_allclose(point_segment_distances(points, starts, ends)[:, 0], [1.0, 5.0, 0.0, 5.0])


def test_length_stability_finds_the_rigid_links():
    rng = np.random.default_rng(1)
    poses = []
    for _ in range(20):
        angle = rng.uniform(0, np.pi)
        # 0-1 rigid (length 1), 2 swings about 1 on a rigid link of length 1, 3 wanders freely.
        poses.append([[0, 0, 0], [1, 0, 0], [1 + np.cos(angle), np.sin(angle), 0], rng.uniform(-2, 2, 3)])
    weights = length_stability_adjacency(np.array(poses, dtype=float))
    assert weights[0, 1] > 0.99 and weights[1, 2] > 0.99
    assert weights[0, 2] < 0.1 and weights[0, 3] < 0.1


def test_rig_json_round_trip(tmp_path):
    rig = build_rig(T_JOINTS, np.ones((6, 6)), keypoint_names=tuple("abcdef"), notes={"sample": 3})
    loaded = Rig.load(rig.save(tmp_path / "rig.json"))
    np.testing.assert_array_equal(loaded.joints, rig.joints)
    assert loaded.bones == rig.bones and loaded.root == rig.root and loaded.sigma == rig.sigma
    assert loaded.keypoint_names == tuple("abcdef") and loaded.notes["sample"] == 3


def test_bad_rigs_and_shapes_are_refused_by_name(tmp_path):
    with pytest.raises(ShapeError, match=r"joints must have shape \(\*, 3\), got \(4, 2\)"):
        build_rig(np.zeros((4, 2)))
    with pytest.raises(ShapeError, match="adjacency must have shape"):
        edge_costs(T_JOINTS, np.ones((5, 5)))
    with pytest.raises(RigFileError, match="do not form a tree"):
        Rig(T_JOINTS[:3], ((0, 1), (0, 1)), root=0, sigma=0.1)
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(RigFileError, match="bad.json"):
        Rig.load(tmp_path / "bad.json")
