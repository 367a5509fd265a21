"""The quality benchmark: discovered keypoints vs baselines on held-out motions of the synthetic world.

Run by `nox -s quality` as

    python benchmarks/bench_quality.py [--out bench-results/quality.json]
        [--categories humanoid,quadruped] [--train-samples N] [--test-samples N]
        [--steps S] [--supervised-steps S] [--seeds 0,1]

For each category it renders a train cache (train motions) and a test cache (held-out
motions) of the synthetic world (version 2: parts dressed by class, a face), then
reports on the test cache, regressors fitted on the train cache:
- ours: the cpu preset at --steps (N = 18, K = 4, pixel features from the shallow encoder:
  render caches hold no diffusion features; SSIM reconstruction loss: no VGG weights can
  be downloaded here), + linear and + 2-hidden-layer MLP, one row per seed;
- ours, deep 128 px: the deep pixel encoder on 128 px views (first seed), the ablation;
- K = 1: ours trained and lifted from the input view only;
- mean pose: the training set's mean pose for every test sample;
- Procrustes mean: the training poses' mean shape after similarity alignment, the
  constant to beat in P-MPJPE: figures turn to random yaws, so the plain mean pose is a
  shrunken blob and its P-MPJPE is inflated;
- supervised: the same network trained on the ground-truth joints (upper bound) with
  dense, flip-invariant losses for --supervised-steps.
Every row has P-MPJPE and the flip-aware P-MPJPE (the better of the two left/right
labellings per sample); ours rows also the keypoints' consistency (share of test samples
in which each keypoint is nearest its most frequent joint). Issue 12's targets are
checked and printed, never tuned for: the supervised bound at most 0.5x the Procrustes
mean shape's P-MPJPE; ours + MLP at most 0.8x of it (humanoid) and below it
(quadruped); K = 4 better than K = 1. bench-results/quality.md holds the tables and the
per-joint errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any

from cache_schema import CacheReader
from pipeline.generate import GenerateJob, run_generate
from stages.config import GenerationConfig
from stages.evaluation.consistency import keypoint_joint_consistency
from stages.evaluation.evaluate import (
    EvalConfig,
    mean_pose_baseline,
    procrustes_mean_baseline,
    regress_and_score,
    score,
)
from stages.evaluation.supervised import SupervisedLosses, train_supervised
from stages.keypoints.checkpoint import load_run
from stages.keypoints.config import StageTwoConfig, preset
from stages.keypoints.predict import predict_cache
from stages.keypoints.training import FitJob, fit
from stages.synthetic.world import SyntheticWorldConfig


def base_config(steps: int) -> StageTwoConfig:
    """The benchmark's stage-two config: the cpu preset on pixels with SSIM (no weights here)."""
    return preset("cpu", feature_source="pixels", perceptual="ssim", steps=steps, loader_workers=1)


def render(folder: Path, category: str, split: str, samples: int, world_version: int | None = None) -> Path:
    out = folder / f"{category}-{split}.zarr"
    version = {} if world_version is None else {"version": world_version}
    world = SyntheticWorldConfig(
        category, split, num_samples=samples, seed=0 if split == "train" else 1, **version
    )
    run_generate(GenerateJob(None, None, out, GenerationConfig(), "render", world, workers=2, progress=False))
    return out


def truth(cache: Path, indices: Any) -> Any:
    return CacheReader(cache).read_ground_truth(list(indices))["joints_3d"]


def joint_names(cache: Path) -> tuple[str, ...]:
    return tuple(CacheReader(cache).layout.ground_truth.joint_names)


def ours(folder: Path, name: str, train: Path, test: Path, config: Any) -> tuple[list[dict], float]:
    """Train self-supervised, predict both caches, regress; rows and training minutes.

    Each row also holds the mean keypoint-consistency of the discovered keypoints on the test cache."""
    tic = time.perf_counter()
    fit(FitJob((train,), folder / name, config))
    minutes = (time.perf_counter() - tic) / 60
    run = load_run(folder / name)
    a = predict_cache(run.model, train, run.num_views)
    b = predict_cache(run.model, test, run.num_views)
    test_joints = truth(test, b["index"])
    results = regress_and_score(
        a["keypoints_3d"],
        truth(train, a["index"]),
        b["keypoints_3d"],
        test_joints,
        EvalConfig(),
        joint_names=joint_names(train),
    )
    consistency = keypoint_joint_consistency(b["keypoints_3d"], test_joints).mean_consistency
    return [{**r.summary(), "consistency": consistency} for r in results], minutes


