"""The conversion plan of a checkpoint, applied to state dicts: sgm -> diffusers and back."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from stages.errors import CheckpointConversionError
from stages.sv3d.convert.clip_keys import plan_clip
from stages.sv3d.convert.configs import SV3DConfigs, configs_of
from stages.sv3d.convert.infer_configs import infer_configs, shape_table
from stages.sv3d.convert.key_mapping import KeyMapping, KeyPlan
from stages.sv3d.convert.sgm_layout import (
    COMPONENTS,
    DECODER_PREFIX,
    IMAGE_DECODER_MIX_FACTOR,
    ignored_keys,
)
from stages.sv3d.convert.unet_keys import plan_unet
from stages.sv3d.convert.vae_keys import plan_vae


def conversion_plan(configs: SV3DConfigs) -> list[KeyMapping]:
    """Every sgm -> diffusers key mapping implied by `configs`."""
    plan = KeyPlan()
    plan_unet(plan, configs.unet)
    plan_vae(plan, configs.vae, configs.temporal_decoder)
    if configs.image_encoder is not None:
        plan_clip(plan, configs.image_encoder)
    return plan.entries


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


def sgm_to_diffusers(
    state_dict: Mapping[str, Tensor],
    unet_heads: int | Sequence[int] | None = None,
    clip_heads: int | None = None,
) -> dict[str, dict[str, Tensor]]:
    """Official sgm state dict -> {'unet', 'vae', 'image_encoder'} diffusers state dicts.

    'image_encoder' is absent when the checkpoint has no OpenCLIP image tower. Tensors
    keep their dtype and device (meta tensors give a shape-only conversion). The head
    counts are as in `infer_configs`; the key plan itself does not depend on them.
    """
    configs = infer_configs(state_dict, unet_heads=unet_heads, clip_heads=clip_heads)
    plan = conversion_plan(configs)
    check_keys(shape_table(state_dict).keys(), plan)
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


def _apply(mapping: KeyMapping, state_dict: Mapping[str, Tensor], reference: Tensor) -> dict[str, Tensor]:
    kind, target = mapping.kind, mapping.targets[0]
    if mapping.source is None:
        return {target: _synthesise(kind, mapping.shape, reference)}
    tensor = state_dict[mapping.source]
    if kind == "copy":
        return {target: tensor}
    if kind == "conv_to_linear":
        if tensor.ndim != 4 or tuple(tensor.shape[2:]) != (1, 1):
            raise CheckpointConversionError(
                f"{mapping.source} must be a 1x1 conv weight (O, I, 1, 1), got {tuple(tensor.shape)}"
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
        return {t: part.clone() for t, part in zip(mapping.targets, tensor.chunk(3, dim=0), strict=True)}
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


def diffusers_to_sgm(components: Mapping[str, Any], temporal_decoder: bool = True) -> dict[str, Tensor]:
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
