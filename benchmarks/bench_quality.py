"""The quality benchmark: discovered keypoints vs baselines and controls on two test sets.

Run by `nox -s quality` as

    python benchmarks/bench_quality.py [--out bench-results/quality.json]
        [--categories humanoid,quadruped] [--train-samples N] [--test-samples N]
        [--steps S] [--supervised-steps S] [--seeds 0,1] [--deep] [--threads N]

For each category it renders a train cache of the synthetic world (version 2: parts
dressed by class, a face) and two test caches (`TEST_SETS`):
- held-out motions: other clips (humanoid) or the clip's last 30% (quadruped);
- seen motions: new draws (time, yaw, appearance, light) of the training clips, as
  Human3.6M's protocol tests unseen subjects performing the actions it trained on.
Regressors are fitted on the train cache and scored on each test set. Rows:
- ours: the cpu preset at --steps (N = 18, K = 4, keypoints started spread, pixel
  features from the shallow encoder: render caches hold no diffusion features; SSIM
  reconstruction loss: no VGG weights can be downloaded here), + linear and + 2-hidden-
  layer MLP, one row per seed;
- untrained: the same network at its initialisation (first seed), the control that shows
  what training adds;
- ours, deep 128 px (with --deep): the deep pixel encoder on 128 px views, the ablation;
- K = 1: ours trained and lifted from the input view only;
- mean pose: the training set's mean pose for every test sample;
- Procrustes mean: the training poses' mean shape after similarity alignment, the
  constant to beat in P-MPJPE: figures turn to random yaws, so the plain mean pose is a
  shrunken blob and its P-MPJPE is inflated;
- nearest training pose: an oracle that picks, per test sample, the training pose that
  fits its truth best; how far the test poses lie from any training pose;
- supervised: the same network trained on the ground-truth joints (upper bound) with
  dense, flip-invariant losses for --supervised-steps (2,000) on 64 px views.
Every row has P-MPJPE and the flip-aware P-MPJPE (the better of the two left/right
labellings per sample); ours rows also the keypoints' consistency (share of test samples
in which each keypoint is nearest its most frequent joint). Issue 12's targets are
checked per test set and printed, never tuned for: the supervised bound at most 0.5x the
Procrustes mean shape's P-MPJPE; ours + MLP at most 0.8x of it (humanoid) and below it
(quadruped); ours + MLP better than K = 1 and than the untrained network.
bench-results/quality.md holds the tables and the per-joint errors.
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
    nearest_training_pose_baseline,
    procrustes_mean_baseline,
    regress_and_score,
    score,
)
from stages.evaluation.supervised import SupervisedLosses, train_supervised
from stages.keypoints.checkpoint import load_run
from stages.keypoints.config import StageTwoConfig, preset
from stages.keypoints.predict import predict_cache
from stages.keypoints.training import FitJob, build_model, fit
from stages.synthetic.world import SyntheticWorldConfig
from stages.threads import torch_threads


def base_config(steps: int) -> StageTwoConfig:
    """The benchmark's stage-two config: the cpu preset on pixels with SSIM (no weights here)."""
    return preset("cpu", feature_source="pixels", perceptual="ssim", steps=steps, loader_workers=1)


def render(
    folder: Path,
    category: str,
    split: str,
    samples: int,
    world_version: int | None = None,
    seed: int | None = None,
) -> Path:
    """A render cache of one split; `seed` defaults to 0 (train) / 1 (test). The seen-motions
    test set is split 'train' with seed 2: new draws of the training clips."""
    seed = (0 if split == "train" else 1) if seed is None else seed
    out = folder / f"{category}-{split}{'' if seed in (0, 1) else f'-seed{seed}'}.zarr"
    version = {} if world_version is None else {"version": world_version}
    world = SyntheticWorldConfig(category, split, num_samples=samples, seed=seed, **version)
    run_generate(GenerateJob(None, None, out, GenerationConfig(), "render", world, workers=2, progress=False))
    return out