SUPERVISED_LOSSES = SupervisedLosses(flip_invariant=True)
"""The bound's losses: dense (voxel and 2D heatmap cross-entropy beside the distance) and
flip-invariant, so it is a ceiling for the flip-aware P-MPJPE."""


def supervised(train: Path, test: Path, config: Any) -> tuple[dict, float]:
    """The upper bound: the same network trained on the joints with the dense losses, at the
    cache's full resolution (config.pixel_input_size 0 means render_size: 64 px)."""
    names = joint_names(train)
    size = CacheReader(train).layout.image_size
    config = dataclasses.replace(
        config, num_keypoints=len(names), pixel_input_size=config.pixel_input_size or size
    )
    tic = time.perf_counter()
    model = train_supervised(config, [train], losses=SUPERVISED_LOSSES)
    minutes = (time.perf_counter() - tic) / 60
    b = predict_cache(model, test, config.num_views)
    return score(
        "direct", b["keypoints_3d"], truth(test, b["index"]), 0, joint_names=names
    ).summary(), minutes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/quality.json"))
    parser.add_argument("--work", type=Path, default=Path("bench-results/quality-work"))
    parser.add_argument("--categories", default="humanoid,quadruped")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--test-samples", type=int, default=500)
    parser.add_argument(
        "--steps", type=int, default=600, help="training steps per model (600 keeps the run within an hour)"
    )
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument(
        "--supervised-steps",
        type=int,
        default=1000,
        help="steps of the supervised bound (its steps are cheaper)",
    )
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    base = base_config(args.steps)
    rows: list[dict] = []
    started = time.perf_counter()
    for category in args.categories.split(","):
        folder = args.work / category
        train = render(folder, category, "train", args.train_samples)
        test = render(folder, category, "test", args.test_samples)
        a = CacheReader(train).done_indices()
        b = CacheReader(test).done_indices()
        names = joint_names(train)
        for method, baseline in (
            ("mean pose", mean_pose_baseline(truth(train, a), truth(test, b), 0, joint_names=names)),
            (
                "Procrustes mean",
                procrustes_mean_baseline(truth(train, a), truth(test, b), 0, joint_names=names),
            ),
        ):
            fixed = {"category": category, "method": method, "views": "-", "kp": "-", "seed": "-"}
            rows.append({**fixed, "minutes": 0.0, **baseline.summary()})
        for seed in seeds:
            results, minutes = ours(
                folder, f"ours-seed{seed}", train, test, dataclasses.replace(base, seed=seed)
            )
            for r in results:
                rows.append({"category": category, "method": "ours", "views": 4, "kp": base.num_keypoints,
                             "seed": seed, "minutes": minutes, **r})  # fmt: skip
        # The ablation's best screened variant (deep encoder on 128 px views), to show on
        # the benchmark's seed and both categories whether it helps; the preset keeps the
        # shallow encoder because on the 2026-12-01 run it did not.
        deep = dataclasses.replace(base, pixel_encoder="deep", pixel_input_size=128, seed=seeds[0])
        results, minutes = ours(folder, "deep", train, test, deep)
        for r in results:
            rows.append({"category": category, "method": "ours, deep 128 px", "views": 4,
                         "kp": base.num_keypoints, "seed": seeds[0], "minutes": minutes, **r})  # fmt: skip
        single = dataclasses.replace(base, num_views=1, seed=seeds[0])
        results, minutes = ours(folder, "k1", train, test, single)
        for r in results:
            rows.append({"category": category, "method": "K=1", "views": 1, "kp": base.num_keypoints,
                         "seed": seeds[0], "minutes": minutes, **r})  # fmt: skip
        bound = dataclasses.replace(base, seed=seeds[0], steps=args.supervised_steps)
        result, minutes = supervised(train, test, bound)
        rows.append({"category": category, "method": "supervised", "views": 4, "kp": "J", "seed": seeds[0],
                     "minutes": minutes, **result})  # fmt: skip

    table = results_table(rows)
    print("\n" + table)
    targets = check_targets(rows)
    for line in targets:
        print(line)
    record = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "stage_two_config": base.to_dict(),
        "minutes_total": (time.perf_counter() - started) / 60,
        "rows": rows,
        "targets": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    report = args.out.with_suffix(".md")
    report.write_text(
        "# Quality on the synthetic world\n\n" + table + "\n\n" + "\n".join(f"- {t}" for t in targets)
        + "\n\n" + per_joint_tables(rows) + "\n"
    )  # fmt: skip
    print(f"wrote {args.out} and {report} ({record['minutes_total']:.1f} min)")


