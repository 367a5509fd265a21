"""From discovered keypoints to joint errors: fit regressors on training data, measure on test data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stages.evaluation.metrics import (
    PoseErrors,
    mpjpe,
    n_mpjpe,
    normalised_2d_error,
    p_mpjpe,
    procrustes_aligned,
)
from stages.evaluation.regressors import LinearRegressor, MLPRegressor, flatten_keypoints, unflatten_joints

REGRESSORS = ("linear", "mlp")


@dataclass(frozen=True)
class EvalConfig:
    """How discovered keypoints are mapped to ground-truth joints."""

    regressors: tuple[str, ...] = REGRESSORS
    """'linear' (least squares with bias) and/or 'mlp' (2 hidden layers, the paper's '2 hid MLP')."""
    ridge: float = 0.0
    """Ridge penalty of the linear regressor (the bias is not penalised)."""
    seed: int = 0
    """Seed of the MLP's initialisation and shuffling."""
    root_joint: int = 0
    """Joint that N-MPJPE centres on (the pelvis / hip in Human3.6M order)."""

    def __post_init__(self) -> None:
        unknown = [r for r in self.regressors if r not in REGRESSORS]
        if unknown or not self.regressors:
            raise ValueError(f"regressors must be a non-empty subset of {REGRESSORS}, got {self.regressors}")


@dataclass(frozen=True)
class RegressionResult:
    """Errors of one regressor on the test set, and its predictions (S, J, 3)."""

    regression: str
    mpjpe: PoseErrors
    n_mpjpe: PoseErrors
    p_mpjpe: PoseErrors
    predictions: np.ndarray

    def summary(self) -> dict[str, Any]:
        return {
            "regression": self.regression,
            "mpjpe_mm": self.mpjpe.overall_mm,
            "n_mpjpe_mm": self.n_mpjpe.overall_mm,
            "p_mpjpe_mm": self.p_mpjpe.overall_mm,
            "per_joint_mpjpe_mm": self.mpjpe.per_joint_mm.tolist(),
            "per_joint_p_mpjpe_mm": self.p_mpjpe.per_joint_mm.tolist(),
        }


def score(regression: str, predictions: np.ndarray, truth: np.ndarray, root_joint: int) -> RegressionResult:
    """All three errors of predicted joints (S, J, 3) against the truth (S, J, 3)."""
    return RegressionResult(
        regression,
        mpjpe(predictions, truth),
        n_mpjpe(predictions, truth, root=root_joint),
        p_mpjpe(predictions, truth),
        predictions,
    )


def regress_and_score(
    train_keypoints: np.ndarray,
    train_joints: np.ndarray,
    test_keypoints: np.ndarray,
    test_joints: np.ndarray,
    config: EvalConfig,
) -> list[RegressionResult]:
    """Fit each regressor keypoints (S, N, 3) -> joints (S, J, 3) on train, score it on test."""
    x_train, x_test = flatten_keypoints(train_keypoints), flatten_keypoints(test_keypoints)
    y_train = flatten_keypoints(train_joints)
    joints = train_joints.shape[1]
    results = []
    for name in config.regressors:
        regressor = (
            LinearRegressor(ridge=config.ridge) if name == "linear" else MLPRegressor(seed=config.seed)
        )
        regressor.fit(x_train, y_train)
        predicted = unflatten_joints(regressor.predict(x_test), joints)
        results.append(score(name, predicted, test_joints, config.root_joint))
    return results


def mean_pose_baseline(
    train_joints: np.ndarray, test_joints: np.ndarray, root_joint: int
) -> RegressionResult:
    """Predict the training set's mean pose (J, 3) for every test sample."""
    mean = train_joints.mean(axis=0, keepdims=True)
    return score("mean pose", np.repeat(mean, len(test_joints), axis=0), test_joints, root_joint)


def regress_and_score_2d(
    train_keypoints: np.ndarray,
    train_joints: np.ndarray,
    train_visible: np.ndarray,
    test_keypoints: np.ndarray,
    test_joints: np.ndarray,
    test_visible: np.ndarray,
    image_size: float,
    ridge: float = 0.0,
) -> dict[str, Any]:
    """The 2D protocol (birds, dogs): keypoints projected into the input view, regressed to
    the annotated parts, error normalised by the image size.

    keypoints (S, N, 2) and joints (S, J, 2) in input-view pixels, visible (S, J) bool.
    One linear regressor per joint, fitted on the training samples where that joint is
    annotated (annotations are missing at random, so one joint regressor cannot use all).
    """
    x_train = train_keypoints.reshape(len(train_keypoints), -1)
    x_test = test_keypoints.reshape(len(test_keypoints), -1)
    predicted = np.zeros_like(test_joints, dtype=np.float64)
    for joint in range(train_joints.shape[1]):
        rows = np.flatnonzero(train_visible[:, joint])
        if len(rows) == 0:
            predicted[:, joint] = np.nan
            continue
        regressor = LinearRegressor(ridge=ridge).fit(x_train[rows], train_joints[rows, joint])
        predicted[:, joint] = regressor.predict(x_test)
    errors = normalised_2d_error(predicted, test_joints, test_visible.astype(bool), image_size)
    return {"regression": "linear per joint", **errors.to_dict(), "predictions": predicted}


def procrustes_mean_baseline(
    train_joints: np.ndarray, test_joints: np.ndarray, root_joint: int, iterations: int = 10
) -> RegressionResult:
    """Predict the training set's Procrustes mean shape: the baseline P-MPJPE should be read against.

    The plain mean pose averages poses under random global rotations (the synthetic world
    turns each figure to a random yaw) into a shrunken blob, which inflates its P-MPJPE.
    Here every training pose (S, J, 3) is aligned by similarity to the running mean
    (generalised Procrustes) before averaging. Only P-MPJPE is meaningful for this row:
    the mean's frame is arbitrary, so its MPJPE and N-MPJPE are not comparable.
    """
    mean = train_joints[0] - train_joints[0].mean(axis=0)
    for _ in range(iterations):
        aligned = procrustes_aligned(train_joints, np.repeat(mean[None], len(train_joints), axis=0))
        mean = aligned.mean(axis=0)
        mean = (mean - mean.mean(axis=0)) / max(float(np.linalg.norm(mean - mean.mean(axis=0))), 1e-12)
    scale = float(
        np.mean(np.linalg.norm(train_joints - train_joints.mean(axis=1, keepdims=True), axis=(1, 2)))
    )
    return score(
        "Procrustes mean", np.repeat((mean * scale)[None], len(test_joints), axis=0), test_joints, root_joint
    )
