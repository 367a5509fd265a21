"""SV3D-p as a stage-one backend: prepared input image -> kept views and decoder features."""

from __future__ import annotations

import numpy as np
import torch

from cache_schema import FeatureLayerSpec
from stages.config import GenerationConfig
from stages.errors import ConfigError
from stages.images import PreparedImage
from stages.stage_one import GeneratedViews
from stages.sv3d.pipeline import SV3DPipeline
from stages.sv3d.schedule import CaptureStep, select_capture_step


class SV3DBackend:
    """Runs the SV3D pipeline on the configured orbit and keeps K views and features."""

    name = "sv3d"

    def __init__(self, pipe: SV3DPipeline, config: GenerationConfig, device: torch.device):
        self.pipe = pipe
        self.config = config
        self.device = torch.device(device)
        self.size = config.resolution or pipe.native_resolution
        shapes = pipe.feature_layer_shapes(self.size)
        names = config.feature_layers if config.feature_layers is not None else pipe.feature_layer_names
        unknown = [n for n in names if n not in shapes]
        if unknown:
            raise ConfigError(f"feature_layers {unknown} are not up-blocks of this UNet: {list(shapes)}")
        self.layers = tuple(FeatureLayerSpec(n, *shapes[n]) for n in names)
        self.capture: CaptureStep | None = (
            select_capture_step(
                pipe.sampler_sigmas(config.num_inference_steps), config.tau, config.tau_mapping
            )
            if self.layers
            else None
        )
        orbit = config.orbit
        self.kept_frames = list(orbit.kept_frame_indices())
        self.polars_rad = np.deg2rad(90.0 - orbit.frame_elevations_deg())
        # SV3D-p takes azimuths relative to the input view, which our orbit puts at 0.
        self.azimuths_rad = np.deg2rad(np.mod(orbit.frame_azimuths_deg(), 360.0))

    def image_size(self) -> int:
        return self.size

    def feature_layers(self) -> tuple[FeatureLayerSpec, ...]:
        return self.layers

    def generate(self, prepared: PreparedImage, seed: int) -> GeneratedViews:
        """prepared.image (3, S, S) uint8 -> views (K, 3, S, S) uint8 and features."""
        image = torch.from_numpy(prepared.image).float().div(127.5).sub(1.0)[None]
        generator = torch.Generator(device="cpu").manual_seed(seed)
        out = self.pipe(
            image.to(self.device),
            self.polars_rad,
            self.azimuths_rad,
            generator,
            num_inference_steps=self.config.num_inference_steps,
            min_guidance_scale=self.config.min_guidance_scale,
            max_guidance_scale=self.config.max_guidance_scale,
            cond_aug=self.config.cond_aug,
            capture_step=self.capture,
            capture_frames=self.kept_frames,
            feature_layers=[layer.name for layer in self.layers],
            decode_chunk_size=self.config.decode_chunk_size,
        )
        frames = out.frames[self.kept_frames].clamp(0, 1).mul(255).round().to(torch.uint8)
        features = {name: value.float().numpy() for name, value in out.features.items()}
        return GeneratedViews(frames.numpy(), features)

    def features_of_views(self, views: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        """Features of given kept views (K, 3, S, S) uint8 at the capture step's sigma.

        For sources that already have their views (the synthetic renderer): the same
        layers, shapes, sigma, conditioning and cameras as `generate`, from one UNet call
        (`SV3DPipeline.features_of_views`). Returns layer name -> (K, C, h, w) float32;
        empty when no layer is configured.
        """
        expected = (len(self.kept_frames), 3, self.size, self.size)
        if views.shape != expected or views.dtype != np.uint8:
            raise ConfigError(f"views must be {expected} uint8, got {views.shape} {views.dtype}")
        if self.capture is None:
            return {}
        pixels = torch.from_numpy(views).float().div(127.5).sub(1.0)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        features = self.pipe.features_of_views(
            pixels.to(self.device),
            self.polars_rad[self.kept_frames],
            self.azimuths_rad[self.kept_frames],
            self.capture.sigma,
            generator,
            cond_aug=self.config.cond_aug,
            feature_layers=[layer.name for layer in self.layers],
        )
        return {name: value.numpy() for name, value in features.items()}

    def capture_record(self) -> dict | None:
        return None if self.capture is None else self.capture.to_dict()
