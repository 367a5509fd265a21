"""Target configs: the full-size SV3D-p component kwargs, the scheduler and feature
extractor configs, and `SV3DConfigs`, the configs of one checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]


CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "interpolation_type": "linear",
    "use_karras_sigmas": True,
    "sigma_min": 0.002,
    "sigma_max": 700.0,
    "timestep_type": "continuous",
    "timestep_spacing": "leading",
    "steps_offset": 1,
}
"""SVD's `EulerDiscreteScheduler` config: sgm's EDM Euler sampler (sigma_max 700 as in
the SV3D-p sampling config)."""


def sv3d_p_unet_config() -> dict[str, Any]:
    """`SV3DUNetModel` kwargs of the official SV3D-p (sgm `VideoUNet`, 576 px, 21 frames)."""
    return {
        "sample_size": 72,
        "in_channels": 8,
        "out_channels": 4,
        "down_block_types": [
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ],
        "up_block_types": [
            "UpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
        ],
        "block_out_channels": [320, 640, 1280, 1280],
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 1280,
        "layers_per_block": 2,
        "cross_attention_dim": 1024,
        "transformer_layers_per_block": 1,
        "num_attention_heads": [5, 10, 20, 20],
        "num_frames": 21,
        "camera_embed_dims": [256, 512, 512],
        "resnet_eps": 1e-5,
    }


def sv3d_p_vae_config() -> dict[str, Any]:
    """`AutoencoderKLTemporalDecoder` kwargs of SV3D-p's VAE (ch 128, ch_mult 1,2,4,4)."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": 4,
        "sample_size": 768,
        "scaling_factor": 0.18215,
        "force_upcast": True,
    }


def sv3d_p_image_encoder_config() -> dict[str, Any]:
    """`CLIPVisionConfig` kwargs of OpenCLIP ViT-H/14 with its 1024-d projection."""
    return {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "num_channels": 3,
        "image_size": 224,
        "patch_size": 14,
        "projection_dim": 1024,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
    }


def feature_extractor_config(size: int = 224) -> dict[str, Any]:
    """`CLIPImageProcessor` kwargs of SVD's feature extractor."""
    return {
        "size": {"shortest_edge": size},
        "crop_size": {"height": size, "width": size},
        "do_resize": True,
        "do_center_crop": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "resample": 3,
    }


@dataclass(frozen=True)
class SV3DConfigs:
    """The target configs of one sgm checkpoint, as derived by `infer_configs`."""

    unet: dict[str, Any]
    """`SV3DUNetModel` kwargs."""
    vae: dict[str, Any]
    """`AutoencoderKLTemporalDecoder` kwargs."""
    image_encoder: dict[str, Any] | None
    """`CLIPVisionConfig` kwargs; None when the checkpoint holds no OpenCLIP image tower."""
    temporal_decoder: bool
    """True when first_stage_model.decoder is sgm's `VideoDecoder`, False for the image
    `Decoder` (whose temporal layers are synthesised, switched off)."""


def configs_of(components: Mapping[str, Any], temporal_decoder: bool = True) -> SV3DConfigs:
    """`SV3DConfigs` of built diffusers/transformers modules (their `.config`)."""
    clip = components.get("image_encoder")
    return SV3DConfigs(
        unet=dict(components["unet"].config),
        vae=dict(components["vae"].config),
        image_encoder=None if clip is None else clip.config.to_dict(),
        temporal_decoder=temporal_decoder,
    )
