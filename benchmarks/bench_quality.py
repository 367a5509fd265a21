"""The quality benchmark: discovered keypoints vs baselines and controls on two test sets.

Run by `nox -s quality` as

    python benchmarks/bench_quality.py [--out bench-results/quality.json]
        [--categories humanoid,quadruped] [--train-samples N] [--test-samples N]
        [--steps S] [--supervised-steps S] [--supervised-volume-size M]
        [--supervised-extent-margin F] [--seeds 0,1]
        [--no-mirror-fit] [--deep] [--threads N]

For each category it renders a train cache of the synthetic world (version 2: parts
dressed by class, a face) and two test caches (`quality_report.TEST_SETS`):
- held-out motions: other clips (humanoid) or the clip's last 30% (quadruped);
- seen motions: new draws (time, yaw, appearance, light) of the training clips, as
  Human3.6M's protocol tests unseen subjects performing the actions it trained on.
Regressors are fitted on the train cache and scored on each test set. Rows:
- ours: the cpu preset at --steps (N = 32, K = 4, keypoints started spread, pixel
  features from the shallow encoder: render caches hold no diffusion features; SSIM
  reconstruction loss: no VGG weights can be downloaded here), + linear and + 2-hidden-
  layer MLP (the paper's protocol), one row per seed; and + mlp+mirror x5 (unless
  --no-mirror-fit), the project's protocol: the mean of 5 such MLPs fitted on the training
  pairs plus their mirror images (views flipped, joints reflected and relabelled
  left/right; no more labels than the paper's MLP reads); the targets judge both;
- untrained: the same network at its initialisation (first seed), the control that shows
  what training adds (with the same regressors);
- ours, deep 128 px (with --deep): the deep pixel encoder on 128 px views, the ablation;
- K = 1: ours trained and lifted from the input view only;
- mean pose: the training set's mean pose for every test sample;
- Procrustes mean: the training poses' mean shape after similarity alignment, the
  constant to beat in P-MPJPE: figures turn to random yaws, so the plain mean pose is a
  shrunken blob and its P-MPJPE is inflated;
- nearest training pose: an oracle that picks, per test sample, the training pose that
  fits its truth best; how far the test poses lie from any training pose;
- supervised: the same network trained on the ground-truth joints (upper bound) with
  dense, flip-invariant losses for --supervised-steps (2,000) on 64 px views, lifted
  into a --supervised-volume-size (24) grid per side (--supervised-extent-margin M > 0
  fits its cube to the training joints instead of the frustum; off by default); its
  weights are an exponential moving average (decay 0.995) of its steps' weights.
Every row has P-MPJPE and the flip-aware P-MPJPE (the better of the two left/right
labellings per sample); ours rows also the keypoints' consistency (share of test samples
in which each keypoint is nearest its most frequent joint). Issue 12's targets are
checked on the held-out motions and printed, never tuned for (the seen motions get the
same comparisons, marked for reference, with yes/no): the supervised bound at most 0.5x the
Procrustes mean shape's P-MPJPE; ours + MLP at most 0.8x of it (humanoid) and below it
(quadruped), under each protocol; ours + MLP better than K = 1 and than the untrained network.
bench-results/quality.md holds the tables and the per-joint errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from quality_report import check_targets, per_clip_tables, per_joint_tables, results_table

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
from stages.evaluation.mirror import fit_with_mirror_images, predict_mirrored
from stages.evaluation.supervised import SupervisedLosses, train_supervised
from stages.keypoints.checkpoint import load_run
from stages.keypoints.config import StageTwoConfig, preset
from stages.keypoints.predict import predict_cache
from stages.keypoints.training import FitJob, build_model, fit
from stages.manipulation.frame_pairs import clip_moments
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


def motion_clips(cache: Path, indices: Any) -> list[str]:
    """The motion clip each of the cache's samples `indices` shows ('walk', 'laikago_walk').

    A render cache does not store it: it is drawn again from the world's seed and the
    sample id, as the renderer drew it."""
    reader = CacheReader(cache)
    ids = [str(i) for i in reader.sample_ids()[list(indices)]]
    moments = clip_moments(reader.store.metadata.source["world"], ids)
    return [m.clip.removeprefix("humanoid3d_") for m in moments]


def summarised(result: Any, clips: list[str]) -> dict:
    """A result's JSON summary with its errors per motion clip ("per_clip_mm")."""
    return {**result.summary(), "per_clip_mm": result.by_group(clips)}


