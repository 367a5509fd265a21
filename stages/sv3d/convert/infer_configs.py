"""`SV3DConfigs` derived from the tensor shapes of an sgm checkpoint."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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

SV3D_P_UNET_HEAD_DIM = 64
"""sgm `num_head_channels` of SV3D-p's VideoUNet: heads = channels / 64 at every level."""
SV3D_P_CLIP_HEAD_DIM = 80
"""OpenCLIP ViT-H/14's head size: 1280 / 16 heads."""
UNET_HEADS_OPTION = "unet_heads (--unet-heads)"
CLIP_HEADS_OPTION = "clip_heads (--clip-heads)"


def infer_configs(
    state_dict: Mapping[str, Tensor],
    unet_heads: int | Sequence[int] | None = None,
    clip_heads: int | None = None,
) -> SV3DConfigs:
    """Component configs derived from the tensor shapes of an sgm SV3D checkpoint.

    Shapes give every width and layer count. What shapes cannot give comes from
    SV3D-p: the camera sinusoid sizes (1:2:2 of adm_in_channels), 21 frames, 576 px,
    and, unless given, the attention heads. Works on meta tensors.

    Args:
        unet_heads: UNet attention heads, one count per level or one for all levels.
            None: channels / 64 per level, as in SV3D-p; a level whose width 64 does
            not divide is refused, since a wrong count converts silently.
        clip_heads: heads of the OpenCLIP image tower. None: width / 80, as ViT-H/14.

    Raises:
        CheckpointConversionError: shapes that do not fit, or head counts that do not
            divide the widths (naming the option to pass).
    """
    shapes = shape_table(state_dict)
    has_clip = any(k.startswith(CLIP_PREFIX) for k in shapes)
    if clip_heads is not None and not has_clip:
        raise CheckpointConversionError(
            f"{CLIP_HEADS_OPTION} was given but the checkpoint has no OpenCLIP image tower "
            f"({CLIP_PREFIX}*); the image encoder directory keeps its own config, leave it out"
        )
    temporal = any(
        k.startswith(DECODER_PREFIX)
        and (".time_stack." in k or ".time_mix_conv." in k or k.endswith("mix_factor"))
        for k in shapes
    )
    return SV3DConfigs(
        unet=_infer_unet(shapes, unet_heads),
        vae=_infer_vae(shapes),
        image_encoder=_infer_clip(shapes, clip_heads) if has_clip else None,
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


def _infer_unet(shapes: Mapping[str, tuple[int, ...]], heads: int | Sequence[int] | None) -> dict[str, Any]:
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
    channels, down_attn, depth, cross_dim, width_keys = [], [], None, 0, []
    for lv in range(levels):
        first = p + f"input_blocks.{1 + lv * per_level}"
        width_keys.append(first + ".0.out_layers.3.weight")
        channels.append(_need(shapes, width_keys[-1], "unet")[0])
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
        "num_attention_heads": _unet_heads(channels, width_keys, heads),
        "num_frames": 21,
        "camera_embed_dims": [adm // 5, 2 * adm // 5, 2 * adm // 5],
        "resnet_eps": 1e-5,  # sgm's `normalization`; recorded so the config says it
    }


def _unet_heads(channels: list[int], width_keys: list[str], heads: int | Sequence[int] | None) -> list[int]:
    """Heads per level: the explicit counts, checked, or channels / 64 where 64 divides."""
    if heads is None:
        return [
            _default_heads(width, SV3D_P_UNET_HEAD_DIM, key, UNET_HEADS_OPTION)
            for width, key in zip(channels, width_keys, strict=True)
        ]
    counts = [heads] * len(channels) if isinstance(heads, int) else list(heads)
    if len(counts) != len(channels):
        raise CheckpointConversionError(
            f"{UNET_HEADS_OPTION} gives {len(counts)} counts for a unet of {len(channels)} levels "
            f"(widths {channels}); give one count per level or one for all"
        )
    return [
        _checked_heads(count, width, f"unet level {lv} width", UNET_HEADS_OPTION)
        for lv, (count, width) in enumerate(zip(counts, channels, strict=True))
    ]


def _default_heads(width: int, head_dim: int, key: str, option: str) -> int:
    # A width the official head size does not divide is not SV3D-p's layout; any count
    # guessed for it would load and run, but compute different attention.
    if width < head_dim or width % head_dim:
        raise CheckpointConversionError(
            f"{key} has width {width}, which SV3D-p's head size {head_dim} does not divide, so the "
            f"attention head count is ambiguous; pass {option}"
        )
    return width // head_dim


def _checked_heads(count: object, width: int, what: str, option: str) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise CheckpointConversionError(f"{option} must be positive integers, got {count!r}")
    if width % count:
        raise CheckpointConversionError(f"{option}: {count} heads do not divide the {what} {width}")
    return count


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


def _infer_clip(shapes: Mapping[str, tuple[int, ...]], heads: int | None) -> dict[str, Any]:
    c = CLIP_PREFIX
    conv1 = _need(shapes, c + "conv1.weight", "image encoder")
    positions = _need(shapes, c + "positional_embedding", "image encoder")[0]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise CheckpointConversionError(
            f"{c}positional_embedding has {positions} rows, not 1 + a square number of patches"
        )
    width = conv1[0]
    if heads is None:
        heads = _default_heads(width, SV3D_P_CLIP_HEAD_DIM, c + "conv1.weight", CLIP_HEADS_OPTION)
    else:
        heads = _checked_heads(heads, width, "image encoder width", CLIP_HEADS_OPTION)
    return {
        "hidden_size": width,
        "intermediate_size": _need(shapes, c + "transformer.resblocks.0.mlp.c_fc.weight", "image encoder")[0],
        "num_hidden_layers": len(_indices(shapes, c + "transformer.resblocks.")),
        "num_attention_heads": heads,
        "num_channels": conv1[1],
        "image_size": grid * conv1[2],
        "patch_size": conv1[2],
        "projection_dim": _need(shapes, c + "proj", "image encoder")[1],
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
    }
