"""Frozen configs of stage one: the camera orbit and the generation settings.

Every field that changes the bytes of a cache lives here and nowhere else, so that
`GenerationConfig.to_dict()` is exactly what the store's fingerprint covers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stages.errors import ConfigError

TAU_MAPPINGS = ("ddpm", "trajectory")
FEATURE_DTYPES = ("float16", "float32")
MODEL_DTYPES = ("auto", "float16", "bfloat16", "float32")
MIN_RESOLUTION, MAX_RESOLUTION = 8, 4096
"""Image sizes stage one accepts: SV3D-p runs at 576; 4096 px views of 21 frames already
need tens of GiB, and larger sizes only fail later with an allocation error."""


@dataclass(frozen=True)
class OrbitConfig:
    """The camera orbit SV3D-p generates, and which of its frames are kept.

    World frame (documented in README "Cameras"): right-handed, +z up, the object at
    the origin. A camera at elevation e and azimuth a sits at
    radius * (cos e cos a, cos e sin a, sin e) and looks at the origin; the input view
    is azimuth 0 (camera on +x).
    """

    num_frames: int = 21
    """Frames in the generated orbit (SV3D-p was trained on 21)."""
    elevation_deg: float = 10.0
    """Constant camera elevation above the xy-plane, degrees."""
    azimuths_deg: tuple[float, ...] | None = None
    """Per-frame azimuths; None is SV3D's own order: 360/F, 2*360/F, ..., 360 = 0, so the
    input view (azimuth 0) is the LAST frame, as in the official sampling script."""
    kept_azimuths_deg: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0)
    """Views kept in the cache, each mapped to the frame of nearest azimuth. The first
    must be 0: view 0 of the cache is always the input view."""
    fov_deg: float = 33.8
    """Vertical (= horizontal, square images) field of view, degrees."""
    radius: float = 2.0
    """Camera distance from the origin, in world units."""

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ConfigError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.azimuths_deg is not None and len(self.azimuths_deg) != self.num_frames:
            raise ConfigError(
                f"azimuths_deg has {len(self.azimuths_deg)} values, expected num_frames={self.num_frames}"
            )
        if not self.kept_azimuths_deg or abs(_wrap(self.kept_azimuths_deg[0])) > 1e-9:
            raise ConfigError(
                f"kept_azimuths_deg must start with 0 (the input view), got {self.kept_azimuths_deg}"
            )
        # `not low <= x` rather than `x < low`: NaN fails every comparison, so it is refused too.
        if not 0.0 < self.fov_deg < 180.0:
            raise ConfigError(f"fov_deg must be in (0, 180), got {self.fov_deg}")
        if not 0.0 < self.radius < math.inf:
            raise ConfigError(f"radius must be finite and > 0, got {self.radius}")
        if not -90.0 <= self.elevation_deg <= 90.0:
            raise ConfigError(f"elevation_deg must be in [-90, 90], got {self.elevation_deg}")
        for name in ("azimuths_deg", "kept_azimuths_deg"):
            values = getattr(self, name) or ()
            if not all(math.isfinite(v) for v in values):
                raise ConfigError(f"{name} must be finite, got {values}")
        indices = self.kept_frame_indices()
        if len(set(indices)) != len(indices):
            raise ConfigError(
                f"kept_azimuths_deg {self.kept_azimuths_deg} map to repeated frames "
                f"{indices} of a {self.num_frames}-frame orbit"
            )

    def frame_azimuths_deg(self) -> np.ndarray:
        """Azimuth of every generated frame, degrees in [0, 360). Shape (F,)."""
        if self.azimuths_deg is not None:
            return np.array([_wrap(a) for a in self.azimuths_deg], dtype=np.float64)
        steps = np.arange(1, self.num_frames + 1, dtype=np.float64)
        return np.mod(steps * 360.0 / self.num_frames, 360.0)

    def frame_elevations_deg(self) -> np.ndarray:
        """Elevation of every generated frame, degrees. Shape (F,)."""
        return np.full(self.num_frames, float(self.elevation_deg))

    def kept_frame_indices(self) -> tuple[int, ...]:
        """Frame index of each kept view (nearest azimuth on the circle). Length K."""
        frames = self.frame_azimuths_deg()
        out = []
        for target in self.kept_azimuths_deg:
            gap = np.abs((frames - _wrap(target) + 180.0) % 360.0 - 180.0)
            out.append(int(np.argmin(gap)))
        return tuple(out)

    @property
    def num_kept_views(self) -> int:
        return len(self.kept_azimuths_deg)


@dataclass(frozen=True)
class GenerationConfig:
    """Everything that decides the bytes stage one writes for one image."""

    orbit: OrbitConfig = field(default_factory=OrbitConfig)
    """Camera orbit and kept views."""
    resolution: int | None = None
    """Square size of input and views in pixels; None takes the model's native size."""
    num_inference_steps: int = 50
    """Euler steps of the EDM sampler (official SV3D-p default: 50)."""
    min_guidance_scale: float = 1.0
    """Classifier-free guidance at the ends of the orbit (triangle schedule)."""
    max_guidance_scale: float = 2.5
    """Classifier-free guidance at the middle of the orbit (official: 2.5)."""
    cond_aug: float = 1e-5
    """Noise augmentation of the conditioning frame (official SV3D value)."""
    tau: int = 500
    """Feature timestep on the 0..1000 DDPM scale (KeyDiff3D: 500)."""
    tau_mapping: str = "ddpm"
    """How tau becomes a sampler step: 'ddpm' matches the noise level sigma(tau) of the
    SD/SVD training schedule; 'trajectory' takes the step at fraction 1 - tau/1000 of
    the sampler's steps (tau = 1000 is the first, pure-noise step). The step actually
    used is recorded in the store."""
    feature_layers: tuple[str, ...] | None = None
    """Decoder blocks to store (e.g. 'up_blocks.1'); None stores every up-block."""
    feature_dtype: str = "float16"
    """On-disk dtype of the features."""
    model_dtype: str = "auto"
    """Compute dtype: auto is float16 on CUDA and float32 on CPU."""
    object_fraction: float = 0.85
    """Fraction of the square side the object's longer bounding-box side fills."""
    background_threshold: int = 20
    """A pixel is foreground when it differs from the background by more than this
    (0..255, max over channels); used for RGB inputs and for generated views."""
    replace_input_frame: bool = True
    """Store the preprocessed input image as view 0 instead of the generated frame at
    azimuth 0, as the official sampling script does."""
    decode_chunk_size: int = 14
    """Frames decoded at once by the temporal VAE decoder (official default 14)."""
    seed: int = 0
    """Base seed; each sample's noise is seeded from (seed, sample id)."""
    max_image_pixels: int = 100_000_000
    """Images with more pixels are recorded as failed instead of being decoded."""

    def __post_init__(self) -> None:
        if self.tau_mapping not in TAU_MAPPINGS:
            raise ConfigError(f"tau_mapping must be one of {TAU_MAPPINGS}, got {self.tau_mapping!r}")
        if not 0 <= self.tau <= 1000:
            raise ConfigError(f"tau must be in [0, 1000], got {self.tau}")
        if self.feature_dtype not in FEATURE_DTYPES:
            raise ConfigError(f"feature_dtype must be one of {FEATURE_DTYPES}, got {self.feature_dtype!r}")
        if self.model_dtype not in MODEL_DTYPES:
            raise ConfigError(f"model_dtype must be one of {MODEL_DTYPES}, got {self.model_dtype!r}")
        if self.num_inference_steps < 1:
            raise ConfigError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if not 0.1 <= self.object_fraction <= 1.0:
            raise ConfigError(f"object_fraction must be in [0.1, 1], got {self.object_fraction}")
        if not 0 <= self.background_threshold < 255:
            raise ConfigError(f"background_threshold must be in [0, 255), got {self.background_threshold}")
        if self.decode_chunk_size < 1:
            raise ConfigError(f"decode_chunk_size must be >= 1, got {self.decode_chunk_size}")
        if self.resolution is not None and not MIN_RESOLUTION <= self.resolution <= MAX_RESOLUTION:
            raise ConfigError(
                f"resolution must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {self.resolution}"
            )
        for name in ("min_guidance_scale", "max_guidance_scale", "cond_aug"):
            value = getattr(self, name)
            if not 0.0 <= value < math.inf:
                raise ConfigError(f"{name} must be finite and >= 0, got {value}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.max_image_pixels < 1:
            raise ConfigError(f"max_image_pixels must be >= 1, got {self.max_image_pixels}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationConfig:
        data = dict(data)
        orbit = dict(data.pop("orbit", {}))
        for key in ("azimuths_deg", "kept_azimuths_deg"):
            if orbit.get(key) is not None:
                orbit[key] = tuple(orbit[key])
        if data.get("feature_layers") is not None:
            data["feature_layers"] = tuple(data["feature_layers"])
        return cls(orbit=OrbitConfig(**orbit), **data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _wrap(angle_deg: float) -> float:
    """Angle in degrees wrapped to [0, 360)."""
    return float(np.mod(angle_deg, 360.0))
