"""Manipulation benchmark: reconstruction quality and the pose-transfer check of issue 7.

    python benchmarks/bench_manipulation.py --run RUN_DIR --cache TEST_CACHE
        [--samples 20] [--pairs 20] [--min-gap 0.3] [--max-gap 1.0] [--noise 0.03,0.1]
        [--out bench-results/manipulation.json]

1. Reconstruction (visual hull, default grid) of the first --samples done samples:
   silhouette IoU in the sample's own views, held-out-view IoU (hull carved from the
   other views, scored in the left-out one: how well the shape predicts an unseen
   view), mean absolute colour error in the views, seconds per sample.
2. The check: --pairs pairs of frames of one clip (synthetic caches); object A rigged
   with the run's predicted keypoints and with the ground-truth joints, posed onto B's;
   silhouette IoU with B's masks: undeformed, rigid only, deformed; and with noisy
   ground-truth joints (--noise), to show how keypoint error limits the transfer.
"""

from __future__ import annotations

import argparse
import datetime
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import machine_info, print_notes, print_table, write_report

from cache_schema import CacheReader
from stages.keypoints.checkpoint import load_run
from stages.manipulation.check import (
    draw_frame_pairs,
    ground_truth_keypoints,
    mean_scores,
    pair_keypoints,
    score_pair,
)
from stages.manipulation.keypoints import learned_adjacency
from stages.manipulation.reconstruct import reconstruct_visual_hull
from stages.manipulation.render import render_views, silhouette_iou
from stages.manipulation.sample import ObjectViews, read_object_views


def views_subset(views: ObjectViews, keep: list[int]) -> ObjectViews:
    return replace(
        views,
        views=views.views[keep],
        masks=views.masks[keep],
        intrinsics=views.intrinsics[keep],
        world_to_camera=views.world_to_camera[keep],
    )


def reconstruction_quality(views: ObjectViews) -> dict[str, float]:
    size = views.masks.shape[-1]
    tic = time.perf_counter()
    gaussians = reconstruct_visual_hull(views).gaussians
    seconds = time.perf_counter() - tic
    radii = gaussians.scales.max(axis=1)
    splats = render_views(
        gaussians.means, gaussians.colours, radii, views.intrinsics, views.world_to_camera, size
    )
    masks = np.stack([s.mask for s in splats])
    both = masks & views.masks
    colour_error = np.mean(
        [
            np.abs(s.image[both[v]] - views.views[v].transpose(1, 2, 0)[both[v]] / 255.0).mean()
            for v, s in enumerate(splats)
        ]
    )
    held_out = []
    for view in range(len(views.masks)):
        others = views_subset(views, [v for v in range(len(views.masks)) if v != view])
        partial = reconstruct_visual_hull(others).gaussians
        alone = views_subset(views, [view])
        splat = render_views(
            partial.means,
            partial.colours,
            partial.scales.max(axis=1),
            alone.intrinsics,
            alone.world_to_camera,
            size,
        )
        held_out.append(float(silhouette_iou(splat[0].mask[None], alone.masks)[0]))
    return {
        "points": gaussians.num_points,
        "iou_in_views": float(silhouette_iou(masks, views.masks).mean()),
        "iou_held_out_view": float(np.mean(held_out)),
        "colour_mae": float(colour_error),
        "seconds": seconds,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="training run directory")
    parser.add_argument("--cache", type=Path, required=True, help="synthetic test cache")
    parser.add_argument("--out", type=Path, default=Path("bench-results/manipulation.json"))
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--min-gap", type=float, default=0.3)
    parser.add_argument("--max-gap", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--noise",
        type=lambda text: [float(x) for x in text.split(",") if x],
        default=[0.03, 0.1],
        help="comma list of sigmas (world units) of noise added to the ground-truth joints",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    reader = CacheReader(args.cache)
    print(f"KeyDiff3D manipulation benchmark, {date}: {args.run} on {args.cache}")

    samples = reader.done_indices()[: args.samples]
    recon = [reconstruction_quality(read_object_views(args.cache, int(i))) for i in samples]
    keys = ("points", "iou_in_views", "iou_held_out_view", "colour_mae", "seconds")
    recon_mean = {k: float(np.mean([r[k] for r in recon])) for k in keys}
    print_table(
        f"Reconstruction (visual hull) of {len(recon)} samples, mean",
        ["points", "IoU in views", "IoU held-out view", "colour MAE", "s/sample"],
        [[recon_mean[k] for k in keys]],
    )

    run = load_run(args.run)
    adjacency = learned_adjacency(run)
    truth = ground_truth_keypoints(reader)
    pairs = draw_frame_pairs(reader, args.pairs, args.min_gap, args.max_gap, args.seed)
    rng = np.random.default_rng(args.seed)
    records = []
    for a, b in pairs:
        first, second = read_object_views(args.cache, a), read_object_views(args.cache, b)
        gaussians = reconstruct_visual_hull(first).gaussians
        record: dict[str, Any] = {"index": [a, b]}
        for name, (joints_a, joints_b, weights) in pair_keypoints(
            run, args.cache, a, b, adjacency, truth
        ).items():
            record[name], _ = score_pair(gaussians, joints_a, joints_b, weights, second)
        if truth is not None:
            # How fast the transfer degrades with keypoint error: independent noise per frame.
            for sigma in args.noise:
                noisy_a = truth[0][a] + rng.normal(scale=sigma, size=truth[0][a].shape)
                noisy_b = truth[0][b] + rng.normal(scale=sigma, size=truth[0][b].shape)
                record[f"ground_truth+noise{sigma:g}"], _ = score_pair(
                    gaussians, noisy_a, noisy_b, truth[1], second
                )
        records.append(record)
    check_mean = mean_scores(records)
    sources = list(check_mean)
    wins = {s: int(sum(r[s]["iou_deformed"] > r[s]["iou_undeformed"] for r in records)) for s in sources}
    print_table(
        f"Pose transfer over {len(records)} pairs of one clip {args.min_gap}-{args.max_gap} s apart: "
        "silhouette IoU with B's masks",
        ["keypoints", "undeformed", "rigid only", "deformed", "deformed > undeformed", "keypoint residual"],
        [
            [
                s,
                check_mean[s]["iou_undeformed"],
                check_mean[s]["iou_rigid"],
                check_mean[s]["iou_deformed"],
                f"{wins[s]}/{len(records)}",
                check_mean[s]["keypoint_residual"],
            ]
            for s in sources
        ],
    )
    print_notes(
        [
            "ground_truth rigs use the cache's joints with an adjacency from bone-length constancy",
            "keypoint residual: mean distance of the posed keypoints to B's keypoints (world units)",
        ]
    )
    body = {
        "reconstruction": {"mean": recon_mean, "samples": [int(i) for i in samples], "per_sample": recon},
        "check": {"mean": check_mean, "deformed_beats_undeformed": wins, "pairs": records},
    }
    return write_report(args, date, machine_info(), started, {"checkpoint": str(run.checkpoint)}, body)


if __name__ == "__main__":
    main()
