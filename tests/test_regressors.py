"""Regressors from keypoints to joints: exact recovery, the unpenalised bias, determinism, saving."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from stages.errors import ConfigError
from stages.evaluation.errors import RegressorError, ShapeError
from stages.evaluation.regressors import (
    LinearRegressor,
    MLPRegressor,
    MLPRegressorConfig,
    flatten_keypoints,
    unflatten_joints,
)
from stages.threads import single_threaded_blas

# Small enough to fit in well under a second per MLP.
TINY_MLP = {"hidden": 32, "epochs": 40, "batch_size": 32, "lr": 3e-3}


def affine_data(rng: np.random.Generator, samples: int = 50, d_in: int = 6, d_out: int = 4):
    weights = rng.normal(size=(d_in, d_out))
    bias = rng.normal(size=d_out)
    x = rng.normal(size=(samples, d_in)) + 3.0
    return x, x @ weights + bias, weights, bias


def nonlinear_data(rng: np.random.Generator, samples: int):
    """A smooth map no affine function fits: y = sin(2 x_0) * x_1, |x| per coordinate."""
    x = rng.uniform(-1.5, 1.5, size=(samples, 3))
    y = np.stack([np.sin(2 * x[:, 0]) * x[:, 1], np.abs(x[:, 2]), x[:, 0] ** 2], axis=1)
    return x, y


# Flattening


def test_flatten_and_unflatten_keep_each_points_coordinates_together():
    points = np.arange(2 * 4 * 3, dtype=float).reshape(2, 4, 3)
    flat = flatten_keypoints(points)
    assert flat.shape == (2, 12)
    np.testing.assert_array_equal(flat[1, 3:6], points[1, 1])
    np.testing.assert_array_equal(unflatten_joints(flat, 4), points)
    with pytest.raises(ShapeError, match=r"y must have shape \(S, 15\)"):
        unflatten_joints(flat, 5)
    with pytest.raises(ShapeError, match="points"):
        flatten_keypoints(np.zeros((2, 4, 2)))


# Linear


def test_linear_recovers_an_exact_affine_map():
    rng = np.random.default_rng(0)
    x, y, weights, bias = affine_data(rng)
    regressor = LinearRegressor().fit(x, y)
    np.testing.assert_allclose(regressor.weights, weights, atol=1e-8)
    np.testing.assert_allclose(regressor.bias, bias, atol=1e-8)
    x_test = rng.normal(size=(7, 6))
    prediction = regressor.predict(x_test)
    assert prediction.shape == (7, 4)
    np.testing.assert_allclose(prediction, x_test @ weights + bias, atol=1e-8)


def test_ridge_shrinks_the_weights_but_not_the_bias():
    rng = np.random.default_rng(1)
    x, y, _, _ = affine_data(rng, samples=40)
    plain = LinearRegressor().fit(x, y)
    ridged = LinearRegressor(ridge=50.0).fit(x, y)
    assert np.linalg.norm(ridged.weights) < 0.9 * np.linalg.norm(plain.weights)
    # An unpenalised bias passes through the means: mean(y) = mean(x) W + b for any ridge.
    np.testing.assert_allclose(ridged.predict(x.mean(axis=0, keepdims=True))[0], y.mean(axis=0), atol=1e-10)
    # With centred inputs the bias is exactly mean(y), however strong the ridge.
    centred = x - x.mean(axis=0)
    huge = LinearRegressor(ridge=1e6).fit(centred, y + 100.0)
    np.testing.assert_allclose(huge.bias, y.mean(axis=0) + 100.0, atol=1e-10)
    assert np.abs(huge.weights).max() < 1e-2


def test_linear_ridge_matches_the_normal_equations():
    rng = np.random.default_rng(2)
    x, y, _, _ = affine_data(rng, samples=30)
    ridge = 3.0
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    expected = np.linalg.solve(xc.T @ xc + ridge * np.eye(x.shape[1]), xc.T @ yc)
    np.testing.assert_allclose(LinearRegressor(ridge=ridge).fit(x, y).weights, expected, atol=1e-10)


def test_linear_to_dict_round_trip_through_json():
    rng = np.random.default_rng(3)
    x, y, _, _ = affine_data(rng)
    regressor = LinearRegressor(ridge=0.5).fit(x, y)
    restored = LinearRegressor.from_dict(json.loads(json.dumps(regressor.to_dict())))
    assert restored.ridge == 0.5
    np.testing.assert_array_equal(restored.predict(x), regressor.predict(x))
    with pytest.raises(RegressorError, match="kind"):
        LinearRegressor.from_dict({"kind": "mlp"})


def test_linear_bad_use():
    with pytest.raises(RegressorError, match="before fit"):
        LinearRegressor().predict(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match="ridge"):
        LinearRegressor(ridge=-1.0)
    with pytest.raises(ShapeError, match=r"y must have shape \(S, D_out\) = \(4, >=1\), got \(5, 2\)"):
        LinearRegressor().fit(np.zeros((4, 3)), np.zeros((5, 2)))
    with pytest.raises(ShapeError, match="x must have shape"):
        LinearRegressor().fit(np.zeros((4, 3, 1)), np.zeros((4, 2)))
    regressor = LinearRegressor().fit(np.random.default_rng(0).normal(size=(5, 3)), np.zeros((5, 2)))
    with pytest.raises(ShapeError, match=r"x must have shape \(S, 3\)"):
        regressor.predict(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="x must be finite"):
        regressor.predict(np.full((2, 3), np.inf))


# MLP


@pytest.fixture(scope="module")
def nonlinear_split():
    rng = np.random.default_rng(4)
    return nonlinear_data(rng, 300), nonlinear_data(rng, 200)


@pytest.fixture(scope="module")
def fitted_mlp(nonlinear_split):
    (x, y), _ = nonlinear_split
    return MLPRegressor(**TINY_MLP, seed=7).fit(x, y)


def test_mlp_is_deterministic_for_a_seed(nonlinear_split, fitted_mlp):
    (x, y), (x_test, _) = nonlinear_split
    global_state = torch.random.get_rng_state()
    again = MLPRegressor(**TINY_MLP, seed=7).fit(x, y)
    np.testing.assert_array_equal(again.predict(x_test), fitted_mlp.predict(x_test))
    other = MLPRegressor(**TINY_MLP, seed=8).fit(x, y)
    assert np.abs(other.predict(x_test) - fitted_mlp.predict(x_test)).max() > 1e-4
    # Library code draws from its own generator only.
    assert torch.equal(torch.random.get_rng_state(), global_state)


def test_mlp_beats_linear_on_a_smooth_nonlinear_map(nonlinear_split, fitted_mlp):
    (x, y), (x_test, y_test) = nonlinear_split
    linear_error = np.mean((LinearRegressor().fit(x, y).predict(x_test) - y_test) ** 2)
    mlp_error = np.mean((fitted_mlp.predict(x_test) - y_test) ** 2)
    assert mlp_error < 0.5 * linear_error
    assert fitted_mlp.predict(x_test).shape == (200, 3)


def test_mlp_save_load_round_trip(tmp_path, nonlinear_split, fitted_mlp):
    _, (x_test, _) = nonlinear_split
    path = fitted_mlp.save(tmp_path / "mlp.safetensors")
    restored = MLPRegressor.load(path)
    assert restored.config == fitted_mlp.config
    np.testing.assert_array_equal(restored.predict(x_test), fitted_mlp.predict(x_test))


def test_mlp_restores_the_thread_count_and_reports_progress(nonlinear_split):
    (x, y), _ = nonlinear_split
    before = torch.get_num_threads()
    seen = []
    MLPRegressor(hidden=8, epochs=3, num_threads=1).fit(
        x[:20], y[:20], progress=lambda d, t: seen.append((d, t))
    )
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert torch.get_num_threads() == before


def test_mlp_bad_use(tmp_path):
    with pytest.raises(RegressorError, match="before fit"):
        MLPRegressor().predict(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match="hidden_layers"):
        MLPRegressor(hidden_layers=0)
    with pytest.raises(ConfigError, match="lr"):
        MLPRegressorConfig(lr=0.0)
    with pytest.raises(ShapeError, match="y must have shape"):
        MLPRegressor(epochs=1).fit(np.zeros((4, 3)), np.zeros((3, 2)))
    not_mlp = tmp_path / "other.safetensors"
    from safetensors.numpy import save_file

    save_file({"a": np.zeros(2)}, str(not_mlp))
    with pytest.raises(RegressorError, match="not a saved MLP"):
        MLPRegressor.load(not_mlp)


def test_mlp_hidden_layer_count_builds_that_many_relus(nonlinear_split):
    (x, y), _ = nonlinear_split
    network = MLPRegressor(hidden=8, hidden_layers=3, epochs=1).fit(x[:10], y[:10]).network
    assert sum(isinstance(m, torch.nn.ReLU) for m in network) == 3
    assert sum(isinstance(m, torch.nn.Linear) for m in network) == 4


def test_linear_regressor_bits_do_not_depend_on_blas_threads():
    # At this size OpenBLAS splits the least-squares solve by its thread count: without the
    # pin, 1 and 2 threads gave weights that differ in the last bits.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2000, 96)), rng.normal(size=(2000, 48))
    fitted = {}
    for threads in (2, 1):
        with threadpool_limits(limits=threads, user_api="blas"):
            regressor = LinearRegressor().fit(x, y)
            fitted[threads] = (regressor.weights, regressor.predict(x[:500]))
    assert fitted[1][0].tobytes() == fitted[2][0].tobytes()
    assert fitted[1][1].tobytes() == fitted[2][1].tobytes()


def test_single_threaded_blas_restores_the_callers_limits():
    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        with single_threaded_blas():
            assert all(n == 1 for n in blas_threads())
        assert blas_threads() == before
