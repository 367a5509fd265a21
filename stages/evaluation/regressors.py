"""Maps from discovered keypoints to ground-truth joints, fitted on the training split.

Discovered keypoints are unsupervised, so their order and meaning are arbitrary; the
protocol (METHOD.md "Evaluation") fits a regressor from the training predictions to the
training ground truth and applies it to the test predictions. Inputs are the N keypoints
flattened to (S, N * 3), outputs the J joints flattened to (S, J * 3) (letters: S samples,
D_in = N * 3, D_out = J * 3).

Targets are the ABSOLUTE joints in the cache's frame: the metrics do any root centring
and alignment, so one regressor serves MPJPE, N-MPJPE and P-MPJPE alike.

- `LinearRegressor`: least squares with a bias (optionally ridge), numpy float64, on one
  BLAS thread so that its bits do not depend on the machine's core count.
- `MLPRegressor`: the paper's "2 hid MLP", in torch on the CPU (it is small; the CPU also
  makes it bit-for-bit deterministic for a seed).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from stages.errors import ConfigError
from stages.evaluation.errors import RegressorError
from stages.evaluation.shapes import require_finite, require_shape
from stages.threads import single_threaded_blas, torch_threads

Progress = Callable[[int, int], None]
"""Called with (epochs done, epochs in all) after every epoch."""


def flatten_keypoints(points: np.ndarray) -> np.ndarray:
    """(S, N, 3) keypoints -> (S, N * 3) regressor inputs, each keypoint's x, y, z adjacent."""
    array = require_shape("points", points, ("S", "N", 3), {})
    return array.reshape(array.shape[0], -1)


def unflatten_joints(y: np.ndarray, num_joints: int) -> np.ndarray:
    """(S, J * 3) regressor outputs -> (S, J, 3) joints; the inverse of `flatten_keypoints`."""
    if num_joints < 1:
        raise ValueError(f"num_joints must be >= 1, got {num_joints}")
    array = require_shape("y", y, ("S", num_joints * 3), {})
    return array.reshape(array.shape[0], num_joints, 3)


def _check_training_pair(x: object, y: object) -> tuple[np.ndarray, np.ndarray]:
    sizes: dict[str, int] = {}
    x_array = require_shape("x", x, ("S", "D_in"), sizes)
    y_array = require_shape("y", y, ("S", "D_out"), sizes)
    require_finite("x", x_array)
    require_finite("y", y_array)
    return x_array, y_array


def _check_inputs(x: object, input_dim: int) -> np.ndarray:
    x_array = require_shape("x", x, ("S", input_dim), {})
    require_finite("x", x_array)
    return x_array