def keypoint_rows(
    model: Any,
    num_views: int,
    train: Path,
    tests: dict[str, Path],
    mirror_fit: bool = False,
    mirror_mlp_seeds: int = EvalConfig.mirror_mlp_seeds,
) -> list[dict]:
    """Predict the train cache and every test cache, fit each regressor once on train, score
    it on each test set.

    Each row also holds the mean keypoint-consistency of the keypoints on that test cache.
    mirror_fit adds the project's protocol row, 'mlp+mirror x5': the mean of 5 MLPs fitted
    on the training pairs and their mirror images (`stages.evaluation.mirror`; another
    mirror_mlp_seeds averages that many, for the ablations)."""
    a = predict_cache(model, train, num_views)
    names = joint_names(train)
    train_keypoints, train_joints = a["keypoints_3d"], truth(train, a["index"])
    predicted = {label: predict_cache(model, cache, num_views) for label, cache in tests.items()}
    joints = {label: truth(tests[label], b["index"]) for label, b in predicted.items()}
    # All test sets in one call, so that each regressor is fitted once rather than once per
    # test set (the same seed and data gave the same fit each time).
    test_keypoints = np.concatenate([b["keypoints_3d"] for b in predicted.values()])
    test_joints = np.concatenate(list(joints.values()))
    config = EvalConfig(mirror_mlp_seeds=mirror_mlp_seeds)
    results = regress_and_score(
        train_keypoints, train_joints, test_keypoints, test_joints, config, joint_names=names
    )
    if mirror_fit:
        mirrored = predict_mirrored(model, train, num_views)
        results.append(
            fit_with_mirror_images(
                train_keypoints, train_joints, mirrored, test_keypoints, test_joints, config, names
            )
        )
    rows, start = [], 0
    for label, b in predicted.items():
        end = start + len(b["index"])
        consistency = keypoint_joint_consistency(b["keypoints_3d"], joints[label]).mean_consistency
        clips = motion_clips(tests[label], b["index"])
        for result in results:
            part = score(
                result.regression, result.predictions[start:end], joints[label], config.root_joint,
                joint_names=names,
            )  # fmt: skip
            rows.append({**summarised(part, clips), "test": label, "consistency": consistency})
        start = end
    return rows


def ours(
    folder: Path,
    name: str,
    train: Path,
    tests: dict[str, Path],
    config: Any,
    mirror_fit: bool = False,
    mirror_mlp_seeds: int = EvalConfig.mirror_mlp_seeds,
) -> tuple[list[dict], float]:
    """Train self-supervised, then `keypoint_rows`; rows and training minutes."""
    tic = time.perf_counter()
    fit(FitJob((train,), folder / name, config))
    minutes = (time.perf_counter() - tic) / 60
    run = load_run(folder / name)
    return keypoint_rows(run.model, run.num_views, train, tests, mirror_fit, mirror_mlp_seeds), minutes


def untrained(train: Path, tests: dict[str, Path], config: Any, mirror_fit: bool = False) -> list[dict]:
    """The control: the same network at its seeded initialisation, never trained. What the
    regressor gets from image-dependent but untrained keypoints; training must beat it."""
    model, _ = build_model(config, (train,))
    return keypoint_rows(model.eval(), config.num_views, train, tests, mirror_fit)


SUPERVISED_LOSSES = SupervisedLosses(flip_invariant=True, weight_average=0.995)
"""The bound's losses: dense (voxel and 2D heatmap cross-entropy beside the distance) and
flip-invariant, so it is a ceiling for the flip-aware P-MPJPE. Its weights are averaged
over about the last 200 of its 2,000 steps: on both screening seeds of both categories
this took 0.6 to 7.8 mm off at no cost (README, seventh screening)."""


@dataclass(frozen=True)
class BoundSettings:
    """What makes the supervised bound differ from ours (besides reading the joints)."""

    steps: int = 2000
    """At 64 px and without the decoder its steps are cheaper than ours."""
    volume_size: int = 24
    """Voxels per side: at ours' 16 it missed the quadruped's nearly rigid body by fractions
    of a voxel (README, fifth screening); 24 costs 1.6x per step."""
    extent_margin: float = 0.0
    """0: the cube is the view frustum's, as ours. m > 0: it holds the training joints with
    margin m, no wider than the frustum (on the quadruped, 1.15 shrinks the same 24 voxels
    from 53 to 38 mm). 1.15 helped on both screening seeds but made the benchmark's bound
    worse (README, sixth screening), so it is off."""


