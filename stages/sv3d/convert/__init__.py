"""Convert Stability AI's single-file `sv3d_p.safetensors` (sgm layout) to our diffusers layout.

Modules, one purpose each:

- `sgm_layout`: the source key prefixes and the keys deliberately dropped.
- `configs`: full-size SV3D-p configs and `SV3DConfigs`; `infer_configs`: configs from shapes.
- `key_mapping`, `unet_keys`, `vae_keys`, `clip_keys`: the sgm -> diffusers key plan.
- `state_dicts`: the plan applied to state dicts, both ways.
- `safetensors_file`, `target_modules`: the lazy source file; the meta-built targets.
- `checkpoint`: `convert_sv3d_checkpoint`, the file -> directory driver.
"""

from stages.sv3d.convert.checkpoint import CONVERTER_VERSION, convert_sv3d_checkpoint
from stages.sv3d.convert.configs import (
    SCHEDULER_CONFIG,
    SV3DConfigs,
    configs_of,
    feature_extractor_config,
    sv3d_p_image_encoder_config,
    sv3d_p_unet_config,
    sv3d_p_vae_config,
)
from stages.sv3d.convert.infer_configs import infer_configs
from stages.sv3d.convert.key_mapping import KeyMapping
from stages.sv3d.convert.safetensors_file import SafetensorsFile
from stages.sv3d.convert.sgm_layout import (
    CLIP_PREFIX,
    COMPONENTS,
    DECODER_PREFIX,
    IGNORED_KEY_PATTERNS,
    IMAGE_DECODER_MIX_FACTOR,
    QUANT_CONV_PREFIX,
    UNET_PREFIX,
    VAE_ENCODER_PREFIX,
    ignored_keys,
)
from stages.sv3d.convert.state_dicts import (
    check_keys,
    conversion_plan,
    convert_component,
    diffusers_to_sgm,
    sgm_to_diffusers,
)
from stages.sv3d.convert.target_modules import build_empty, check_shapes

__all__ = [
    "CLIP_PREFIX",
    "COMPONENTS",
    "CONVERTER_VERSION",
    "DECODER_PREFIX",
    "IGNORED_KEY_PATTERNS",
    "IMAGE_DECODER_MIX_FACTOR",
    "KeyMapping",
    "QUANT_CONV_PREFIX",
    "SCHEDULER_CONFIG",
    "SV3DConfigs",
    "SafetensorsFile",
    "UNET_PREFIX",
    "VAE_ENCODER_PREFIX",
    "build_empty",
    "check_keys",
    "check_shapes",
    "configs_of",
    "conversion_plan",
    "convert_component",
    "convert_sv3d_checkpoint",
    "diffusers_to_sgm",
    "feature_extractor_config",
    "ignored_keys",
    "infer_configs",
    "sgm_to_diffusers",
    "sv3d_p_image_encoder_config",
    "sv3d_p_unet_config",
    "sv3d_p_vae_config",
]
