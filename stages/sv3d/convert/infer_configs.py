"""`SV3DConfigs` derived from the tensor shapes of an sgm checkpoint."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from stages.errors import CheckpointConversionError
from stages.sv3d.convert.configs import SV3DConfigs
from stages.sv3d.convert.sgm_layout import (
    CLIP_PREFIX,
    DECODER_PREFIX,
    QUANT_CONV_PREFIX,
    UNET_PREFIX,
    VAE_ENCODER_PREFIX,
)


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
    shapes = shape_table(state_dict)
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


def shape_table(state_dict: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a state dict, or of a `SafetensorsFile` from its header alone."""
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
            f"cannot infer the unet config: {len(blocks)} input_blocks do not split into {levels} levels"
        )
    per_level = len(blocks) // levels  # resnets + the downsampler (or conv_in on level 0)
    nrb = per_level - 1
    expected_downs = [(lv + 1) * per_level for lv in range(levels - 1)]
    if nrb < 1 or downs != expected_downs:
        raise CheckpointConversionError(
            f"cannot infer the unet config: downsamplers at input_blocks {downs}, expected {expected_downs}"
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
    up_attn = [p + f"output_blocks.{u * per_level}.1.proj_in.weight" in shapes for u in range(levels)]
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
            "CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal" for a in down_attn
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
        "resnet_eps": 1e-5,  # sgm's `normalization`; recorded so the config says it
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
        raise CheckpointConversionError(f"cannot infer the vae config: no {e}down.* keys in the checkpoint")
    nrb = len(_indices(shapes, e + "down.0.block."))
    channels = [_need(shapes, e + f"down.{lv}.block.0.conv1.weight", "vae encoder")[0] for lv in levels]
    latent2 = _need(shapes, e + "conv_out.weight", "vae encoder")[0]
    quant = _need(shapes, QUANT_CONV_PREFIX + "weight", "vae encoder")
    if quant[:2] != (latent2, latent2):
        raise CheckpointConversionError(
            f"quant_conv must map {latent2} to {latent2} channels (embed_dim == z_channels), "
            f"got shape {quant}"
        )
    dec_levels = _indices(shapes, d + "up.")
    dec_channels = [_need(shapes, d + f"up.{lv}.block.0.conv2.weight", "vae decoder")[0] for lv in dec_levels]
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
        "intermediate_size": _need(shapes, c + "transformer.resblocks.0.mlp.c_fc.weight", "image encoder")[0],
        "num_hidden_layers": len(_indices(shapes, c + "transformer.resblocks.")),
        "num_attention_heads": _heads(width, head_dim, "image encoder"),
        "num_channels": conv1[1],
        "image_size": grid * conv1[2],
        "patch_size": conv1[2],
        "projection_dim": _need(shapes, c + "proj", "image encoder")[1],
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
    }
