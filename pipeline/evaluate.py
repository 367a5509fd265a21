"""`keydiff3d-train eval` as a library call: predict, regress, measure, write JSON, Markdown and PNGs."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cache_schema import CacheError, CacheReader
from pipeline.eval_report import (
    TABLE_2D_HEADER,
    TABLE_HEADER,
    consistency_table,
    per_joint_table,
    table_row,
    write_consistency_matrix,
    write_joint_errors,
    write_skeletons,
)
from stages.evaluation.consistency import keypoint_joint_consistency
from stages.evaluation.evaluate import (
    EvalConfig,
    mean_pose_baseline,
    procrustes_mean_baseline,
    regress_and_score,
    regress_and_score_2d,
)
from stages.evaluation.mirror import fit_with_mirror_images, predict_mirrored
from stages.keypoints.checkpoint import RUN_CONFIG, TrainedRun, latest_checkpoint, load_run
from stages.keypoints.predict import predict_cache
from stages.threads import choose_threads, torch_threads


def evaluation_space(cache: Path, space: str) -> str:
    """'3d' where the cache has 3D ground truth, else '2d' (birds, dogs); or as asked."""
    truth = CacheReader(cache).layout.ground_truth
    if truth is None:
        raise CacheError(f"{cache}: no ground truth to evaluate against")
    if space == "auto":
        return "3d" if truth.has_3d else "2d"
    if (
        space not in ("2d", "3d")
        or (space == "3d" and not truth.has_3d)
        or (space == "2d" and not truth.has_2d)
    ):
        raise CacheError(
            f"{cache}: cannot evaluate in space {space!r} (has_3d={truth.has_3d}, has_2d={truth.has_2d})"
        )
    return space


def predict_with_truth(
    run: TrainedRun,
    cache: Path,
    device: str,
    progress: Callable[[int], None] | None = None,
    space: str = "3d",
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    """Keypoints of every done sample, its ground truth and the joint names.

    The truth is {'joints': (S, J, 3)} in 3D, or {'joints': (S, J, 2), 'visible': (S, J)}
    of the input view (view 0) in 2D.
    """
    reader = CacheReader(cache)
    truth_spec = reader.layout.ground_truth
    assert truth_spec is not None  # checked by evaluation_space
    predicted = predict_cache(run.model, cache, run.num_views, device=device, progress=progress)
    stored = reader.read_ground_truth(predicted["index"].tolist())
    if space == "3d":
        truth = {"joints": stored["joints_3d"]}
    else:
        truth = {
            "joints": stored["joints_2d"][:, 0],
            "visible": stored["joints_2d_visible"][:, 0].astype(bool),
        }
    return predicted, truth, list(truth_spec.joint_names)


@dataclass(frozen=True)
class TrainingSide:
    """What an evaluation reads from the training cache, predicted once and reusable for
    several test caches (the demo scores held-out and seen motions against one fit set)."""

    run: TrainedRun
    cache: Path
    space: str
    predicted: dict[str, np.ndarray]
    """`predict_cache`'s output on the training cache."""
    truth: dict[str, np.ndarray]
    """{'joints': (S, J, 3)} in 3D; in 2D also 'visible' (S, J), of the input view."""
    joint_names: list[str]
    mirrored: dict[str, np.ndarray] | None
    """`predict_mirrored`'s output on the same samples (mirror_fit), else None."""


def predict_training_side(
    run_dir: Path,
    train_cache: Path,
    space: str,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
    threads: int | None = None,
    mirror_fit: bool = False,
) -> TrainingSide:
    """Load the run and predict the training cache (and its mirror images with mirror_fit).

    space: '2d' or '3d' (resolve 'auto' against the test cache with `evaluation_space`).
    mirror_fit needs 3D and a pixel-feature run (`stages.evaluation.mirror`)."""
    run = load_run(run_dir, device)
    evaluation_space(train_cache, space)
    if mirror_fit and space != "3d":
        raise CacheError(
            f"{train_cache}: --mirror-fit needs 3D ground truth, and this evaluation is in {space}"
        )
    with torch_threads(choose_threads(threads)):
        # First, so that a diffusion-feature run is refused before anything is predicted.
        mirrored = (
            predict_mirrored(run.model, train_cache, run.num_views, device=device) if mirror_fit else None
        )
        predicted, truth, names = predict_with_truth(run, train_cache, device, progress, space)
    if mirrored is not None and not np.array_equal(mirrored["index"], predicted["index"]):
        raise CacheError(f"{train_cache}: its samples changed while it was being read; evaluate again")
    return TrainingSide(run, Path(train_cache), space, predicted, truth, names, mirrored)


