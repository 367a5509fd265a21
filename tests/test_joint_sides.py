"""Left/right pairs from joint names: the synthetic figures, Human3.6M, and names that must stay alone."""

from __future__ import annotations

import numpy as np
import pytest

from stages.datasets.h36m import JOINT_NAMES as H36M_NAMES
from stages.evaluation.joint_sides import label_swap_permutation, left_right_pairs, mirrored_name

HUMANOID = (
    "pelvis", "chest", "neck", "head",
    "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
)  # fmt: skip
QUADRUPED = (
    "body",
    "FR_hip", "FR_knee", "FL_hip", "FL_knee", "RR_hip", "RR_knee", "RL_hip", "RL_knee",
    "FR_foot", "FL_foot", "RR_foot", "RL_foot",
)  # fmt: skip


def named(names, pairs):
    return {frozenset((names[i], names[j])) for i, j in pairs}


def test_humanoid_pairs_every_limb_joint_and_leaves_the_spine():
    pairs = left_right_pairs(HUMANOID)
    expected = {
        frozenset((f"left_{part}", f"right_{part}"))
        for part in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle")
    }
    assert named(HUMANOID, pairs) == expected
    assert all(i < j for i, j in pairs)


def test_quadruped_pairs_front_with_front_and_rear_with_rear():
    pairs = named(QUADRUPED, left_right_pairs(QUADRUPED))
    expected = {
        frozenset((f"{end}L_{part}", f"{end}R_{part}")) for end in "FR" for part in ("hip", "knee", "foot")
    }
    assert pairs == expected
    # Rear-left is never taken for a left-side 'R...' joint of the Human3.6M spelling.
    assert frozenset(("RL_hip", "FL_hip")) not in pairs


def test_h36m_pairs_the_l_and_r_joints():
    pairs = named(H36M_NAMES, left_right_pairs(H36M_NAMES))
    expected = {
        frozenset((f"L{part}", f"R{part}")) for part in ("Hip", "Knee", "Foot", "Shoulder", "Elbow", "Wrist")
    }
    assert pairs == expected


def test_the_real_synthetic_figures_pair_every_sided_joint():
    figures = pytest.importorskip("stages.synthetic.figures")
    for category, spec in figures.FIGURE_SPECS.items():
        names = [name for name, _ in spec.keypoints]
        paired = {names[k] for pair in left_right_pairs(names) for k in pair}
        unpaired = {"humanoid": {"pelvis", "chest", "neck", "head"}, "quadruped": {"body"}}[category]
        assert paired == set(names) - unpaired, category


def test_names_without_a_counterpart_stay_alone():
    assert left_right_pairs(["left_knee", "Rib", "Lumbar", "leftover", "right_elbow"]) == ()
    assert mirrored_name("pelvis") == ()
    assert mirrored_name("Left-Arm") == ("Right-Arm",)
    assert left_right_pairs(["LeftArm", "RightArm", "Hips"]) == ((0, 1),)


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        left_right_pairs(["left_knee", "left_knee", "right_knee"])


def test_label_swap_permutation_swaps_pairs_and_checks_them():
    assert label_swap_permutation(((1, 3),), 5).tolist() == [0, 3, 2, 1, 4]
    assert np.array_equal(label_swap_permutation((), 3), np.arange(3))
    with pytest.raises(ValueError, match="share a joint"):
        label_swap_permutation(((0, 1), (1, 2)), 3)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        label_swap_permutation(((0, 3),), 3)