class LinearRegressor:
    """y = x W + b by least squares; `ridge` penalises ||W||^2 but never the bias b.

    The bias is left free by fitting W on mean-centred x and y and then setting
    b = mean(y) - mean(x) W, which is the exact minimiser of
    ||x W + b - y||^2 + ridge ||W||^2. `ridge` weighs the SUM of squared residuals over
    samples (as in scikit-learn's Ridge), so its effect shrinks as S grows.
    """

    def __init__(self, ridge: float = 0.0) -> None:
        if not ridge >= 0:
            raise ConfigError(f"ridge must be >= 0, got {ridge}")
        self.ridge = float(ridge)
        self.weights: np.ndarray | None = None
        """(D_in, D_out) after `fit`."""
        self.bias: np.ndarray | None = None
        """(D_out,) after `fit`."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> LinearRegressor:
        """Fit on x (S, D_in) -> y (S, D_out); returns self."""
        x_array, y_array = _check_training_pair(x, y)
        x_mean = x_array.mean(axis=0)
        y_mean = y_array.mean(axis=0)
        x_centred = x_array - x_mean
        y_centred = y_array - y_mean
        if self.ridge > 0:
            # Ridge as an augmented least-squares problem: lstsq's SVD stays stable where
            # forming x^T x would square the condition number.
            input_dim = x_array.shape[1]
            x_centred = np.concatenate([x_centred, np.sqrt(self.ridge) * np.eye(input_dim)])
            y_centred = np.concatenate([y_centred, np.zeros((input_dim, y_array.shape[1]))])
        # Rank-deficient x (more inputs than samples, a constant keypoint) gets the
        # minimum-norm solution rather than an error.
        with single_threaded_blas():
            weights, *_ = np.linalg.lstsq(x_centred, y_centred, rcond=None)
            self.bias = y_mean - x_mean @ weights
        self.weights = weights
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """x (S, D_in) -> (S, D_out) float64."""
        if self.weights is None or self.bias is None:
            raise RegressorError("LinearRegressor.predict called before fit")
        x_array = _check_inputs(x, self.weights.shape[0])
        with single_threaded_blas():
            return x_array @ self.weights + self.bias

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (nested lists of floats); `from_dict` restores it exactly."""
        if self.weights is None or self.bias is None:
            raise RegressorError("LinearRegressor.to_dict called before fit")
        return {
            "kind": "linear",
            "ridge": self.ridge,
            "weights": self.weights.tolist(),
            "bias": self.bias.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinearRegressor:
        """The regressor `to_dict` described."""
        if data.get("kind") != "linear":
            raise RegressorError(f"not a saved linear regressor: kind {data.get('kind')!r}")
        regressor = cls(ridge=data["ridge"])
        weights = np.asarray(data["weights"], dtype=np.float64)
        bias = np.asarray(data["bias"], dtype=np.float64)
        if weights.ndim != 2 or bias.shape != weights.shape[1:]:
            raise RegressorError(f"saved weights {weights.shape} and bias {bias.shape} do not match")
        regressor.weights, regressor.bias = weights, bias
        return regressor


@dataclass(frozen=True)
class MLPRegressorConfig:
    """Settings of the 2-hidden-layer MLP regressor (saved with its weights)."""

    hidden: int = 256
    """Units of each hidden layer (the paper does not say; 256 fits 2,000 samples in seconds)."""
    hidden_layers: int = 2
    """Hidden Linear-ReLU layers before the output Linear (the paper's "2 hid MLP")."""
    epochs: int = 100
    """Passes over the training set."""
    lr: float = 1e-3
    """Adam's initial learning rate, cosine-annealed to 0 over all steps."""
    weight_decay: float = 0.0
    """Adam's L2 penalty on all parameters."""
    batch_size: int = 128
    """Samples per step (the last step of an epoch may be smaller)."""
    seed: int = 0
    """Seeds the local generator that draws the initial weights and the shuffling."""

    def __post_init__(self) -> None:
        for name in ("hidden", "hidden_layers", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MLPRegressorConfig:
        return cls(**data)


def _build_mlp(
    input_dim: int, output_dim: int, config: MLPRegressorConfig, generator: torch.Generator
) -> torch.nn.Sequential:
    """Linear-ReLU x hidden_layers, then Linear, initialised from `generator` alone."""
    widths = [input_dim] + [config.hidden] * config.hidden_layers + [output_dim]
    layers: list[torch.nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        # skip_init: Linear's own init would draw from the global RNG. The values below are
        # PyTorch's default (uniform within 1/sqrt(fan_in)), drawn from our generator.
        linear = torch.nn.utils.skip_init(torch.nn.Linear, fan_in, fan_out)
        bound = 1.0 / np.sqrt(fan_in)
        with torch.no_grad():
            linear.weight.copy_((torch.rand(fan_out, fan_in, generator=generator) * 2 - 1) * bound)
            linear.bias.copy_((torch.rand(fan_out, generator=generator) * 2 - 1) * bound)
        layers.append(linear)
        if index < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


@contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """`stages.threads.torch_threads`, or the caller's count unchanged when None."""
    if num_threads is None:
        yield
        return
    with torch_threads(num_threads):
        yield


def _standardiser(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std; a constant column keeps std 1 so it maps to 0, not NaN."""
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    return mean, np.where(std > 1e-12, std, 1.0)


class MLPRegressor:
    """The paper's "2 hid MLP": Linear-ReLU-Linear-ReLU-Linear from keypoints to joints.

    Inputs and targets are standardised with the training set's per-column mean and std
    (targets too, so that Adam's step size means the same for any unit or frame), the
    loss is the mean squared error of the standardised targets, and training is Adam
    with a cosine learning-rate decay. Runs on the CPU in float32; the same seed, data
    and `num_threads` give identical predictions.

    `num_threads` (not part of the config: it changes the speed and at most the last bits
    of the floats, not the model) is the torch intra-op thread count used inside `fit`
    and `predict`, restored afterwards. The default 1 is deliberate: layers this small
    gain nothing from more threads, two threads on our busy 2-core machine were 10x
    slower than one, and one thread makes the float summation order, hence the bits,
    independent of the machine's core count. None leaves torch's setting alone.
    """

    def __init__(
        self,
        hidden: int = 256,
        hidden_layers: int = 2,
        epochs: int = 100,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: int = 128,
        seed: int = 0,
        num_threads: int | None = 1,
    ) -> None:
        self.num_threads = num_threads
        self.config = MLPRegressorConfig(
            hidden=hidden,
            hidden_layers=hidden_layers,
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            seed=seed,
        )
        self.network: torch.nn.Sequential | None = None
        self.statistics: dict[str, np.ndarray] = {}
        """x_mean, x_std (D_in,) and y_mean, y_std (D_out,) of the training set, after `fit`."""
        self.final_loss: float | None = None
        """Mean standardised training loss of the last epoch."""

    @classmethod
    def from_config(cls, config: MLPRegressorConfig, num_threads: int | None = 1) -> MLPRegressor:
        return cls(**config.to_dict(), num_threads=num_threads)

    def fit(self, x: np.ndarray, y: np.ndarray, progress: Progress | None = None) -> MLPRegressor:
        """Fit on x (S, D_in) -> y (S, D_out); returns self. `progress(done, total)` per epoch."""
        x_array, y_array = _check_training_pair(x, y)
        with _torch_threads(self.num_threads):
            self.network = self._train(x_array, y_array, progress)
        return self

    def _train(
        self, x_array: np.ndarray, y_array: np.ndarray, progress: Progress | None
    ) -> torch.nn.Sequential:
        config = self.config
        x_mean, x_std = _standardiser(x_array)
        y_mean, y_std = _standardiser(y_array)
        self.statistics = {"x_mean": x_mean, "x_std": x_std, "y_mean": y_mean, "y_std": y_std}
        inputs = torch.from_numpy((x_array - x_mean) / x_std).float()
        targets = torch.from_numpy((y_array - y_mean) / y_std).float()

        generator = torch.Generator().manual_seed(config.seed)
        network = _build_mlp(inputs.shape[1], targets.shape[1], config, generator)
        optimizer = torch.optim.Adam(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        num_samples = inputs.shape[0]
        steps_per_epoch = -(-num_samples // config.batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.epochs * steps_per_epoch
        )
        network.train()
        for epoch in range(config.epochs):
            order = torch.randperm(num_samples, generator=generator)
            epoch_loss = 0.0
            for start in range(0, num_samples, config.batch_size):
                batch = order[start : start + config.batch_size]
                loss = torch.nn.functional.mse_loss(network(inputs[batch]), targets[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                epoch_loss += loss.item() * len(batch)
            self.final_loss = epoch_loss / num_samples
            if progress is not None:
                progress(epoch + 1, config.epochs)
        network.eval()
        return network

    def predict(self, x: np.ndarray) -> np.ndarray:
        """x (S, D_in) -> (S, D_out) float64, in the training targets' units and frame."""
        if self.network is None:
            raise RegressorError("MLPRegressor.predict called before fit")
        stats = self.statistics
        x_array = _check_inputs(x, stats["x_mean"].shape[0])
        inputs = torch.from_numpy((x_array - stats["x_mean"]) / stats["x_std"]).float()
        with torch.no_grad(), _torch_threads(self.num_threads):
            outputs = self.network(inputs).double().numpy()
        return outputs * stats["y_std"] + stats["y_mean"]

    def save(self, path: str | Path) -> Path:
        """Write weights, standardisation and config to one safetensors file; returns its path."""
        if self.network is None:
            raise RegressorError("MLPRegressor.save called before fit")
        tensors = {f"network.{k}": v.detach().clone() for k, v in self.network.state_dict().items()}
        tensors.update({f"statistics.{k}": torch.from_numpy(v.copy()) for k, v in self.statistics.items()})
        metadata = {"kind": "mlp", "config": json.dumps(self.config.to_dict())}
        path = Path(path)
        save_file(tensors, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path, num_threads: int | None = 1) -> MLPRegressor:
        """The regressor `save` wrote; predictions are identical to the saved one's."""
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("kind") != "mlp":
            raise RegressorError(f"{path}: not a saved MLP regressor")
        config = MLPRegressorConfig.from_dict(json.loads(metadata["config"]))
        regressor = cls.from_config(config, num_threads=num_threads)
        tensors = load_file(str(path))
        state = {k.removeprefix("network."): v for k, v in tensors.items() if k.startswith("network.")}
        regressor.statistics = {
            k.removeprefix("statistics."): v.numpy()
            for k, v in tensors.items()
            if k.startswith("statistics.")
        }
        input_dim = regressor.statistics["x_mean"].shape[0]
        output_dim = regressor.statistics["y_mean"].shape[0]
        network = _build_mlp(input_dim, output_dim, regressor.config, torch.Generator().manual_seed(0))
        network.load_state_dict(state)
        network.eval()
        regressor.network = network
        return regressor
