"""Key mapping of the OpenCLIP ViT-H/14 visual tower -> `CLIPVisionModelWithProjection`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stages.sv3d.convert.key_mapping import KeyMapping, KeyPlan
from stages.sv3d.convert.sgm_layout import CLIP_PREFIX


def plan_clip(plan: KeyPlan, cfg: Mapping[str, Any]) -> None:
    """Add the image tower's mappings for `cfg` (`CLIPVisionConfig` kwargs) to `plan`."""
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