def truth(cache: Path, indices: Any) -> Any:
    return CacheReader(cache).read_ground_truth(list(indices))["joints_3d"]


def joint_names(cache: Path) -> tuple[str, ...]:
    return tuple(CacheReader(cache).layout.ground_truth.joint_names)


TEST_SETS = ("held-out motions", "seen motions")
"""The two test caches: other clips (the humanoid) or a later segment (the quadruped), and
new draws (time, yaw, appearance, light) of the training clips, as Human3.6M's protocol
tests unseen subjects on the actions it trained on."""


def keypoint_rows(model: Any, num_views: int, train: Path, tests: dict[str, Path]) -> list[dict]:
    """Predict the train cache and every test cache, regress on train, score on each test set.

    Each row also holds the mean keypoint-consistency of the keypoints on that test cache."""
    a = predict_cache(model, train, num_views)
    names = joint_names(train)
    rows = []
    for label, cache in tests.items():
        b = predict_cache(model, cache, num_views)
        test_joints = truth(cache, b["index"])
        results = regress_and_score(
            a["keypoints_3d"], truth(train, a["index"]), b["keypoints_3d"], test_joints, EvalConfig(),
            joint_names=names,
        )  # fmt: skip
        consistency = keypoint_joint_consistency(b["keypoints_3d"], test_joints).mean_consistency
        rows += [{**r.summary(), "test": label, "consistency": consistency} for r in results]
    return rows


def ours(
    folder: Path, name: str, train: Path, tests: dict[str, Path], config: Any
) -> tuple[list[dict], float]:
    """Train self-supervised, then `keypoint_rows`; rows and training minutes."""
    tic = time.perf_counter()
    fit(FitJob((train,), folder / name, config))
    minutes = (time.perf_counter() - tic) / 60
    run = load_run(folder / name)
    return keypoint_rows(run.model, run.num_views, train, tests), minutes


def untrained(train: Path, tests: dict[str, Path], config: Any) -> list[dict]:
    """The control: the same network at its seeded initialisation, never trained. What the
    regressor gets from image-dependent but untrained keypoints; training must beat it."""
    model, _ = build_model(config, (train,))
    return keypoint_rows(model.eval(), config.num_views, train, tests)


SUPERVISED_LOSSES = SupervisedLosses(flip_invariant=True)
"""The bound's losses: dense (voxel and 2D heatmap cross-entropy beside the distance) and
flip-invariant, so it is a ceiling for the flip-aware P-MPJPE."""


def supervised(
    train: Path, tests: dict[str, Path], config: Any, losses: SupervisedLosses = SUPERVISED_LOSSES
) -> tuple[list[dict], float]:
    """The upper bound: the same network trained on the joints with the dense losses.

    It reads the views at config.pixel_input_size (0: render_size, 64 px in the cpu preset).
    At 64 px a step costs half of one at the cache's 128 px, and twice the steps in the same
    time gave the better bound on every screening seed (README, issue 12's ablation)."""
    names = joint_names(train)
    config = dataclasses.replace(config, num_keypoints=len(names))
    tic = time.perf_counter()
    model = train_supervised(config, [train], losses=losses)
    minutes = (time.perf_counter() - tic) / 60
    rows = []
    for label, cache in tests.items():
        b = predict_cache(model, cache, config.num_views)
        result = score("direct", b["keypoints_3d"], truth(cache, b["index"]), 0, joint_names=names)
        rows.append({**result.summary(), "test": label})
    return rows, minutes


def tagged(
    results: list[dict], category: str, method: str, views: Any, kp: Any, seed: Any, minutes: float
) -> list[dict]:
    """Result rows labelled with what produced them (one table row each)."""
    labels = {"category": category, "method": method, "views": views, "kp": kp, "seed": seed}
    return [{**labels, "minutes": minutes, **r} for r in results]


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
        default=2000,
        help="steps of the supervised bound (at 64 px and without the decoder, its steps are cheaper)",
    )
    parser.add_argument(
        "--deep", action="store_true", help="also train the deep-encoder ablation row (about 12 more minutes)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads of the predictions, the regressors and the supervised bound (each fit "
        "runs at the trainer's own default, 1); pinned so that OMP_NUM_THREADS cannot change the "
        "rounding, and with it the numbers",
    )
    args = parser.parse_args()
    with torch_threads(args.threads):
        run(args)


