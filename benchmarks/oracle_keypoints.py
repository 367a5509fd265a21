"""What keypoints of a known kind score under the benchmark's regressions, built from the true joints.

    python benchmarks/oracle_keypoints.py --category humanoid --world-seed 10

The quality benchmark fits regressors from discovered keypoints to the true joints on the
training motions and scores them on held-out motions. This probe feeds the same
regressions keypoints built from the TRUE joints by a known rule
(`stages.evaluation.oracle_keypoints`), no network involved:

- joints: the joints themselves;
- on the parts: 32 points at fixed places along the bones, with Gaussian noise of
  0 to 120 mm per coordinate (keypoints that follow the parts, found more or less
  precisely);
- on the parts, sides merged: each averaged with its left/right counterpart;
- world directions: for 32 fixed directions, the body point furthest that way (keypoints
  tied to the world, as the screenings found ours to be), with and without noise;
- figure directions: the same with the directions turned by the figure's heading (tied to
  the figure's frame, not to its parts);
- half on the parts, half world directions.

For each it prints and writes (--out) the P-MPJPE and flip-aware P-MPJPE of the linear map,
the paper's MLP and the project's protocol (5 MLPs fitted with the mirror images: the
mirrored sample's keypoints are the same rule applied to its mirrored joints), beside the
Procrustes mean shape, and each keypoint set's direction concentration (humanoid). Renders
the world's caches into --work as the ablation does (the screening world by default).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
from bench_common import machine_info, print_table, write_report
from quality_models import joint_names, render, truth

from stages.evaluation.consistency import (
    direction_concentration,
    figure_heading,
    keypoint_joint_consistency,
)
from stages.evaluation.evaluate import EvalConfig, procrustes_mean_baseline, regress_and_score
from stages.evaluation.joint_sides import label_swap_permutation, left_right_pairs
from stages.evaluation.mirror import fit_with_mirror_images, reflect_joints
from stages.evaluation.oracle_keypoints import (
    SYNTHETIC_BONES,
    bone_indices,
    points_on_bones,
    sphere_directions,
    support_points,
    turn_about_z,
)
from stages.synthetic.versions import LATEST_WORLD_VERSION

NUM_KEYPOINTS = 32
NOISE_MM = (0, 30, 60, 120)
HEADING_JOINTS = {"humanoid": ("left_hip", "right_hip"), "quadruped": ("FL_hip", "FR_hip")}
"""Left and right joints of each figure whose direction fixes its heading."""
SUPPORT_TEMPERATURE_M = 0.02
"""How far short of the furthest body point a rival still weighs 1/e (2 cm)."""
POINTS_PER_BONE = 9
"""Body points per bone that the world-direction keypoints choose among."""


def keypoint_rules(
    bones: np.ndarray, heading: tuple[int, int], seed: int
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Named rules joints (S, J, 3) -> keypoints (S, N, 3); heading: the (left, right) joints
    whose direction, turned a quarter, is where the figure faces."""
    draw = np.random.default_rng(seed)
    bone = np.arange(NUM_KEYPOINTS) % len(bones)
    t = draw.uniform(0.0, 1.0, NUM_KEYPOINTS)
    dense_bone = np.repeat(np.arange(len(bones)), POINTS_PER_BONE)
    dense_t = np.tile(np.linspace(0.0, 1.0, POINTS_PER_BONE), len(bones))
    directions = sphere_directions(NUM_KEYPOINTS)

    def on_parts(joints):
        return points_on_bones(joints, bones, bone, t)

    def body(joints):
        return points_on_bones(joints, bones, dense_bone, dense_t)

    def world(joints):
        return support_points(body(joints), directions, SUPPORT_TEMPERATURE_M)

    def figure(joints):
        turned = turn_about_z(directions, figure_heading(joints, *heading))
        return support_points(body(joints), turned, SUPPORT_TEMPERATURE_M)

    return {"on the parts": on_parts, "world directions": world, "figure directions": figure}