def run_eval(
    run_dir: Path,
    train_cache: Path,
    test_cache: Path,
    out: Path,
    config: EvalConfig | None = None,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
    space: str = "auto",
    threads: int | None = None,
    mirror_fit: bool = False,
    training: TrainingSide | None = None,
) -> dict[str, Any]:
    """Write metrics.json, table.md and PNGs into `out`; return the record.

    In 3D also per_joint.md (P-MPJPE and flip-aware P-MPJPE per joint), consistency.md and
    consistency.png (which joint each keypoint is nearest, on the test samples).

    space: '3d' (MPJPE family), '2d' (input-view error normalised by the image size), or
    'auto' (3d where the test cache has 3D ground truth).

    threads: torch intra-op threads while predicting (None: `choose_threads`' default; the
    MLP regressor keeps its own single thread, see MLPRegressor).

    mirror_fit: also fit the MLP on the training pairs plus their mirror images (3D, pixel-
    feature runs only; `stages.evaluation.mirror`), the mean of config.mirror_mlp_seeds of
    them: an extra result row, 'mlp+mirror x5' by default (`mirror_fit_label`).

    training: `predict_training_side`'s result for this run and train cache, to skip
    predicting it again (its mirror images then decide mirror_fit). One predicted for
    another cache, space or checkpoint than run_dir's current one is refused.
    """
    config = config or EvalConfig()
    space = evaluation_space(test_cache, space)
    if training is None:
        training = predict_training_side(run_dir, train_cache, space, device, progress, threads, mirror_fit)
    elif training.space != space or training.cache != Path(train_cache):
        raise ValueError(f"the training side was predicted for {training.cache} in {training.space}")
    elif training.run.checkpoint.resolve() != (latest_checkpoint(Path(run_dir)) or Path()).resolve():
        # Another run's (or an older checkpoint's) keypoints would be mixed with this run's.
        raise ValueError(
            f"the training side was predicted with {training.run.checkpoint}, not with {run_dir}'s "
            "current checkpoint"
        )
    run, train, train_truth, names = training.run, training.predicted, training.truth, training.joint_names
    mirrored = training.mirrored
    run_config = json.loads((Path(run_dir) / RUN_CONFIG).read_text())["stage_two"]
    with torch_threads(choose_threads(threads)):
        test, test_truth, test_names = predict_with_truth(run, test_cache, device, progress, space)
    if names != test_names:
        raise CacheError(f"{train_cache} and {test_cache} have different joints: {names} vs {test_names}")
    record: dict[str, Any] = {
        "run_dir": str(Path(run_dir).resolve()),
        "checkpoint": str(run.checkpoint),
        "train_cache": str(train_cache),
        "test_cache": str(test_cache),
        "space": space,
        "train_samples": len(train["index"]),
        "test_samples": len(test["index"]),
        "joint_names": names,
        "eval_config": {**config.__dict__, "regressors": list(config.regressors)},
        "mirror_fit": mirrored is not None,
        "stage_two": run_config,
    }
    out.mkdir(parents=True, exist_ok=True)
    views, keypoints = run_config["num_views"], run_config["num_keypoints"]
    if space == "2d":
        image_size = CacheReader(test_cache).layout.image_size
        result = regress_and_score_2d(
            train["keypoints_2d"][:, 0], train_truth["joints"], train_truth["visible"],
            test["keypoints_2d"][:, 0], test_truth["joints"], test_truth["visible"], image_size, config.ridge,
        )  # fmt: skip
        result.pop("predictions")
        record["results"] = [result]
        percent = result["overall_percent"]
        table = (
            TABLE_2D_HEADER
            + f"| KeyDiff3D (ours) | {views} | {keypoints} | {result['regression']} | {percent:.2f} |\n"
        )
        write_joint_errors(
            out / "joint_errors.png", names, [_per_joint_percent(result)], "error / image size (%)"
        )
    else:
        known, unseen = train_truth["joints"], test_truth["joints"]
        results = regress_and_score(
            train["keypoints_3d"], known, test["keypoints_3d"], unseen, config, joint_names=names
        )
        if mirrored is not None:
            results.append(
                fit_with_mirror_images(
                    train["keypoints_3d"], known, mirrored, test["keypoints_3d"], unseen, config, names
                )
            )
        root = config.root_joint
        baselines = {
            "mean pose (baseline)": mean_pose_baseline(known, unseen, root, joint_names=names),
            "Procrustes mean shape (baseline)": procrustes_mean_baseline(
                known, unseen, root, joint_names=names
            ),
        }
        rows = [r.summary() for r in results]
        record["results"] = rows
        record["baselines"] = [{"method": name, **b.summary()} for name, b in baselines.items()]
        table = TABLE_HEADER + "".join(table_row("KeyDiff3D (ours)", views, keypoints, row) for row in rows)
        table += "".join(table_row(name, "-", "-", b.summary()) for name, b in baselines.items())
        best = min(results, key=lambda r: r.mpjpe.overall_mm)
        title = f"test samples, {best.regression} regression"
        write_skeletons(out / "skeletons.png", best.predictions, unseen, title)
        write_joint_errors(out / "joint_errors.png", names, rows)
        labelled = {f"ours + {row['regression']}": row for row in rows}
        labelled |= {name.removesuffix(" (baseline)"): b.summary() for name, b in baselines.items()}
        (out / "per_joint.md").write_text(per_joint_table(names, labelled))
        consistency = keypoint_joint_consistency(test["keypoints_3d"], unseen)
        record["keypoint_consistency"] = consistency.to_dict(names)
        (out / "consistency.md").write_text(consistency_table(record["keypoint_consistency"]))
        write_consistency_matrix(
            out / "consistency.png",
            consistency.frequencies,
            names,
            f"nearest joint of each keypoint on {len(unseen)} test samples "
            f"(mean consistency {consistency.mean_consistency:.2f})",
        )
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    (out / "table.md").write_text(table)
    return record


def _per_joint_percent(result: dict[str, Any]) -> dict[str, Any]:
    values = [np.nan if v is None else 100 * v for v in result["per_joint"]]
    return {"regression": result["regression"], "per_joint_mpjpe_mm": values}
