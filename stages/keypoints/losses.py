"""The self-supervised objective: reconstruct every view from the input's appearance and the skeleton."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stages.keypoints import geometry
from stages.keypoints.augment import (
    hide_random_blocks,
    random_affine,
    random_z_rotations,
    rotate_cameras,
    turn_in_plane,
    turn_pixels,
)
from stages.keypoints.bend import bend_sources, bend_volume, random_bends
from stages.keypoints.checks import pixel_centres
from stages.keypoints.config import APPEARANCE_GRID, StageTwoConfig
from stages.keypoints.model import KeyDiff3DModel

BEND_SOFTNESS = 0.05
"""Width of a bend's blend across its plane, as a share of the volume's half extent."""
COVERAGE_POOL = 2
"""Masks are averaged over blocks of this side before the coverage term measures them."""


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


def outside_loss(edges: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean squared edge value off the foreground, edges and masks (B, V, H, W).

    The mask term's half that charges edges drawn over the background, on its own weight.
    The adjacency is shared by every sample, so an edge that stays on the body in every
    pose must join two points of one part; an edge between two keypoints that mark fixed
    directions crosses the background in some poses and pays there."""
    return ((edges * (1.0 - masks)) ** 2).mean()


def coverage_loss(uv: torch.Tensor, masks: torch.Tensor, pool: int) -> torch.Tensor:
    """Mean over the foreground of the squared distance to the nearest keypoint's projection.

    A chamfer term from the silhouette to the keypoints, view by view: it is least when the
    keypoints spread over the whole body as cluster centres of its projections (k-means
    of the figure seen from every view), with limbs taking their share, and it charges the
    furthest body points in fixed directions for the body they leave uncovered.

    uv (B, V, N, 2) pixels at render size, a pixel's centre at (j + 0.5, i + 0.5); masks
    (B, V, H, W) at render size, averaged over `pool` x `pool` blocks first. Distances are in
    units of the render's width. Returns a scalar (0 for empty masks).
    """
    height, width = masks.shape[-2:]
    weights = F.avg_pool2d(masks.flatten(0, 1)[:, None], pool).flatten(1)  # (B * V, h * w)
    u, v = pixel_centres(height // pool, width // pool, uv)
    grid = torch.stack(torch.meshgrid(u * pool, v * pool, indexing="xy"), -1).reshape(-1, 2)  # (h * w, 2)
    squared = (grid[None, :, None] - uv.flatten(0, 1)[:, None]).pow(2).sum(-1)  # (B * V, h * w, N)
    nearest = squared.min(-1).values / width**2
    return (weights * nearest).sum() / weights.sum().clamp_min(1e-6)


def concentration_loss(
    probabilities: torch.Tensor, centres: torch.Tensor, keypoints: torch.Tensor, unit: float
) -> torch.Tensor:
    """Mean variance of each keypoint's voxel distribution about the keypoint, in unit**2.

    probabilities (B, N, M, M, M) summing to 1 over the voxels; centres (M, M, M, 3);
    keypoints (B, N, 3), their expected positions."""
    flat = probabilities.flatten(2)  # (B, N, M^3)
    squared = ((centres.reshape(1, 1, -1, 3) - keypoints[:, :, None]) / unit).pow(2).sum(-1)
    return (flat * squared).sum(-1).mean()


def _distance_variation(keypoints: torch.Tensor, min_distance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For every pair of keypoints (B, N, 3), the squared coefficient of variation (variance
    over mean squared) of their distance over the batch's samples, (N, N), and which pairs
    count: distinct keypoints at least `min_distance` apart on average (N, N) bool."""
    offsets = keypoints[:, :, None] - keypoints[:, None]
    # Distances with a floor inside the root: its gradient at a coincident pair stays finite.
    distances = (offsets.pow(2).sum(-1) + 1e-12).sqrt()  # (B, N, N)
    mean = distances.mean(0)
    variation = distances.var(0, unbiased=False) / (mean.pow(2) + 1e-12)
    eligible = mean.detach() >= min_distance
    eligible &= ~torch.eye(eligible.shape[0], dtype=torch.bool, device=eligible.device)
    return variation, eligible


def rigid_partner_loss(keypoints: torch.Tensor, min_distance: float) -> torch.Tensor:
    """How far each keypoint is from having a partner at a steady distance across samples.

    For every keypoint, the least squared coefficient of variation of its distance to a
    partner over the batch's samples, among partners at least `min_distance` away on
    average; the mean of those over keypoints. Points on one rigid part score 0 in any
    poses; the furthest body points in fixed directions jump between parts as the pose
    changes and do not. So does a constellation that ignores the pose (README, eighteenth
    screening).

    keypoints (B, N, 3), B >= 2, in the figure's units. Returns a scalar (0 when no keypoint
    has a partner far enough away).
    """
    variation, eligible = _distance_variation(keypoints, min_distance)
    steadiest = variation.masked_fill(~eligible, math.inf).min(1).values
    found = eligible.any(1)
    if not found.any():
        return keypoints.sum() * 0.0
    return steadiest[found].mean()


def rigid_edge_loss(keypoints: torch.Tensor, weights: torch.Tensor, min_distance: float) -> torch.Tensor:
    """The skeleton's edges must keep their length across samples: the squared coefficient
    of variation of each pair's distance over the batch, averaged with the edge weights.

    The weights (N, N) are taken as they are (no gradient): the reconstruction decides
    which edges are drawn, and this term asks the drawn ones to be rigid, as a limb is.
    Pairs nearer than `min_distance` on average do not count. keypoints (B, N, 3), B >= 2.
    """
    variation, eligible = _distance_variation(keypoints, min_distance)
    weights = weights.detach() * eligible
    total = weights.sum()
    if total <= 0:
        return keypoints.sum() * 0.0
    return (weights * variation).sum() / total


def keypoint_identity_loss(
    features: torch.Tensor, uv: torch.Tensor, image_size: int, temperature: float
) -> torch.Tensor:
    """Contrastive loss over the batch's samples: keypoint n's descriptor in sample a must be
    nearest keypoint n's among sample b's N descriptors, view by view.

    Args:
        features: (B, V, C', h, w) view features (B >= 2).
        uv: (B, V, N, 2) the keypoints' pixels at image_size.
        temperature: of the softmax over cosine similarities.

    Returns:
        The mean cross-entropy over ordered pairs of distinct samples, views and keypoints
        (log N when the descriptors tell nothing apart).
    """
    sampled, _ = geometry.sample_views(features, uv, image_size)
    descriptors = F.normalize(sampled.transpose(2, 3), dim=-1, eps=1e-6)  # (B, V, N, C')
    similarity = torch.einsum("avnc,bvmc->abvnm", descriptors, descriptors) / temperature
    samples, _, keypoints = descriptors.shape[:3]
    distinct = ~torch.eye(samples, dtype=torch.bool, device=similarity.device)
    logits = similarity[distinct]  # (B * (B - 1), V, N, N)
    target = torch.arange(keypoints, device=logits.device).expand(logits.shape[:-1])
    return F.cross_entropy(logits.flatten(0, 2), target.flatten())


def turned_identity_loss(
    model: KeyDiff3DModel,
    views: torch.Tensor,
    uv: torch.Tensor,
    config: StageTwoConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """`keypoint_identity_loss` on descriptors that the pixel encoder reads from the views
    turned in-plane by a random angle each. Unturned, a descriptor can tell where in the
    view it lies (which side of the silhouette, from the edge it sees), so keypoints that
    mark fixed directions match across samples and the term ties them to the world harder;
    turned, only what the part looks like is left to match.

    views (B, V, 3, H, W), the pixel encoder's input; uv (B, V, N, 2) at render_size.
    """
    size = model.config.image_size
    angles = torch.rand(views.shape[0] * views.shape[1], generator=generator, dtype=torch.float64)
    angles = (angles * (2.0 * math.pi)).to(views.device)
    turned = turn_in_plane(views.flatten(0, 1), angles).unflatten(0, views.shape[:2])
    # uv is at render_size; the features cover the cache's image_size.
    uv_image = uv.flatten(0, 1) * (size / model.config.render_size)
    turned_uv = turn_pixels(uv_image, angles, size).unflatten(0, uv.shape[:2])
    features = model.view_features(turned)
    return keypoint_identity_loss(features.float(), turned_uv, size, config.identity_temperature)


def bend_consistency(
    model: KeyDiff3DModel,
    volume: torch.Tensor,
    keypoints: torch.Tensor,
    config: StageTwoConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """Keypoints found in a randomly bent copy of the volume, taken back through the bend,
    must be the keypoints found in the volume itself.

    Each sample is bent about a hinge through one of its own keypoints (chosen at random),
    with a random plane and up to `bend_max_deg`. A keypoint on a part moves with the part;
    the furthest body point in a fixed direction would jump to another part. But the bend
    moves the lifted features themselves, so a keypoint that detects a feature such as
    "the silhouette's left edge" follows it too, and the term barely tells the two apart
    (README, seventeenth screening).

    volume (B, C, M, M, M) the lifted volume; keypoints (B, N, 3) found in it.
    Returns the mean squared disagreement in units of the volume's half extent.
    """
    extent = model.config.volume_half_extent
    b, n = keypoints.shape[:2]
    pick = torch.randint(n, (b,), generator=generator).to(keypoints.device)
    hinges = keypoints.detach()[torch.arange(b, device=keypoints.device), pick]
    bend = random_bends(hinges, generator, config.bend_max_deg, BEND_SOFTNESS * extent)
    bent_volume, sources = bend_volume(volume, model.voxel_centres, extent, bend)
    bent, _ = model.keypoints_from_volume(bent_volume, sources)
    unbent = bend_sources(bent, bend)
    return (((unbent - keypoints) / extent) ** 2).mean()


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
    volume = model.lift(model.view_features(inputs), intrinsics, world_to_camera)
    keypoints, probabilities = model.keypoints_from_volume(volume)
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
    if config.lambda_outside > 0:
        terms["outside"] = config.lambda_outside * outside_loss(edges.float(), masks)
    if config.lambda_coverage > 0:
        terms["coverage"] = config.lambda_coverage * coverage_loss(uv.float(), masks, COVERAGE_POOL)
    extent = model.config.volume_half_extent
    if config.lambda_concentration > 0:
        spread = concentration_loss(probabilities, model.voxel_centres.float(), keypoints, extent)
        terms["concentration"] = config.lambda_concentration * spread
    if config.lambda_rigid > 0:
        min_distance = config.rigid_min_distance * extent
        if config.rigid_pairs == "edges":
            rigid = rigid_edge_loss(keypoints.float(), model.edge_weights().float(), min_distance)
        else:
            rigid = rigid_partner_loss(keypoints.float(), min_distance)
        terms["rigid"] = config.lambda_rigid * rigid
    if config.lambda_colour > 0:
        terms["colour"] = config.lambda_colour * (reconstruction.float() - views).abs().mean()
    if config.lambda_rotation > 0:
        rotation = random_z_rotations(len(views), generator).to(keypoints)
        rotated, _ = model.predict_keypoints(inputs, intrinsics, rotate_cameras(world_to_camera, rotation))
        expected = keypoints @ rotation.transpose(1, 2)
        terms["rotation"] = config.lambda_rotation * (((rotated - expected) / extent) ** 2).mean()
    if config.lambda_bend > 0:
        terms["bend"] = config.lambda_bend * bend_consistency(model, volume, keypoints, config, generator)
    if config.lambda_identity > 0:
        identity = turned_identity_loss(model, inputs, uv, config, generator)  # type: ignore[arg-type]
        terms["identity"] = config.lambda_identity * identity
    terms["total"] = sum(terms.values())  # type: ignore[assignment]
    return terms, StepOutputs(keypoints, uv, edges, reconstruction, appearance)