def bound_setup(
    base: StageTwoConfig, seed: int, settings: BoundSettings = BoundSettings()
) -> tuple[StageTwoConfig, SupervisedLosses]:
    """The bound's config and losses from ours' `base`. It is told where the joints are, so
    it starts as the paper does (keypoints at the centre): its numbers stay comparable
    across changes of ours' start."""
    config = dataclasses.replace(
        base, seed=seed, steps=settings.steps, keypoint_spread=0.0, volume_size=settings.volume_size
    )
    return config, dataclasses.replace(SUPERVISED_LOSSES, joint_extent_margin=settings.extent_margin)


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
    extent = {"volume_half_extent_m": model.config.volume_half_extent}
    rows = []
    for label, cache in tests.items():
        b = predict_cache(model, cache, config.num_views)
        result = score("direct", b["keypoints_3d"], truth(cache, b["index"]), 0, joint_names=names)
        rows.append({**summarised(result, motion_clips(cache, b["index"])), **extent, "test": label})
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
        default=BoundSettings.steps,
        help="steps of the supervised bound (at 64 px and without the decoder, its steps are cheaper)",
    )
    parser.add_argument(
        "--supervised-volume-size",
        type=int,
        default=BoundSettings.volume_size,
        help="voxels per side of the supervised bound's grid (the cpu preset's 16 leaves voxels "
        "of 144 mm on the humanoid, too coarse for a ceiling; 24 costs 1.6x per step)",
    )
    parser.add_argument(
        "--supervised-extent-margin",
        type=float,
        default=BoundSettings.extent_margin,
        help="M > 0: the bound's grid is a cube M times the largest |coordinate| of the training "
        "joints, or the view frustum where that is smaller (0, the default: always the frustum, "
        "as ours; 1.15 won the screening but lost on the benchmark, README sixth screening)",
    )
    parser.add_argument(
        "--no-mirror-fit",
        dest="mirror_fit",
        action="store_false",
        help="leave out the 'mlp+mirror x5' rows of ours and the untrained network, the project's "
        "protocol: the mean of 5 MLPs fitted on the training pairs and their mirror images (about "
        "5 more minutes; judged beside the paper's MLP)",
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
            clips = motion_clips(test, b)
            for method, baseline in (
                ("mean pose", mean_pose_baseline(known, unseen, 0, joint_names=names)),
                ("Procrustes mean", procrustes_mean_baseline(known, unseen, 0, joint_names=names)),
                (
                    "nearest training pose",
                    nearest_training_pose_baseline(known, unseen, 0, joint_names=names),
                ),
            ):
                row = {**summarised(baseline, clips), "test": label}
                rows += tagged([row], category, method, "-", "-", "-", 0.0)
        for seed in seeds:
            config = dataclasses.replace(base, seed=seed)
            results, minutes = ours(folder, f"ours-seed{seed}", train, tests, config, args.mirror_fit)
            rows += tagged(results, category, "ours", 4, base.num_keypoints, seed, minutes)
        control = untrained(train, tests, dataclasses.replace(base, seed=seeds[0]), args.mirror_fit)
        rows += tagged(control, category, "untrained", 4, base.num_keypoints, seeds[0], 0.0)
        if args.deep:
            # The screened variant that raised consistency but not P-MPJPE on 2026-12-01.
            deep = dataclasses.replace(base, pixel_encoder="deep", pixel_input_size=128, seed=seeds[0])
            results, minutes = ours(folder, "deep", train, tests, deep)
            rows += tagged(results, category, "ours, deep 128 px", 4, base.num_keypoints, seeds[0], minutes)
        single = dataclasses.replace(base, num_views=1, seed=seeds[0])
        results, minutes = ours(folder, "k1", train, tests, single)
        rows += tagged(results, category, "K=1", 1, base.num_keypoints, seeds[0], minutes)
        settings = BoundSettings(
            args.supervised_steps, args.supervised_volume_size, args.supervised_extent_margin
        )
        results, minutes = supervised(train, tests, *bound_setup(base, seeds[0], settings))
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
        + "\n\n" + per_joint_tables(rows) + "\n" + per_clip_tables(rows) + "\n"
    )  # fmt: skip
    print(f"wrote {args.out} and {report} ({record['minutes_total']:.1f} min)")


if __name__ == "__main__":
    main()