def run(args: argparse.Namespace) -> None:
    """The benchmark for parsed arguments (see `main`)."""
    seeds = [int(s) for s in args.seeds.split(",")]
    base = base_config(args.steps)
    rows: list[dict] = []
    started = time.perf_counter()
    for category in args.categories.split(","):
        folder = args.work / category
        train = render(folder, category, "train", args.train_samples)
        tests = {
            "held-out motions": render(folder, category, "test", args.test_samples),
            "seen motions": render(folder, category, "train", args.test_samples, seed=2),
        }
        a = CacheReader(train).done_indices()
        names = joint_names(train)
        for label, test in tests.items():
            b = CacheReader(test).done_indices()
            known, unseen = truth(train, a), truth(test, b)
            for method, baseline in (
                ("mean pose", mean_pose_baseline(known, unseen, 0, joint_names=names)),
                ("Procrustes mean", procrustes_mean_baseline(known, unseen, 0, joint_names=names)),
                (
                    "nearest training pose",
                    nearest_training_pose_baseline(known, unseen, 0, joint_names=names),
                ),
            ):
                rows += tagged([{**baseline.summary(), "test": label}], category, method, "-", "-", "-", 0.0)
        for seed in seeds:
            results, minutes = ours(
                folder, f"ours-seed{seed}", train, tests, dataclasses.replace(base, seed=seed)
            )
            rows += tagged(results, category, "ours", 4, base.num_keypoints, seed, minutes)
        control = untrained(train, tests, dataclasses.replace(base, seed=seeds[0]))
        rows += tagged(control, category, "untrained", 4, base.num_keypoints, seeds[0], 0.0)
        if args.deep:
            # The screened variant that raised consistency but not P-MPJPE on 2026-12-01.
            deep = dataclasses.replace(base, pixel_encoder="deep", pixel_input_size=128, seed=seeds[0])
            results, minutes = ours(folder, "deep", train, tests, deep)
            rows += tagged(results, category, "ours, deep 128 px", 4, base.num_keypoints, seeds[0], minutes)
        single = dataclasses.replace(base, num_views=1, seed=seeds[0])
        results, minutes = ours(folder, "k1", train, tests, single)
        rows += tagged(results, category, "K=1", 1, base.num_keypoints, seeds[0], minutes)
        # The bound is told where the joints are, so it starts as the paper does (keypoints
        # at the centre): its numbers stay comparable across changes of ours' start.
        bound = dataclasses.replace(base, seed=seeds[0], steps=args.supervised_steps, keypoint_spread=0.0)
        results, minutes = supervised(train, tests, bound)
        rows += tagged(results, category, "supervised", 4, "J", seeds[0], minutes)

    table = results_table(rows)
    print("\n" + table)
    targets = check_targets(rows)
    for line in targets:
        print(line)
    record = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "torch_threads": args.threads,
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
    """A markdown table: one row per (category, test set, method, seed, regression); errors in mm."""
    lines = [
        "| category | test set | method | K | kp | seed | regression | MPJPE | N-MPJPE | P-MPJPE "
        "| flip-aware P-MPJPE | consistency | train min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["category"], TEST_SETS.index(r["test"]))):
        consistency = f"{r['consistency']:.2f}" if "consistency" in r else "-"
        framed = r["method"] not in ("Procrustes mean", "nearest training pose")
        mpjpe = f"{r['mpjpe_mm']:.1f}" if framed else "-"
        n_mpjpe = f"{r['n_mpjpe_mm']:.1f}" if framed else "-"
        lines.append(
            f"| {r['category']} | {r['test']} | {r['method']} | {r['views']} | {r['kp']} | {r['seed']} "
            f"| {r['regression']} | {mpjpe} | {n_mpjpe} | {r['p_mpjpe_mm']:.1f} | {r['pf_mpjpe_mm']:.1f} "
            f"| {consistency} | {r['minutes']:.1f} |"
        )
    return "\n".join(lines)


def per_joint_tables(rows: list[dict]) -> str:
    """Per category and test set, flip-aware P-MPJPE per joint (mm) of the supervised bound,
    ours + MLP (first seed) and the Procrustes mean shape."""
    out = []
    for category in sorted({r["category"] for r in rows}):
        for label in TEST_SETS:
            picked = {}
            for r in rows:
                if r["category"] != category or r["test"] != label:
                    continue
                if r["method"] in ("Procrustes mean", "supervised"):
                    picked[r["method"]] = r
                elif r["method"] == "ours" and r["regression"] == "mlp" and "ours + MLP" not in picked:
                    picked["ours + MLP"] = r
            if not picked:
                continue
            names = list(next(iter(picked.values()))["per_joint_by_name_mm"])
            out.append(f"## {category}, {label}: flip-aware P-MPJPE per joint (mm)\n")
            out.append("| joint | " + " | ".join(picked) + " |")
            out.append("|---|" + "---|" * len(picked))
            for name in names:
                values = " | ".join(
                    f"{r['per_joint_by_name_mm'][name]['pf_mpjpe']:.1f}" for r in picked.values()
                )
                out.append(f"| {name} | {values} |")
            out.append("")
    return "\n".join(out)


def check_targets(rows: list[dict]) -> list[str]:
    """The issue's targets, stated as met or MISSED per category and test set (never asserted).

    Against the Procrustes mean shape's P-MPJPE (the constant to beat): the supervised bound
    at most 0.5x; ours + MLP at most 0.8x for the humanoid and below 1x for the quadruped;
    K = 4 better than K = 1 and than the untrained network (MLP, worst seed of ours). The
    bound is trained flip-invariant, so it picks its own left/right convention: it is judged
    on the flip-aware P-MPJPE against the mean shape's flip-aware P-MPJPE, and its plain
    P-MPJPE is printed beside it."""
    lines = []
    for category in sorted({r["category"] for r in rows}):
        for label in TEST_SETS:
            mine = [r for r in rows if r["category"] == category and r["test"] == label]
            if not mine:
                continue

            def first(method: str, metric: str = "p_mpjpe_mm", mine: list[dict] = mine) -> float:
                found = [
                    r[metric]
                    for r in mine
                    if r["method"] == method and r["regression"] in ("mlp", method, "direct")
                ]
                return found[0]

            shape, bound = first("Procrustes mean"), first("supervised")
            shape_flip = first("Procrustes mean", "pf_mpjpe_mm")
            bound_flip = first("supervised", "pf_mpjpe_mm")
            mlp = [r["p_mpjpe_mm"] for r in mine if r["method"] == "ours" and r["regression"] == "mlp"]
            k1, control = first("K=1"), first("untrained")
            ratio = 0.8 if category == "humanoid" else 1.0
            worst = max(mlp)

            def verdict(ok: bool) -> str:
                return "met" if ok else "MISSED"

            lines.append(
                f"{category}, {label}: supervised flip-aware {bound_flip:.1f} = "
                f"{bound_flip / shape_flip:.2f}x the Procrustes mean shape's {shape_flip:.1f} "
                f"(target <= 0.5x): "
                f"{verdict(bound_flip <= 0.5 * shape_flip)} (plain P-MPJPE {bound:.1f} = "
                f"{bound / shape:.2f}x); ours+MLP "
                f"{', '.join(f'{v:.1f}' for v in mlp)} = {worst / shape:.2f}x at worst (target <= {ratio}x): "
                f"{verdict(worst <= ratio * shape)}; K=4 {worst:.1f} vs K=1 {k1:.1f}: {verdict(worst < k1)}; "
                f"vs untrained {control:.1f}: {verdict(worst < control)}"
            )
    return lines


if __name__ == "__main__":
    main()
