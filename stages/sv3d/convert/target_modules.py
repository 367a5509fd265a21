"""The target diffusers/transformers modules, built on the meta device, and the check
that a converted state dict fits them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from stages.errors import CheckpointConversionError
from stages.sv3d.convert.sgm_layout import COMPONENTS


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
                f"{component} key {key!r}{origin}: {name} expects shape {shape}, the checkpoint gives {got}"
            )
