"""The self-supervised objective: reconstruct every view from the input's appearance and the skeleton."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stages.keypoints.augment import hide_random_blocks, random_affine, random_z_rotations, rotate_cameras
from stages.keypoints.config import APPEARANCE_GRID, StageTwoConfig
from stages.keypoints.model import KeyDiff3DModel


@dataclass
class StepOutputs:
    """What one forward pass produced (for losses, logging and previews)."""

    keypoints: torch.Tensor
    """(B, N, 3) world coordinates."""
    uv: torch.Tensor
    """(B, V, N, 2) pixels at render size."""
    edges: torch.Tensor
    """(B, V, H, W) edge maps."""
    reconstruction: torch.Tensor
    """(B, V, 3, H, W) synthesised views."""
    appearance: torch.Tensor
    """(B, 3, H, W) the augmented (and partly hidden) input view the decoder saw."""


def model_inputs(model: KeyDiff3DModel, batch: dict[str, torch.Tensor]) -> list[torch.Tensor] | torch.Tensor:
    """The cached feature layers, in layer order, or the views for the pixel encoder."""
    if model.config.feature_source == "diffusion":
        return [batch[name] for name in sorted(k for k in batch if k.startswith("features/"))]
    return batch.get("feature_views", batch["views"])


def mask_loss(edges: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of edge maps and foreground masks, both (B, V, H, W)."""
    return ((edges - masks) ** 2).mean()


def training_losses(
    model: KeyDiff3DModel,
    perceptual: nn.Module,
    batch: dict[str, torch.Tensor],
    config: StageTwoConfig,
    generator: torch.Generator,
) -> tuple[dict[str, torch.Tensor], StepOutputs]:
    """The loss terms (each already weighted; 'total' is their sum) and the step's outputs.

    generator: a CPU generator for the augmentation and the random rotations.
    """
    views, masks = batch["views"], batch["view_masks"]
    intrinsics, world_to_camera = batch["intrinsics"], batch["world_to_camera"]
    inputs = model_inputs(model, batch)
    keypoints, _ = model.predict_keypoints(inputs, intrinsics, world_to_camera)
    uv = model.project(keypoints, intrinsics, world_to_camera)
    edges, structure = model.structure_maps(uv)
    appearance = random_affine(
        views[:, 0], generator, config.augment_rotation_deg, config.augment_scale, config.augment_translate
    )
    appearance = hide_random_blocks(appearance, generator, config.appearance_hidden, APPEARANCE_GRID)
    reconstruction = model.reconstruct(structure, appearance, views[:, 0], uv)
    terms = {
        "perceptual": config.lambda_perceptual
        * perceptual(reconstruction.flatten(0, 1).float(), views.flatten(0, 1)),
        "mask": config.lambda_mask * mask_loss(edges.float(), masks),
    }
    if config.lambda_colour > 0:
        terms["colour"] = config.lambda_colour * (reconstruction.float() - views).abs().mean()
    if config.lambda_rotation > 0:
        rotation = random_z_rotations(len(views), generator).to(keypoints)
        rotated, _ = model.predict_keypoints(inputs, intrinsics, rotate_cameras(world_to_camera, rotation))
        expected = keypoints @ rotation.transpose(1, 2)
        extent = model.config.volume_half_extent
        terms["rotation"] = config.lambda_rotation * (((rotated - expected) / extent) ** 2).mean()
    terms["total"] = sum(terms.values())  # type: ignore[assignment]
    return terms, StepOutputs(keypoints, uv, edges, reconstruction, appearance)
