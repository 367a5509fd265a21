"""Convert Stability AI's single-file `sv3d_p.safetensors` (sgm layout) to our diffusers layout.

Source layout (sgm `DiffusionEngine.state_dict()` for configs/inference/sv3d_p.yaml):

- `model.diffusion_model.*`: the `VideoUNet` -> `unet/` (`SV3DUNetModel`).
- `first_stage_model.decoder.*`: the frame decoder. The official SV3D-p config builds sgm's
  image `Decoder` here (no temporal layers); SVD's configs build the temporal
  `VideoDecoder`. Both convert to `vae/` (`AutoencoderKLTemporalDecoder`): an image
  decoder gets temporal layers that are switched off (see `IMAGE_DECODER_MIX_FACTOR`),
  so every frame is decoded on its own, exactly as sgm does.
- `conditioner.embedders.1.encoder.{encoder,quant_conv}.*`: the VAE encoder of the
  conditioning frame (an `AutoencoderKLModeOnly`) -> `vae/encoder`, `vae/quant_conv`.
- `conditioner.embedders.0.open_clip.model.visual.*`: OpenCLIP ViT-H/14 image tower ->
  `image_encoder/` (`CLIPVisionModelWithProjection`). Optional: without it an HF image
  encoder directory must be given.

Every other key must match one of `IGNORED_KEY_PATTERNS`, or the conversion fails.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from stages.errors import CheckpointConversionError

CONVERTER_VERSION = "1.0"

UNET_PREFIX = "model.diffusion_model."
DECODER_PREFIX = "first_stage_model.decoder."
VAE_ENCODER_PREFIX = "conditioner.embedders.1.encoder.encoder."
QUANT_CONV_PREFIX = "conditioner.embedders.1.encoder.quant_conv."
CLIP_PREFIX = "conditioner.embedders.0.open_clip.model.visual."

COMPONENTS = ("unet", "vae", "image_encoder")

IGNORED_KEY_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        r"conditioner\.embedders\.0\.open_clip\.model\.(?!visual\.)",
        "OpenCLIP text-tower leftovers (token/positional embedding, ln_final, "
        "text_projection, logit_scale); SV3D-p only uses the image tower",
    ),
    (
        r"conditioner\.embedders\.1\.encoder\.(decoder|post_quant_conv)\.",
        "decoder half of the conditioning autoencoder; sgm decodes frames with "
        "first_stage_model.decoder",
    ),
    (r"model_ema\.", "EMA shadow copy of the UNet"),
)
"""(regex matched at the start of a key, reason) for source keys deliberately dropped."""

IMAGE_DECODER_MIX_FACTOR = -1.0e4
"""mix_factor given to the temporal decoder's blenders when the source decoder is sgm's
image `Decoder`: sigmoid(-1e4) is exactly 0 in float16/32, so each block outputs its
spatial branch only. The temporal res-blocks also get zero convs (identity), and
`time_conv_out` the identity kernel. On CUDA with TF32 convolutions the identity
`time_conv_out` rounds pixels to ~1e-3; in float16 and on the CPU it is exact."""

_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

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


# --------------------------------------------------------------------------- configs


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
        "image_mean": _CLIP_MEAN,
        "image_std": _CLIP_STD,
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


def infer_configs(
    state_dict: Mapping[str, Tensor],
    unet_head_dim: int = 64,
    clip_head_dim: int = 80,
) -> SV3DConfigs:
    """Component configs derived from the tensor shapes of an sgm SV3D checkpoint.

    Shapes give every width and layer count. What shapes cannot give comes from
    SV3D-p: attention heads (channels / `unet_head_dim`, width / `clip_head_dim`,
    at least 1), the camera sinusoid sizes (1:2:2 of adm_in_channels), 21 frames,
    576 px. Works on meta tensors.
    """
    shapes = _shape_table(state_dict)
    return _infer_configs(shapes, unet_head_dim, clip_head_dim)


def _infer_configs(
    shapes: Mapping[str, tuple[int, ...]], unet_head_dim: int, clip_head_dim: int
) -> SV3DConfigs:
    has_clip = any(k.startswith(CLIP_PREFIX) for k in shapes)
    temporal = any(
        k.startswith(DECODER_PREFIX)
        and (".time_stack." in k or ".time_mix_conv." in k or k.endswith("mix_factor"))
        for k in shapes
    )
    return SV3DConfigs(
        unet=_infer_unet(shapes, unet_head_dim),
        vae=_infer_vae(shapes),
        image_encoder=_infer_clip(shapes, clip_head_dim) if has_clip else None,
        temporal_decoder=temporal,
    )


def _shape_table(state_dict: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    shapes = getattr(state_dict, "shapes", None)
    if isinstance(shapes, Mapping):
        return dict(shapes)
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def _need(shapes: Mapping[str, tuple[int, ...]], key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise CheckpointConversionError(
            f"cannot infer the {what} config: key {key!r} is missing from the checkpoint"
        )
    return shapes[key]


def _indices(shapes: Mapping[str, Any], prefix: str) -> list[int]:
    """Sorted distinct integers that follow `prefix` in the keys."""
    found = set()
    for key in shapes:
        if key.startswith(prefix):
            head = key[len(prefix) :].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def _infer_unet(shapes: Mapping[str, tuple[int, ...]], head_dim: int) -> dict[str, Any]:
    p = UNET_PREFIX
    conv_in = _need(shapes, p + "input_blocks.0.0.weight", "unet")
    blocks = _indices(shapes, p + "input_blocks.")
    downs = [i for i in blocks if p + f"input_blocks.{i}.0.op.weight" in shapes]
    levels = len(downs) + 1
    if not blocks or len(blocks) % levels:
        raise CheckpointConversionError(
            f"cannot infer the unet config: {len(blocks)} input_blocks do not split into "
            f"{levels} levels"
        )
    per_level = len(blocks) // levels  # resnets + the downsampler (or conv_in on level 0)
    nrb = per_level - 1
    expected_downs = [(lv + 1) * per_level for lv in range(levels - 1)]
    if nrb < 1 or downs != expected_downs:
        raise CheckpointConversionError(
            f"cannot infer the unet config: downsamplers at input_blocks {downs}, expected "
            f"{expected_downs}"
        )
    channels, down_attn, depth, cross_dim = [], [], None, 0
    for lv in range(levels):
        first = p + f"input_blocks.{1 + lv * per_level}"
        channels.append(_need(shapes, first + ".0.out_layers.3.weight", "unet")[0])
        has_attn = first + ".1.proj_in.weight" in shapes
        down_attn.append(has_attn)
        if has_attn and depth is None:
            depth = len(_indices(shapes, first + ".1.transformer_blocks."))
            to_k = first + ".1.transformer_blocks.0.attn2.to_k.weight"
            cross_dim = _need(shapes, to_k, "unet")[1]
    if depth is None:
        raise CheckpointConversionError("cannot infer the unet config: no attention block found")
    up_attn = [
        p + f"output_blocks.{u * per_level}.1.proj_in.weight" in shapes for u in range(levels)
    ]
    adm = _need(shapes, p + "label_emb.0.0.weight", "unet")[1]
    if adm % 10:
        raise CheckpointConversionError(
            f"cannot split adm_in_channels={adm} into SV3D-p's camera embeddings 1:2:2 "
            f"(cond_aug, polar, azimuth); it must be a multiple of 10"
        )
    return {
        "sample_size": 72,
        "in_channels": conv_in[1],
        "out_channels": _need(shapes, p + "out.2.weight", "unet")[0],
        "down_block_types": [
            "CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal"
            for a in down_attn
        ],
        "up_block_types": [
            "CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal" for a in up_attn
        ],
        "block_out_channels": channels,
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": adm,
        "layers_per_block": nrb,
        "cross_attention_dim": cross_dim,
        "transformer_layers_per_block": depth,
        "num_attention_heads": [_heads(c, head_dim, "unet") for c in channels],
        "num_frames": 21,
        "camera_embed_dims": [adm // 5, 2 * adm // 5, 2 * adm // 5],
    }


def _heads(width: int, head_dim: int, what: str) -> int:
    heads = max(1, width // head_dim)
    if width % heads:
        raise CheckpointConversionError(
            f"{what}: width {width} does not split into {heads} heads of {head_dim}"
        )
    return heads


def _infer_vae(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    e, d = VAE_ENCODER_PREFIX, DECODER_PREFIX
    conv_in = _need(shapes, e + "conv_in.weight", "vae encoder")
    levels = _indices(shapes, e + "down.")
    if not levels:
        raise CheckpointConversionError(
            f"cannot infer the vae config: no {e}down.* keys in the checkpoint"
        )
    nrb = len(_indices(shapes, e + "down.0.block."))
    channels = [
        _need(shapes, e + f"down.{lv}.block.0.conv1.weight", "vae encoder")[0] for lv in levels
    ]
    latent2 = _need(shapes, e + "conv_out.weight", "vae encoder")[0]
    quant = _need(shapes, QUANT_CONV_PREFIX + "weight", "vae encoder")
    if quant[:2] != (latent2, latent2):
        raise CheckpointConversionError(
            f"quant_conv must map {latent2} to {latent2} channels (embed_dim == z_channels), "
            f"got shape {quant}"
        )
    dec_levels = _indices(shapes, d + "up.")
    dec_channels = [
        _need(shapes, d + f"up.{lv}.block.0.conv2.weight", "vae decoder")[0] for lv in dec_levels
    ]
    dec_blocks = len(_indices(shapes, d + "up.0.block."))
    if dec_channels != channels or dec_blocks != nrb + 1:
        raise CheckpointConversionError(
            f"AutoencoderKLTemporalDecoder needs the decoder to mirror the encoder: encoder "
            f"channels {channels} with {nrb} blocks per level, decoder channels {dec_channels} "
            f"with {dec_blocks} (expected {nrb + 1})"
        )
    if nrb != 2:
        raise CheckpointConversionError(
            f"the diffusers temporal decoder has layers_per_block mid-block resnets while sgm "
            f"always has 2; got num_res_blocks={nrb}"
        )
    return {
        "in_channels": conv_in[1],
        "out_channels": _need(shapes, d + "conv_out.weight", "vae decoder")[0],
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "block_out_channels": channels,
        "layers_per_block": nrb,
        "latent_channels": latent2 // 2,
        "sample_size": 768,
        "scaling_factor": 0.18215,
        "force_upcast": True,
    }


def _infer_clip(shapes: Mapping[str, tuple[int, ...]], head_dim: int) -> dict[str, Any]:
    c = CLIP_PREFIX
    conv1 = _need(shapes, c + "conv1.weight", "image encoder")
    positions = _need(shapes, c + "positional_embedding", "image encoder")[0]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise CheckpointConversionError(
            f"{c}positional_embedding has {positions} rows, not 1 + a square number of patches"
        )
    width = conv1[0]
    return {
        "hidden_size": width,
        "intermediate_size": _need(
            shapes, c + "transformer.resblocks.0.mlp.c_fc.weight", "image encoder"
        )[0],
        "num_hidden_layers": len(_indices(shapes, c + "transformer.resblocks.")),
        "num_attention_heads": _heads(width, head_dim, "image encoder"),
        "num_channels": conv1[1],
        "image_size": grid * conv1[2],
        "patch_size": conv1[2],
        "projection_dim": _need(shapes, c + "proj", "image encoder")[1],
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
    }


# --------------------------------------------------------------------------- key plan


@dataclass(frozen=True)
class KeyMapping:
    """One step of the conversion: an sgm key to one or more diffusers keys."""

    component: str
    """'unet', 'vae' or 'image_encoder'."""
    source: str | None
    """Full sgm key; None for a tensor the sgm layout lacks (synthesised)."""
    targets: tuple[str, ...]
    """Keys in the component's state dict."""
    kind: str = "copy"
    """copy | conv_to_linear (1x1 conv -> Linear) | transpose | split_qkv | a synth_* kind."""
    shape: tuple[int, ...] = ()
    """Shape of a synthesised tensor."""


