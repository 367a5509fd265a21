"""Noise-level bookkeeping: guidance per frame and which sampler step tau means.

KeyDiff3D states its feature timestep tau on the 0..1000 DDPM scale of SD/SVD
training, while SV3D-p samples with EDM sigmas. `select_capture_step` turns tau into
one step of the sampler, either by matching the noise level ('ddpm') or by the
fraction of the trajectory ('trajectory').
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from stages.config import TAU_MAPPINGS
from stages.errors import ConfigError

CAPTURE_MAPPINGS = (*TAU_MAPPINGS, "index")


def ddpm_sigma(
    tau: float,
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
) -> float:
    """Noise level sigma = sqrt((1 - alphabar) / alphabar) of the scaled-linear schedule.

    tau = num_train_timesteps is the pure-noise end. The DDPM index is tau clamped to
    [0, num_train_timesteps - 1] (so tau=0 -> index 0 and tau=1000 -> index 999),
    linearly interpolated between integers as diffusers' Euler scheduler does.
    """
    if not 0 <= tau <= num_train_timesteps:
        raise ConfigError(f"tau must be in [0, {num_train_timesteps}], got {tau}")
    betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    alphabar = np.cumprod(1.0 - betas)
    sigmas = np.sqrt((1.0 - alphabar) / alphabar)
    index = min(max(float(tau), 0.0), num_train_timesteps - 1.0)
    return float(np.interp(index, np.arange(num_train_timesteps), sigmas))


def triangle_guidance_scales(num_frames: int, min_scale: float, max_scale: float) -> np.ndarray:
    """Classifier-free guidance per frame, sgm's `TrianglePredictionGuider`.

    Smallest at both ends of the orbit (near the input view), largest in the middle.

    Returns:
        (V,) float64.
    """
    if num_frames < 1:
        raise ConfigError(f"num_frames must be >= 1, got {num_frames}")
    values = np.linspace(0.0, 1.0, num_frames)
    tri = 2.0 * np.abs(values - np.floor(values + 0.5))
    return min_scale + tri * (max_scale - min_scale)


@dataclass(frozen=True)
class CaptureStep:
    """The sampler step whose UNet call the decoder features are taken from."""

    step_index: int
    """Index into the S denoising steps (0 = pure noise)."""
    sigma: float
    """EDM noise level of that step."""
    timestep_c_noise: float
    """What the UNet receives as its timestep: 0.25 * log(sigma)."""
    tau: float | None
    """Requested DDPM timestep; None when the step was given directly."""
    target_sigma: float | None
    """Noise level tau asked for ('ddpm': ddpm_sigma(tau)); None otherwise."""
    mapping: str
    """'ddpm', 'trajectory', or 'index' (step given directly)."""

    def __post_init__(self) -> None:
        if self.mapping not in CAPTURE_MAPPINGS:
            raise ConfigError(f"mapping must be one of {CAPTURE_MAPPINGS}, got {self.mapping!r}")
        if self.step_index < 0:
            raise ConfigError(f"step_index must be >= 0, got {self.step_index}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptureStep:
        return cls(**data)


def select_capture_step(sigmas: np.ndarray, tau: float, mapping: str) -> CaptureStep:
    """Choose the sampler step for a DDPM timestep tau.

    'ddpm': the step whose sigma is nearest to `ddpm_sigma(tau)` in log space.
    'trajectory': step floor((1 - tau / 1000) * (S - 1) + 0.5), i.e. tau=1000 is step 0
    (pure noise) and tau=0 the last step, rounding halves towards later steps.

    Args:
        sigmas: (S + 1,) the sampler's sigmas, decreasing, ending with the final 0.
        tau: DDPM timestep in [0, 1000].
        mapping: 'ddpm' or 'trajectory'.
    """
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ConfigError(f"sigmas must be (S + 1,) with S >= 1, got shape {sigmas.shape}")
    steps = sigmas[:-1]
    if np.any(steps <= 0):
        raise ConfigError("sigmas of the denoising steps (all but the last) must be > 0")
    if mapping not in TAU_MAPPINGS:
        raise ConfigError(f"mapping must be one of {TAU_MAPPINGS}, got {mapping!r}")
    if not 0 <= tau <= 1000:
        raise ConfigError(f"tau must be in [0, 1000], got {tau}")

    target: float | None = None
    if mapping == "ddpm":
        target = ddpm_sigma(tau)
        index = int(np.argmin(np.abs(np.log(steps) - math.log(target))))
    else:
        index = int(math.floor((1.0 - tau / 1000.0) * (len(steps) - 1) + 0.5))
    sigma = float(steps[index])
    return CaptureStep(
        step_index=index,
        sigma=sigma,
        timestep_c_noise=0.25 * math.log(sigma),
        tau=tau,
        target_sigma=target,
        mapping=mapping,
    )