def oracle_sets(
    joints: np.ndarray, swap: np.ndarray, rules: dict, draw: np.random.Generator
) -> dict[str, np.ndarray]:
    """Every probed keypoint set of joints (S, J, 3), in the table's order."""
    sets = {"joints": joints.copy()}
    parts = rules["on the parts"](joints)
    for noise in NOISE_MM:
        sets[f"on the parts, noise {noise} mm"] = parts + draw.normal(0.0, noise / 1000.0, parts.shape)
    sets["on the parts, sides merged"] = 0.5 * (parts + rules["on the parts"](joints[:, swap]))
    world = rules["world directions"](joints)
    for noise in (0, 30):
        sets[f"world directions, noise {noise} mm"] = world + draw.normal(0.0, noise / 1000.0, world.shape)
    sets["figure directions"] = rules["figure directions"](joints)
    half = NUM_KEYPOINTS // 2
    sets["half on the parts, half world directions"] = np.concatenate(
        [parts[:, :half], world[:, half:]], axis=1
    )
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--category", choices=sorted(SYNTHETIC_BONES), default="humanoid")
    parser.add_argument(
        "--world-seed", type=int, default=10, help="train world seed; the test world is this + 1"
    )
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--test-samples", type=int, default=500)
    parser.add_argument(
        "--seed", type=int, default=0, help="where the points sit on the bones, and the noise"
    )
    parser.add_argument("--work", type=Path, default=Path("bench-results/ablation-work"))
    parser.add_argument("--out", type=Path, default=Path("bench-results/oracle_keypoints.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    folder = args.work / f"{args.category}-v{LATEST_WORLD_VERSION}"
    train = render(
        folder, args.category, "train", args.train_samples, LATEST_WORLD_VERSION, seed=args.world_seed
    )
    test = render(
        folder, args.category, "test", args.test_samples, LATEST_WORLD_VERSION, seed=args.world_seed + 1
    )
    names = joint_names(train)
    train_joints = truth(train, range(args.train_samples))
    test_joints = truth(test, range(args.test_samples))
    swap = label_swap_permutation(left_right_pairs(names), len(names))
    heading = tuple(names.index(name) for name in HEADING_JOINTS[args.category])
    rules = keypoint_rules(bone_indices(SYNTHETIC_BONES[args.category], names), heading, args.seed)
    draw = np.random.default_rng(args.seed + 1)
    train_sets = oracle_sets(train_joints, swap, rules, draw)
    mirrored_joints = reflect_joints(train_joints, swap)
    mirror_sets = oracle_sets(mirrored_joints, swap, rules, draw)
    test_sets = oracle_sets(test_joints, swap, rules, draw)
    config = EvalConfig()
    constant = procrustes_mean_baseline(train_joints, test_joints, 0, joint_names=names)
    hips = heading if args.category == "humanoid" else None  # as the quality benchmark reports it
    rows = []
    for label, keypoints in test_sets.items():
        results = regress_and_score(
            train_sets[label], train_joints, keypoints, test_joints, config, joint_names=names
        )
        mirror = {"keypoints_3d": mirror_sets[label], "joints_3d": mirrored_joints}
        results.append(
            fit_with_mirror_images(
                train_sets[label], train_joints, mirror, keypoints, test_joints, config, names
            )
        )
        row = {
            "keypoints": label,
            "consistency": keypoint_joint_consistency(keypoints, test_joints).mean_consistency,
            **{
                r.regression: {"p_mpjpe": r.p_mpjpe.overall_mm, "pf_mpjpe": r.pf_mpjpe.overall_mm}
                for r in results
            },
        }
        if hips is not None:
            found = direction_concentration(keypoints, test_joints, *hips)
            row.update(direction_world=found.world, direction_figure=found.figure)
        rows.append(row)
        print(
            f"{label}: " + ", ".join(f"{r.regression} {r.p_mpjpe.overall_mm:.1f}" for r in results),
            flush=True,
        )
    regressions = [r.regression for r in results]
    print_table(
        f"{args.category}, held-out motions (world {args.world_seed + 1}): P-MPJPE in mm "
        f"(the Procrustes mean shape: {constant.p_mpjpe.overall_mm:.1f})",
        [
            "keypoints",
            *regressions,
            *(f"{r} / constant" for r in regressions),
            "consistency",
            "world / figure",
        ],
        [
            [
                row["keypoints"],
                *(row[r]["p_mpjpe"] for r in regressions),
                *(row[r]["p_mpjpe"] / constant.p_mpjpe.overall_mm for r in regressions),
                row["consistency"],
                f"{row['direction_world']:.2f} / {row['direction_figure']:.2f}" if hips else None,
            ]
            for row in rows
        ],
    )
    body = {
        "constant": {"p_mpjpe": constant.p_mpjpe.overall_mm, "pf_mpjpe": constant.pf_mpjpe.overall_mm},
        "rows": rows,
    }
    config_json = {"num_keypoints": NUM_KEYPOINTS, "support_temperature_m": SUPPORT_TEMPERATURE_M}
    write_report(args, date.today().isoformat(), machine_info(), started, config_json, body)


if __name__ == "__main__":
    main()