@dataclass
class _Plan:
    entries: list[KeyMapping] = field(default_factory=list)

    def add(self, component: str, src: str | None, dst: str, kind: str = "copy", shape=()) -> None:
        self.entries.append(KeyMapping(component, src, (dst,), kind, tuple(shape)))

    def wb(self, component: str, src: str, dst: str, kind: str = "copy") -> None:
        self.add(component, src + ".weight", dst + ".weight", kind)
        self.add(component, src + ".bias", dst + ".bias")


def conversion_plan(configs: SV3DConfigs) -> list[KeyMapping]:
    """Every sgm -> diffusers key mapping implied by `configs`."""
    plan = _Plan()
    _plan_unet(plan, configs.unet)
    _plan_vae(plan, configs.vae, configs.temporal_decoder)
    if configs.image_encoder is not None:
        _plan_clip(plan, configs.image_encoder)
    return plan.entries


def _per_block(value: int | Iterable[int], n: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * n
    values = [int(v) for v in value]
    if len(values) != n:
        raise CheckpointConversionError(f"unet {name} must have {n} entries, got {values}")
    return values


def _plan_unet(plan: _Plan, cfg: Mapping[str, Any]) -> None:
    p, u = UNET_PREFIX, "unet"
    channels = list(cfg["block_out_channels"])
    levels = len(channels)
    nrb = cfg["layers_per_block"]
    if not isinstance(nrb, int):
        raise CheckpointConversionError(f"unet layers_per_block must be one int, got {nrb}")
    depths = _per_block(cfg["transformer_layers_per_block"], levels, "transformer_layers_per_block")
    down_attn = [t.startswith("CrossAttn") for t in cfg["down_block_types"]]
    up_attn = [t.startswith("CrossAttn") for t in cfg["up_block_types"]]

    plan.wb(u, p + "time_embed.0", "time_embedding.linear_1")
    plan.wb(u, p + "time_embed.2", "time_embedding.linear_2")
    plan.wb(u, p + "label_emb.0.0", "add_embedding.linear_1")
    plan.wb(u, p + "label_emb.0.2", "add_embedding.linear_2")
    plan.wb(u, p + "input_blocks.0.0", "conv_in")
    plan.wb(u, p + "out.0", "conv_norm_out")
    plan.wb(u, p + "out.2", "conv_out")

    per_level = nrb + 1
    in_ch = channels[0]
    for lv in range(levels):
        for j in range(nrb):
            src = p + f"input_blocks.{1 + lv * per_level + j}"
            _plan_unet_resnet(
                plan, src + ".0", f"down_blocks.{lv}.resnets.{j}", in_ch != channels[lv]
            )
            in_ch = channels[lv]
            if down_attn[lv]:
                _plan_unet_attention(
                    plan, src + ".1", f"down_blocks.{lv}.attentions.{j}", depths[lv]
                )
        if lv < levels - 1:
            src = p + f"input_blocks.{(lv + 1) * per_level}.0.op"
            plan.wb(u, src, f"down_blocks.{lv}.downsamplers.0.conv")

    _plan_unet_resnet(plan, p + "middle_block.0", "mid_block.resnets.0", False)
    _plan_unet_attention(plan, p + "middle_block.1", "mid_block.attentions.0", depths[-1])
    _plan_unet_resnet(plan, p + "middle_block.2", "mid_block.resnets.1", False)

    up_depths = depths[::-1]
    for k in range(levels):
        for j in range(per_level):
            src = p + f"output_blocks.{k * per_level + j}"
            # Every up resnet takes the skip concatenated to its input: always a shortcut.
            _plan_unet_resnet(plan, src + ".0", f"up_blocks.{k}.resnets.{j}", True)
            if up_attn[k]:
                _plan_unet_attention(
                    plan, src + ".1", f"up_blocks.{k}.attentions.{j}", up_depths[k]
                )
        if k < levels - 1:
            src = p + f"output_blocks.{k * per_level + nrb}.{2 if up_attn[k] else 1}.conv"
            plan.wb(u, src, f"up_blocks.{k}.upsamplers.0.conv")


_UNET_RESNET_PARTS = (
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
)


def _plan_unet_resnet(plan: _Plan, src: str, dst: str, shortcut: bool) -> None:
    for s, d in _UNET_RESNET_PARTS:
        plan.wb("unet", f"{src}.{s}", f"{dst}.spatial_res_block.{d}")
    if shortcut:
        plan.wb("unet", f"{src}.skip_connection", f"{dst}.spatial_res_block.conv_shortcut")
    for s, d in _UNET_RESNET_PARTS:
        plan.wb("unet", f"{src}.time_stack.{s}", f"{dst}.temporal_res_block.{d}")
    plan.add("unet", f"{src}.time_mixer.mix_factor", f"{dst}.time_mixer.mix_factor")


_BLOCK_PARAMS = tuple(
    f"{attn}.{name}"
    for attn in ("attn1", "attn2")
    for name in ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias")
) + tuple(
    f"{m}.{wb}"
    for m in ("ff.net.0.proj", "ff.net.2", "norm1", "norm2", "norm3")
    for wb in ("weight", "bias")
)
_TEMPORAL_BLOCK_PARAMS = _BLOCK_PARAMS + tuple(
    f"{m}.{wb}" for m in ("norm_in", "ff_in.net.0.proj", "ff_in.net.2") for wb in ("weight", "bias")
)


def _plan_unet_attention(plan: _Plan, src: str, dst: str, depth: int) -> None:
    for name in ("norm", "proj_in", "proj_out"):
        plan.wb("unet", f"{src}.{name}", f"{dst}.{name}")
    plan.wb("unet", f"{src}.time_pos_embed.0", f"{dst}.time_pos_embed.linear_1")
    plan.wb("unet", f"{src}.time_pos_embed.2", f"{dst}.time_pos_embed.linear_2")
    plan.add("unet", f"{src}.time_mixer.mix_factor", f"{dst}.time_mixer.mix_factor")
    for i in range(depth):
        for name in _BLOCK_PARAMS:
            plan.add(
                "unet",
                f"{src}.transformer_blocks.{i}.{name}",
                f"{dst}.transformer_blocks.{i}.{name}",
            )
        for name in _TEMPORAL_BLOCK_PARAMS:
            plan.add(
                "unet",
                f"{src}.time_stack.{i}.{name}",
                f"{dst}.temporal_transformer_blocks.{i}.{name}",
            )


def _plan_vae(plan: _Plan, cfg: Mapping[str, Any], temporal: bool) -> None:
    e, d, v = VAE_ENCODER_PREFIX, DECODER_PREFIX, "vae"
    channels = list(cfg["block_out_channels"])
    levels, nrb = len(channels), cfg["layers_per_block"]

    plan.wb(v, e + "conv_in", "encoder.conv_in")
    in_ch = channels[0]
    for lv in range(levels):
        for j in range(nrb):
            shortcut = in_ch != channels[lv]
            _plan_vae_resnet(
                plan, e + f"down.{lv}.block.{j}", f"encoder.down_blocks.{lv}.resnets.{j}", shortcut
            )
            in_ch = channels[lv]
        if lv < levels - 1:
            plan.wb(
                v, e + f"down.{lv}.downsample.conv", f"encoder.down_blocks.{lv}.downsamplers.0.conv"
            )
    _plan_vae_resnet(plan, e + "mid.block_1", "encoder.mid_block.resnets.0", False)
    _plan_vae_attention(plan, e + "mid.attn_1", "encoder.mid_block.attentions.0")
    _plan_vae_resnet(plan, e + "mid.block_2", "encoder.mid_block.resnets.1", False)
    plan.wb(v, e + "norm_out", "encoder.conv_norm_out")
    plan.wb(v, e + "conv_out", "encoder.conv_out")
    plan.wb(v, QUANT_CONV_PREFIX[:-1], "quant_conv")

    mode = "video" if temporal else "image"
    top = channels[-1]
    plan.wb(v, d + "conv_in", "decoder.conv_in")
    _plan_vae_resnet(plan, d + "mid.block_1", "decoder.mid_block.resnets.0", False, mode, top)
    _plan_vae_attention(plan, d + "mid.attn_1", "decoder.mid_block.attentions.0")
    _plan_vae_resnet(plan, d + "mid.block_2", "decoder.mid_block.resnets.1", False, mode, top)
    in_ch = top
    for k in range(levels):
        lv = levels - 1 - k  # sgm numbers decoder levels from the output end
        for j in range(nrb + 1):
            shortcut = in_ch != channels[lv]
            _plan_vae_resnet(
                plan,
                d + f"up.{lv}.block.{j}",
                f"decoder.up_blocks.{k}.resnets.{j}",
                shortcut,
                mode,
                channels[lv],
            )
            in_ch = channels[lv]
        if lv > 0:
            plan.wb(v, d + f"up.{lv}.upsample.conv", f"decoder.up_blocks.{k}.upsamplers.0.conv")
    plan.wb(v, d + "norm_out", "decoder.conv_norm_out")
    plan.wb(v, d + "conv_out", "decoder.conv_out")
    out_ch = cfg["out_channels"]
    if temporal:
        plan.wb(v, d + "conv_out.time_mix_conv", "decoder.time_conv_out")
    else:
        plan.add(
            v, None, "decoder.time_conv_out.weight", "synth_identity", (out_ch, out_ch, 3, 1, 1)
        )
        plan.add(v, None, "decoder.time_conv_out.bias", "synth_zeros", (out_ch,))


_VAE_TEMPORAL_PARTS = (
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
)


def _plan_vae_resnet(
    plan: _Plan, src: str, dst: str, shortcut: bool, mode: str | None = None, channels: int = 0
) -> None:
    """mode None: encoder resnet; 'video': sgm VideoResBlock; 'image': sgm ResnetBlock
    placed in a diffusers SpatioTemporalResBlock with its temporal half switched off."""
    spatial = dst if mode is None else f"{dst}.spatial_res_block"
    for name in ("norm1", "conv1", "norm2", "conv2"):
        plan.wb("vae", f"{src}.{name}", f"{spatial}.{name}")
    if shortcut:
        plan.wb("vae", f"{src}.nin_shortcut", f"{spatial}.conv_shortcut")
    if mode == "video":
        for s, d in _VAE_TEMPORAL_PARTS:
            plan.wb("vae", f"{src}.time_stack.{s}", f"{dst}.temporal_res_block.{d}")
        plan.add("vae", f"{src}.mix_factor", f"{dst}.time_mixer.mix_factor")
    elif mode == "image":
        t = f"{dst}.temporal_res_block"
        for norm in ("norm1", "norm2"):
            plan.add("vae", None, f"{t}.{norm}.weight", "synth_ones", (channels,))
            plan.add("vae", None, f"{t}.{norm}.bias", "synth_zeros", (channels,))
        for conv in ("conv1", "conv2"):
            plan.add(
                "vae", None, f"{t}.{conv}.weight", "synth_zeros", (channels, channels, 3, 1, 1)
            )
            plan.add("vae", None, f"{t}.{conv}.bias", "synth_zeros", (channels,))
        plan.add("vae", None, f"{dst}.time_mixer.mix_factor", "synth_mix_off", (1,))


def _plan_vae_attention(plan: _Plan, src: str, dst: str) -> None:
    plan.wb("vae", f"{src}.norm", f"{dst}.group_norm")
    for s, d in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        plan.wb("vae", f"{src}.{s}", f"{dst}.{d}", kind="conv_to_linear")


def _plan_clip(plan: _Plan, cfg: Mapping[str, Any]) -> None:
    c, i = CLIP_PREFIX, "image_encoder"
    plan.add(i, c + "class_embedding", "vision_model.embeddings.class_embedding")
    plan.add(i, c + "positional_embedding", "vision_model.embeddings.position_embedding.weight")
    plan.add(i, c + "conv1.weight", "vision_model.embeddings.patch_embedding.weight")
    plan.wb(i, c + "ln_pre", "vision_model.pre_layrnorm")
    for n in range(cfg["num_hidden_layers"]):
        src, dst = c + f"transformer.resblocks.{n}", f"vision_model.encoder.layers.{n}"
        plan.wb(i, f"{src}.ln_1", f"{dst}.layer_norm1")
        for part in ("weight", "bias"):
            targets = tuple(f"{dst}.self_attn.{q}_proj.{part}" for q in ("q", "k", "v"))
            plan.entries.append(KeyMapping(i, f"{src}.attn.in_proj_{part}", targets, "split_qkv"))
        plan.wb(i, f"{src}.attn.out_proj", f"{dst}.self_attn.out_proj")
        plan.wb(i, f"{src}.ln_2", f"{dst}.layer_norm2")
        plan.wb(i, f"{src}.mlp.c_fc", f"{dst}.mlp.fc1")
        plan.wb(i, f"{src}.mlp.c_proj", f"{dst}.mlp.fc2")
    plan.wb(i, c + "ln_post", "vision_model.post_layernorm")
    plan.add(i, c + "proj", "visual_projection.weight", "transpose")


# --------------------------------------------------------------------------- sgm -> diffusers


def ignored_keys(keys: Iterable[str]) -> list[str]:
    """The keys that match `IGNORED_KEY_PATTERNS`."""
    patterns = [re.compile(p) for p, _ in IGNORED_KEY_PATTERNS]
    return [k for k in keys if any(p.match(k) for p in patterns)]


def check_keys(keys: Iterable[str], plan: Iterable[KeyMapping]) -> None:
    """Raise unless the checkpoint keys are exactly the plan's sources plus ignored keys."""
    keys = set(keys)
    expected = {m.source for m in plan if m.source is not None}
    missing = sorted(expected - keys)
    unmapped = sorted(keys - expected - set(ignored_keys(keys)))
    if missing or unmapped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:5]}")
        if unmapped:
            parts.append(f"{len(unmapped)} unmapped key(s), e.g. {unmapped[:5]}")
        raise CheckpointConversionError(
            "the checkpoint does not have SV3D-p's sgm layout: " + "; ".join(parts)
        )