def results_table(rows: list[dict]) -> str:
    """A markdown table: one row per (category, method, seed, regression); errors in mm."""
    lines = [
        "| category | method | K | kp | seed | regression | MPJPE | N-MPJPE | P-MPJPE | flip-aware P-MPJPE "
        "| consistency | train min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        consistency = f"{r['consistency']:.2f}" if "consistency" in r else "-"
        mpjpe = "-" if r["method"] == "Procrustes mean" else f"{r['mpjpe_mm']:.1f}"
        n_mpjpe = "-" if r["method"] == "Procrustes mean" else f"{r['n_mpjpe_mm']:.1f}"
        lines.append(
            f"| {r['category']} | {r['method']} | {r['views']} | {r['kp']} | {r['seed']} | {r['regression']} "
            f"| {mpjpe} | {n_mpjpe} | {r['p_mpjpe_mm']:.1f} | {r['pf_mpjpe_mm']:.1f} | {consistency} "
            f"| {r['minutes']:.1f} |"
        )
    return "\n".join(lines)


def per_joint_tables(rows: list[dict]) -> str:
    """Per category, flip-aware P-MPJPE per joint (mm) of the supervised bound, ours + MLP (first seed)
    and the Procrustes mean shape."""
    out = []
    for category in sorted({r["category"] for r in rows}):
        picked = {}
        for r in rows:
            if r["category"] != category:
                continue
            if r["method"] == "Procrustes mean":
                picked["Procrustes mean"] = r
            elif r["method"] == "supervised":
                picked["supervised"] = r
            elif r["method"] == "ours" and r["regression"] == "mlp" and "ours + MLP" not in picked:
                picked["ours + MLP"] = r
        names = list(next(iter(picked.values()))["per_joint_by_name_mm"])
        out.append(f"## {category}: flip-aware P-MPJPE per joint (mm)\n")
        out.append("| joint | " + " | ".join(picked) + " |")
        out.append("|---|" + "---|" * len(picked))
        for name in names:
            values = " | ".join(f"{r['per_joint_by_name_mm'][name]['pf_mpjpe']:.1f}" for r in picked.values())
            out.append(f"| {name} | {values} |")
        out.append("")
    return "\n".join(out)


def check_targets(rows: list[dict]) -> list[str]:
    """The issue's targets, stated as met or MISSED per category (never asserted).

    Against the Procrustes mean shape's P-MPJPE (the constant to beat): the supervised bound
    at most 0.5x; ours + MLP at most 0.8x for the humanoid (0.6x is the aim) and below 1x
    for the quadruped; K = 4 better than K = 1 (MLP)."""
    lines = []
    for category in sorted({r["category"] for r in rows}):
        mine = [r for r in rows if r["category"] == category]
        shape = next(r for r in mine if r["method"] == "Procrustes mean")["p_mpjpe_mm"]
        bound = next(r for r in mine if r["method"] == "supervised")["p_mpjpe_mm"]
        mlp = [r["p_mpjpe_mm"] for r in mine if r["method"] == "ours" and r["regression"] == "mlp"]
        k1 = [r["p_mpjpe_mm"] for r in mine if r["method"] == "K=1" and r["regression"] == "mlp"]
        ratio = 0.8 if category == "humanoid" else 1.0
        worst = max(mlp)
        lines.append(
            f"{category}: supervised {bound:.1f} = {bound / shape:.2f}x the Procrustes mean shape "
            f"{shape:.1f} (target <= 0.5x): {'met' if bound <= 0.5 * shape else 'MISSED'}; ours+MLP "
            f"{', '.join(f'{v:.1f}' for v in mlp)} = {worst / shape:.2f}x at worst (target <= {ratio}x): "
            f"{'met' if worst <= ratio * shape else 'MISSED'}; K=4 {worst:.1f} vs K=1 {k1[0]:.1f}: "
            f"{'met' if worst < k1[0] else 'MISSED'}"
        )
    return lines


if __name__ == "__main__":
    main()
