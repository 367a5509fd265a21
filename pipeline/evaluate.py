"""`keydiff3d-train eval` as a library call: predict, regress, measure, write JSON, Markdown and PNGs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cache_schema import CacheError, CacheReader
from pipeline.eval_report import TABLE_HEADER, table_row, write_joint_errors, write_skeletons
from stages.evaluation.evaluate import EvalConfig, mean_pose_baseline, regress_and_score
from stages.keypoints.checkpoint import latest_checkpoint, load_model
from stages.keypoints.predict import predict_cache


def predict_with_truth(
    run_dir: Path, cache: Path, device: str, progress: Callable[[int], None] | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """Keypoints of every done sample, its 3D ground truth (S, J, 3) and the joint names."""
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise ValueError(f"{run_dir}: no checkpoint (run `keydiff3d-train fit` first)")
    config = json.loads((Path(run_dir) / "config.json").read_text())["stage_two"]
    reader = CacheReader(cache)
    truth_spec = reader.layout.ground_truth
    if truth_spec is None or not truth_spec.has_3d:
        raise CacheError(f"{cache}: no 3D ground truth to evaluate against")
    predicted = predict_cache(
        load_model(checkpoint), cache, config["num_views"], device=device, progress=progress
    )
    truth = reader.read_ground_truth(predicted["index"].tolist())["joints_3d"]
    return predicted, truth, list(truth_spec.joint_names)


def run_eval(
    run_dir: Path,
    train_cache: Path,
    test_cache: Path,
    out: Path,
    config: EvalConfig | None = None,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write metrics.json, table.md, skeletons.png and joint_errors.png into `out`; return the record."""
    config = config or EvalConfig()
    if latest_checkpoint(run_dir) is None:
        raise ValueError(f"{run_dir}: no checkpoint (run `keydiff3d-train fit` first)")
    run_config = json.loads((Path(run_dir) / "config.json").read_text())["stage_two"]
    train, train_truth, names = predict_with_truth(run_dir, train_cache, device, progress)
    test, test_truth, test_names = predict_with_truth(run_dir, test_cache, device, progress)
    if names != test_names:
        raise CacheError(f"{train_cache} and {test_cache} have different joints: {names} vs {test_names}")
    results = regress_and_score(train["keypoints_3d"], train_truth, test["keypoints_3d"], test_truth, config)
    baseline = mean_pose_baseline(train_truth, test_truth, config.root_joint)
    rows = [r.summary() for r in results]
    record = {
        "run_dir": str(Path(run_dir).resolve()),
        "checkpoint": str(latest_checkpoint(run_dir)),
        "train_cache": str(train_cache),
        "test_cache": str(test_cache),
        "train_samples": len(train_truth),
        "test_samples": len(test_truth),
        "joint_names": names,
        "eval_config": {**config.__dict__, "regressors": list(config.regressors)},
        "stage_two": run_config,
        "results": rows,
        "baselines": [baseline.summary()],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    views, keypoints = run_config["num_views"], run_config["num_keypoints"]
    table = TABLE_HEADER + "".join(table_row("KeyDiff3D (ours)", views, keypoints, row) for row in rows)
    table += table_row("mean pose (baseline)", "-", "-", baseline.summary())
    (out / "table.md").write_text(table)
    best = min(results, key=lambda r: r.mpjpe.overall_mm)
    write_skeletons(
        out / "skeletons.png", best.predictions, test_truth, f"test samples, {best.regression} regression"
    )
    write_joint_errors(out / "joint_errors.png", names, rows)
    return record