def sgm_to_diffusers(state_dict: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Official sgm state dict -> {'unet', 'vae', 'image_encoder'} diffusers state dicts.

    'image_encoder' is absent when the checkpoint has no OpenCLIP image tower. Tensors
    keep their dtype and device (meta tensors give a shape-only conversion).
    """
    configs = infer_configs(state_dict)
    plan = conversion_plan(configs)
    check_keys(_shape_table(state_dict).keys(), plan)
    components = {m.component for m in plan}
    return {c: convert_component(plan, c, state_dict)[0] for c in COMPONENTS if c in components}


def convert_component(
    plan: Iterable[KeyMapping], component: str, state_dict: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Apply the plan's mappings of one component.

    Returns (diffusers state dict, {diffusers key: sgm key or 'synthesised'}). Tensors
    the sgm layout lacks take the dtype and device of the decoder's conv_in bias.
    """
    reference = state_dict[DECODER_PREFIX + "conv_in.bias"]
    converted: dict[str, Tensor] = {}
    origins: dict[str, str] = {}
    for mapping in plan:
        if mapping.component == component:
            converted.update(_apply(mapping, state_dict, reference))
            origins.update({t: mapping.source or "synthesised" for t in mapping.targets})
    return converted, origins


def _apply(
    mapping: KeyMapping, state_dict: Mapping[str, Tensor], reference: Tensor
) -> dict[str, Tensor]:
    kind, target = mapping.kind, mapping.targets[0]
    if mapping.source is None:
        return {target: _synthesise(kind, mapping.shape, reference)}
    tensor = state_dict[mapping.source]
    if kind == "copy":
        return {target: tensor}
    if kind == "conv_to_linear":
        if tensor.ndim != 4 or tuple(tensor.shape[2:]) != (1, 1):
            raise CheckpointConversionError(
                f"{mapping.source} must be a 1x1 conv weight (O, I, 1, 1), "
                f"got {tuple(tensor.shape)}"
            )
        return {target: tensor[:, :, 0, 0].contiguous()}
    if kind == "transpose":
        if tensor.ndim != 2:
            raise CheckpointConversionError(
                f"{mapping.source} must be a matrix (width, projection), got {tuple(tensor.shape)}"
            )
        return {target: tensor.t().contiguous()}
    if kind == "split_qkv":
        if tensor.shape[0] % 3:
            raise CheckpointConversionError(
                f"{mapping.source} must stack q, k, v along dim 0, got {tuple(tensor.shape)}"
            )
        return {
            t: part.clone() for t, part in zip(mapping.targets, tensor.chunk(3, dim=0), strict=True)
        }
    raise AssertionError(f"unknown mapping kind {kind}")


def _synthesise(kind: str, shape: tuple[int, ...], reference: Tensor) -> Tensor:
    opts = {"dtype": reference.dtype, "device": reference.device}
    if kind == "synth_zeros":
        return torch.zeros(shape, **opts)
    if kind == "synth_ones":
        return torch.ones(shape, **opts)
    if kind == "synth_mix_off":
        return torch.full(shape, IMAGE_DECODER_MIX_FACTOR, **opts)
    if kind == "synth_identity":
        weight = torch.zeros(shape, **opts)
        weight[:, :, shape[2] // 2, 0, 0] = torch.eye(shape[0], **opts)
        return weight
    raise AssertionError(f"unknown synthesised kind {kind}")


# --------------------------------------------------------------------------- diffusers -> sgm


def configs_of(components: Mapping[str, Any], temporal_decoder: bool = True) -> SV3DConfigs:
    """`SV3DConfigs` of built diffusers/transformers modules (their `.config`)."""
    clip = components.get("image_encoder")
    return SV3DConfigs(
        unet=dict(components["unet"].config),
        vae=dict(components["vae"].config),
        image_encoder=None if clip is None else clip.config.to_dict(),
        temporal_decoder=temporal_decoder,
    )


def diffusers_to_sgm(
    components: Mapping[str, Any], temporal_decoder: bool = True
) -> dict[str, Tensor]:
    """The inverse of `sgm_to_diffusers`: built modules -> one sgm state dict.

    components: {'unet': SV3DUNetModel, 'vae': AutoencoderKLTemporalDecoder,
    'image_encoder': CLIPVisionModelWithProjection (optional)}. temporal_decoder False
    writes sgm's image `Decoder` (the synthesised temporal tensors are dropped).
    """
    plan = conversion_plan(configs_of(components, temporal_decoder))
    state = {name: module.state_dict() for name, module in components.items()}
    out: dict[str, Tensor] = {}
    for m in plan:
        if m.source is None:
            continue
        sd = state[m.component]
        if m.kind == "copy":
            out[m.source] = sd[m.targets[0]]
        elif m.kind == "conv_to_linear":
            out[m.source] = sd[m.targets[0]][:, :, None, None].contiguous()
        elif m.kind == "transpose":
            out[m.source] = sd[m.targets[0]].t().contiguous()
        elif m.kind == "split_qkv":
            out[m.source] = torch.cat([sd[t] for t in m.targets], dim=0)
        else:
            raise AssertionError(f"unknown mapping kind {m.kind}")
    return out


# --------------------------------------------------------------------------- the file


class SafetensorsFile(Mapping[str, Tensor]):
    """A safetensors file as a read-only mapping that loads each tensor on access.

    `shapes` comes from the header alone; `header_sha256` hashes the header's JSON bytes.
    Raises CheckpointConversionError naming the file if it is not a safetensors file.
    """

    def __init__(self, path: Path, dtype: torch.dtype | None = None):
        self.path = Path(path)
        self.dtype = dtype
        header, raw = _read_header(self.path)
        self.header_sha256 = hashlib.sha256(raw).hexdigest()
        self.metadata = header.pop("__metadata__", None) or {}
        self.shapes = {k: tuple(v["shape"]) for k, v in header.items()}
        self._handle = None

    def __enter__(self) -> SafetensorsFile:
        from safetensors import safe_open

        self._handle = safe_open(str(self.path), framework="pt", device="cpu")
        return self

    def __exit__(self, *exc) -> None:
        self._handle = None

    def __getitem__(self, key: str) -> Tensor:
        if key not in self.shapes:
            raise KeyError(key)
        if self._handle is None:
            raise RuntimeError("open the SafetensorsFile with `with` before reading tensors")
        tensor = self._handle.get_tensor(key)
        if self.dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        return tensor

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def _read_header(path: Path) -> tuple[dict[str, Any], bytes]:
    if not path.is_file():
        raise CheckpointConversionError(f"checkpoint {path} does not exist or is not a file")
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointConversionError(
                f"checkpoint {path} is not a safetensors file: only {size} bytes"
            )
        (length,) = struct.unpack("<Q", prefix)
        if length < 2 or length > min(size - 8, 100 * 2**20):
            raise CheckpointConversionError(
                f"checkpoint {path} is not a safetensors file: header length {length} does not fit "
                f"a file of {size} bytes"
            )
        raw = f.read(length)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        for key, info in header.items():
            if key != "__metadata__" and not {"dtype", "shape", "data_offsets"} <= set(info):
                raise ValueError(f"entry {key!r} lacks dtype/shape/data_offsets")
    except (ValueError, TypeError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointConversionError(
            f"checkpoint {path} is not a safetensors file: {err}"
        ) from err
    return header, raw


def _unet_class():
    from stages.sv3d.unet import SV3DUNetModel

    return SV3DUNetModel


def build_empty(component: str, config: Mapping[str, Any]) -> torch.nn.Module:
    """The target module of `component` on the meta device (no memory for weights)."""
    with torch.device("meta"):
        if component == "unet":
            return _unet_class()(**config)
        if component == "vae":
            from diffusers import AutoencoderKLTemporalDecoder

            return AutoencoderKLTemporalDecoder(**config)
        if component == "image_encoder":
            from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

            return CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
    raise ValueError(f"component must be one of {COMPONENTS}, got {component!r}")


def check_shapes(
    component: str,
    converted: Mapping[str, Tensor],
    model: torch.nn.Module,
    origins: Mapping[str, str] | None = None,
) -> None:
    """Raise unless `converted` has exactly the keys and shapes of `model.state_dict()`.

    origins: {diffusers key: sgm key}, named in the error when given.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(converted))
    extra = sorted(set(converted) - set(expected))
    name = type(model).__name__
    if missing or extra:
        raise CheckpointConversionError(
            f"{component}: converted keys differ from {name}'s: {len(missing)} missing, "
            f"e.g. {missing[:5]}; {len(extra)} unexpected, e.g. {extra[:5]}"
        )
    for key, shape in expected.items():
        got = tuple(converted[key].shape)
        if got != shape:
            origin = f" (from {origins[key]!r})" if origins and key in origins else ""
            raise CheckpointConversionError(
                f"{component} key {key!r}{origin}: {name} expects shape {shape}, "
                f"the checkpoint gives {got}"
            )


def convert_sv3d_checkpoint(
    checkpoint: Path,
    out_dir: Path,
    image_encoder_dir: Path | None = None,
    dtype: torch.dtype | None = torch.float16,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write the diffusers directory of an official sgm SV3D-p checkpoint; returns out_dir.

    Writes unet/, vae/, image_encoder/, feature_extractor/, scheduler/, model_index.json
    and, last, conversion.json (so a directory without it is an unfinished conversion).
    Every key and shape is checked before any weight is read. Components are then
    converted one at a time, each built on the meta device and handed the loaded
    tensors (`assign=True`), so peak memory is about one component: its source tensors
    plus the converted copy (9.3 GB RSS for the full fp32 file, most of it the UNet's
    memory-mapped source pages).

    Args:
        checkpoint: the single-file sgm `.safetensors`.
        out_dir: must not exist or be empty.
        image_encoder_dir: local `CLIPVisionModelWithProjection` directory, required
            when (and only when) the checkpoint has no OpenCLIP image tower; copied.
        dtype: floating dtype of the saved weights; None keeps the checkpoint's.
        progress: called with a short message after each step.
    """
    say = progress or (lambda message: None)
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    source = SafetensorsFile(checkpoint, dtype=dtype)
    configs = _infer_configs(source.shapes, 64, 80)
    plan = conversion_plan(configs)
    check_keys(source.shapes, plan)
    if configs.image_encoder is None and image_encoder_dir is None:
        raise CheckpointConversionError(
            f"checkpoint {checkpoint} has no OpenCLIP image tower ({CLIP_PREFIX}*); pass "
            f"image_encoder_dir, a local CLIPVisionModelWithProjection directory"
        )
    if configs.image_encoder is not None and image_encoder_dir is not None:
        raise CheckpointConversionError(
            f"checkpoint {checkpoint} has its own OpenCLIP image tower; image_encoder_dir="
            f"{image_encoder_dir} would be ignored, leave it out"
        )
    if image_encoder_dir is not None:
        _check_image_encoder_dir(Path(image_encoder_dir), configs)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CheckpointConversionError(f"out_dir {out_dir} already exists and is not empty")

    # Every key and shape is checked on meta tensors before any weight is read.
    meta = {k: torch.empty(shape, device="meta") for k, shape in source.shapes.items()}
    models: dict[str, torch.nn.Module] = {}
    for component in COMPONENTS:
        config = getattr(configs, component)
        if config is not None:
            models[component] = build_empty(component, config)
            converted, origins = convert_component(plan, component, meta)
            check_shapes(component, converted, models[component], origins)
    decoder = "temporal" if configs.temporal_decoder else "image"
    say(f"checked {checkpoint.name}: {len(source.shapes)} tensors, {decoder} decoder")

    work = out_dir.with_name(out_dir.name + ".partial")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        classes = _write_components(work, plan, models, source, say)
        if image_encoder_dir is not None:
            shutil.copytree(image_encoder_dir, work / "image_encoder")
            classes["image_encoder"] = ("transformers", "CLIPVisionModelWithProjection")
            say(f"copied image_encoder/ from {image_encoder_dir}")
        classes.update(_write_small_components(work))
        _write_model_index(work, classes)
        _write_record(work, checkpoint, source, configs, image_encoder_dir, dtype)
        if out_dir.exists():
            out_dir.rmdir()
        work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    say(f"done: {out_dir}")
    return out_dir


def _write_components(
    root: Path,
    plan: list[KeyMapping],
    models: dict[str, torch.nn.Module],
    source: SafetensorsFile,
    say: Callable[[str], None],
) -> dict[str, tuple[str, str]]:
    """Load, convert and save one component at a time into the meta-built models."""
    classes = {}
    for component in list(models):
        model = models.pop(component)
        with source:  # reopened per component, so its mapped pages are let go in between
            converted, _ = convert_component(plan, component, source)
        model.load_state_dict(converted, strict=True, assign=True)
        model.save_pretrained(root / component, safe_serialization=True)
        classes[component] = (type(model).__module__, type(model).__name__)
        del model, converted
        say(f"wrote {component}/")
    return classes


def _check_image_encoder_dir(src: Path, configs: SV3DConfigs) -> None:
    """Raise unless `src` holds a CLIP vision config and weights matching the unet."""
    from transformers import CLIPVisionConfig

    if not src.is_dir() or not (src / "config.json").is_file():
        raise CheckpointConversionError(f"image_encoder_dir {src} has no config.json")
    if not any(p.suffix in (".safetensors", ".bin") for p in src.iterdir()):
        raise CheckpointConversionError(f"image_encoder_dir {src} has no weight file")
    try:
        config = CLIPVisionConfig.from_pretrained(src, local_files_only=True)
    except (OSError, ValueError) as err:
        raise CheckpointConversionError(
            f"image_encoder_dir {src}: unreadable config ({err})"
        ) from err
    cross = configs.unet["cross_attention_dim"]
    if config.projection_dim != cross:
        raise CheckpointConversionError(
            f"image_encoder_dir {src}: projection_dim {config.projection_dim} must equal the "
            f"unet's cross_attention_dim {cross}"
        )


def _write_small_components(root: Path) -> dict[str, tuple[str, str]]:
    from diffusers import EulerDiscreteScheduler

    from stages.sv3d.pipeline import CLIPImageProcessor

    scheduler = EulerDiscreteScheduler(**SCHEDULER_CONFIG)
    scheduler.save_pretrained(root / "scheduler")
    processor = CLIPImageProcessor(**feature_extractor_config())
    processor.save_pretrained(root / "feature_extractor")
    return {
        "scheduler": ("diffusers", type(scheduler).__name__),
        "feature_extractor": ("transformers", type(processor).__name__),
    }


def _write_model_index(root: Path, classes: Mapping[str, tuple[str, str]]) -> None:
    import diffusers

    index: dict[str, Any] = {
        "_class_name": "SV3DPipeline",
        "_diffusers_version": diffusers.__version__,
    }
    for name in sorted(classes):
        module, cls = classes[name]
        library = (
            module.split(".")[0]
            if module.split(".")[0] in ("diffusers", "transformers")
            else module
        )
        index[name] = [library, cls]
    (root / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _write_record(
    root: Path,
    checkpoint: Path,
    source: SafetensorsFile,
    configs: SV3DConfigs,
    image_encoder_dir: Path | None,
    dtype: torch.dtype | None,
) -> None:
    record = {
        "converter_version": CONVERTER_VERSION,
        "source_file": checkpoint.name,
        "source_bytes": checkpoint.stat().st_size,
        "source_header_sha256": source.header_sha256,
        "source_tensors": len(source.shapes),
        "ignored_tensors": len(ignored_keys(source.shapes)),
        "decoder": "temporal"
        if configs.temporal_decoder
        else "image (temporal layers switched off)",
        "image_encoder": "checkpoint"
        if image_encoder_dir is None
        else f"copied from {image_encoder_dir}",
        "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
    }
    (root / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
