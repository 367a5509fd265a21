"""SV3D-p (Stable Video 3D, pose-conditioned) in diffusers form, with feature capture."""

from stages.sv3d.loading import load_sv3d_pipeline, model_identity, resolve_dtype
from stages.sv3d.pipeline import SV3DOutput, SV3DPipeline
from stages.sv3d.schedule import (
    CaptureStep,
    ddpm_sigma,
    select_capture_step,
    triangle_guidance_scales,
)
from stages.sv3d.tiny import build_tiny_sv3d, save_tiny_sv3d
from stages.sv3d.unet import SV3DUNetModel, camera_vector

__all__ = [
    "CaptureStep",
    "SV3DOutput",
    "SV3DPipeline",
    "SV3DUNetModel",
    "build_tiny_sv3d",
    "camera_vector",
    "ddpm_sigma",
    "load_sv3d_pipeline",
    "model_identity",
    "resolve_dtype",
    "save_tiny_sv3d",
    "select_capture_step",
    "triangle_guidance_scales",
]
