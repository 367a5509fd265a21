"""Key mapping of the VAE: the conditioning encoder and sgm's image or video frame decoder
-> `AutoencoderKLTemporalDecoder`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stages.sv3d.convert.key_mapping import KeyPlan
from stages.sv3d.convert.sgm_layout import DECODER_PREFIX, QUANT_CONV_PREFIX, VAE_ENCODER_PREFIX


def plan_vae(plan: KeyPlan, cfg: Mapping[str, Any], temporal: bool) -> None:
    """Add the VAE's mappings for `cfg` to `plan`; temporal: the source decoder is sgm's
    `VideoDecoder` (else the image `Decoder`, its temporal layers synthesised)."""
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
            plan.wb(v, e + f"down.{lv}.downsample.conv", f"encoder.down_blocks.{lv}.downsamplers.0.conv")
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
        plan.add(v, None, "decoder.time_conv_out.weight", "synth_identity", (out_ch, out_ch, 3, 1, 1))
        plan.add(v, None, "decoder.time_conv_out.bias", "synth_zeros", (out_ch,))


_VAE_TEMPORAL_PARTS = (
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
)


def _plan_vae_resnet(
    plan: KeyPlan, src: str, dst: str, shortcut: bool, mode: str | None = None, channels: int = 0
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
            plan.add("vae", None, f"{t}.{conv}.weight", "synth_zeros", (channels, channels, 3, 1, 1))
            plan.add("vae", None, f"{t}.{conv}.bias", "synth_zeros", (channels,))
        plan.add("vae", None, f"{dst}.time_mixer.mix_factor", "synth_mix_off", (1,))


def _plan_vae_attention(plan: KeyPlan, src: str, dst: str) -> None:
    plan.wb("vae", f"{src}.norm", f"{dst}.group_norm")
    for s, d in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        plan.wb("vae", f"{src}.{s}", f"{dst}.{d}", kind="conv_to_linear")
