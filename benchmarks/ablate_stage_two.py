"""One ablation row: train one stage-two variant on a synthetic train cache, score it on held-out motions.

    python benchmarks/ablate_stage_two.py --category humanoid --method ours --seed 2 \\
        --set pixel_encoder=deep --set lambda_colour=1.0 --name deep+colour

Renders (once, into --work) a train and a test cache of the synthetic world, trains the
`cpu` preset of the quality benchmark (pixel features, SSIM) with the --set overrides,
predicts both caches and scores the test cache (linear and MLP regressors fitted on the
train cache; 'supervised' scores its keypoints directly). Appends one JSON line per
regression to --out, with the Procrustes mean shape beside it, and prints them. Used to
screen objective changes on seeds the quality benchmark does not use (it uses model seeds
0 and 1 and world seeds 0 and 1): --seed picks the model's, --world-seed N renders the
train cache with seed N and the test cache with N + 1. --benchmark-bound gives --method
supervised the benchmark's bound settings (`bench_quality.BoundSettings`, all but its
steps), so that a row of the bound needs no --set to match it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from quality_models import (
    SUPERVISED_LOSSES,
    BoundSettings,
    base_config,
    bound_setup,
    joint_names,
    ours,
    render,
    supervised,
    truth,
)

from cache_schema import CacheReader
from stages.evaluation.evaluate import EvalConfig, procrustes_mean_baseline
from stages.evaluation.supervised import SupervisedLosses
from stages.keypoints.config import StageTwoConfig
from stages.synthetic.world import SyntheticWorldConfig
from stages.threads import torch_threads


def parse_overrides(pairs: list[str], target: type = StageTwoConfig, option: str = "--set") -> dict[str, Any]:
    """key=value pairs -> fields of the dataclass `target`, each value parsed as JSON when it
    parses (else a string)."""
    fields = {f.name for f in dataclasses.fields(target)}
    values: dict[str, Any] = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        if key not in fields:
            raise SystemExit(f"{option} {pair}: no {target.__name__} field {key!r}")
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError:
            values[key] = text
    return values


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--category", default="humanoid")
    parser.add_argument("--method", choices=("ours", "supervised"), default="ours")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--test-samples", type=int, default=500)
    parser.add_argument(
        "--world-version", type=int, default=None, help="synthetic world version (default: current)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument(
        "--loss",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a SupervisedLosses field of the bound (--method supervised), over the benchmark's",
    )
    parser.add_argument(
        "--world-seed",
        type=int,
        default=0,
        help="seed of the train cache; the test cache uses it + 1 (0: the quality benchmark's world)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads outside the fit (predictions, regressors, the bound); the screening "
        "rows in the README ran at 1",
    )
    parser.add_argument(
        "--benchmark-bound",
        action="store_true",
        help="with --method supervised: the quality benchmark's bound (keypoints start at the "
        "centre, its grid, cube and weight average; not its steps) before --set and --loss",
    )
    parser.add_argument(
        "--mirror-fit",
        action="store_true",
        help="with --method ours: also the row of MLPs fitted on the training pairs and on their "
        "mirror images ('mlp+mirror x5', the project's protocol)",
    )
    parser.add_argument(
        "--mirror-mlp-seeds",
        type=int,
        default=EvalConfig.mirror_mlp_seeds,
        help="with --mirror-fit: MLPs averaged in that row (1: the single MLP of the ninth "
        "screening, 'mlp+mirror')",
    )
    parser.add_argument("--name", default=None)
    parser.add_argument("--work", type=Path, default=Path("bench-results/ablation-work"))
    parser.add_argument("--out", type=Path, default=Path("bench-results/ablation.jsonl"))
    args = parser.parse_args()
    with torch_threads(args.threads):
        run(args)


def run(args: argparse.Namespace) -> None:
    """One ablation row for parsed arguments (see `main`)."""
    # Without --benchmark-bound, the bound's losses of the screenings recorded before its
    # weight average, so that their commands still give their numbers.
    config, losses = base_config(args.steps), dataclasses.replace(SUPERVISED_LOSSES, weight_average=0.0)
    if args.mirror_fit and args.method != "ours":
        raise SystemExit("--mirror-fit: only with --method ours")
    if args.benchmark_bound:
        if args.method != "supervised":
            raise SystemExit("--benchmark-bound: only with --method supervised")
        config, losses = bound_setup(config, args.seed, BoundSettings(steps=args.steps))
    config = dataclasses.replace(config, seed=args.seed, **parse_overrides(args.set))
    version = args.world_version or SyntheticWorldConfig().version
    folder = args.work / f"{args.category}-v{version}"
    world_seeds = (args.world_seed, args.world_seed + 1)
    train = render(folder, args.category, "train", args.train_samples, version, seed=world_seeds[0])
    test = render(folder, args.category, "test", args.test_samples, version, seed=world_seeds[1])
    tests = {"held-out motions": test}
    a, b = CacheReader(train).done_indices(), CacheReader(test).done_indices()
    shape = procrustes_mean_baseline(
        truth(train, a), truth(test, b), 0, joint_names=joint_names(train)
    ).summary()
    losses = dataclasses.replace(losses, **parse_overrides(args.loss, SupervisedLosses, "--loss"))
    name = args.name or ",".join(["benchmark-bound"] * args.benchmark_bound + args.set + args.loss) or "base"
    tic = time.perf_counter()
    if args.method == "ours":
        run = folder / f"{name}-seed{args.seed}-{int(time.time())}"
        results, minutes = ours(
            run.parent, run.name, train, tests, config, args.mirror_fit, args.mirror_mlp_seeds
        )
    else:
        results, minutes = supervised(train, tests, config, losses)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as out:
        for r in results:
            row = {
                "name": name,
                "method": args.method,
                "category": args.category,
                "seed": args.seed,
                "steps": args.steps,
                "world_version": version,
                "world_seeds": list(world_seeds),
                "torch_threads": args.threads,
                "overrides": args.set,
                "loss_overrides": args.loss,
                "benchmark_bound": args.benchmark_bound,
                "regression": r["regression"],
                "p_mpjpe_mm": r["p_mpjpe_mm"],
                "pf_mpjpe_mm": r["pf_mpjpe_mm"],
                "consistency": r.get("consistency"),
                "direction_world": r.get("direction_world"),
                "direction_figure": r.get("direction_figure"),
                "mpjpe_mm": r["mpjpe_mm"],
                "procrustes_mean_p_mpjpe_mm": shape["p_mpjpe_mm"],
                "procrustes_mean_pf_mpjpe_mm": shape["pf_mpjpe_mm"],
                "train_minutes": minutes,
                "minutes": (time.perf_counter() - tic) / 60,
            }
            out.write(json.dumps(row) + "\n")
            print(
                f"{name:30s} {args.method:10s} {args.category:9s} seed {args.seed} {r['regression']:7s} "
                f"P-MPJPE {r['p_mpjpe_mm']:6.1f} (Procrustes mean {shape['p_mpjpe_mm']:6.1f}) "
                f"flip-aware {r['pf_mpjpe_mm']:6.1f} (Procrustes mean {shape['pf_mpjpe_mm']:6.1f}) "
                f"consistency {r.get('consistency', float('nan')):.2f}  {minutes:.1f} min"
            )


if __name__ == "__main__":
    main()
