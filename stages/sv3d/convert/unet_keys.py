"""Key mapping of the UNet: sgm `VideoUNet` (`model.diffusion_model.*`) -> `SV3DUNetModel`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from stages.errors import CheckpointConversionError
from stages.sv3d.convert.key_mapping import KeyPlan
from stages.sv3d.convert.sgm_layout import UNET_PREFIX


def _per_block(value: int | Iterable[int], n: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * n
    values = [int(v) for v in value]
    if len(values) != n:
        raise CheckpointConversionError(f"unet {name} must have {n} entries, got {values}")
    return values


def plan_unet(plan: KeyPlan, cfg: Mapping[str, Any]) -> None:
    """Add the UNet's mappings for `cfg` (`SV3DUNetModel` kwargs) to `plan`."""
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
            _plan_unet_resnet(plan, src + ".0", f"down_blocks.{lv}.resnets.{j}", in_ch != channels[lv])
            in_ch = channels[lv]
            if down_attn[lv]:
                _plan_unet_attention(plan, src + ".1", f"down_blocks.{lv}.attentions.{j}", depths[lv])
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
                _plan_unet_attention(plan, src + ".1", f"up_blocks.{k}.attentions.{j}", up_depths[k])
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


def _plan_unet_resnet(plan: KeyPlan, src: str, dst: str, shortcut: bool) -> None:
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
    f"{m}.{wb}" for m in ("ff.net.0.proj", "ff.net.2", "norm1", "norm2", "norm3") for wb in ("weight", "bias")
)


_TEMPORAL_BLOCK_PARAMS = _BLOCK_PARAMS + tuple(
    f"{m}.{wb}" for m in ("norm_in", "ff_in.net.0.proj", "ff_in.net.2") for wb in ("weight", "bias")
)


def _plan_unet_attention(plan: KeyPlan, src: str, dst: str, depth: int) -> None:
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
