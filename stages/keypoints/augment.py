"""Augmentation: random affine and hidden blocks of the input view, in-plane turns, world rotations."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from stages.keypoints.errors import ShapeError


def random_affine(
    images: torch.Tensor,
    generator: torch.Generator,
    max_rotation_deg: float,
    scale_range: float,
    max_translate: float,
) -> torch.Tensor:
    """Rotate, scale and shift each image at random; uncovered pixels become white.

    images (B, 3, H, W) in [0, 1]; the generator must live on the CPU. Returns (B, 3, H, W).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ShapeError(f"images: expected (B, 3, H, W), got {tuple(images.shape)}")
    b = images.shape[0]
    uniform = torch.rand(b, 4, generator=generator, dtype=torch.float64) * 2.0 - 1.0
    angle = uniform[:, 0] * math.radians(max_rotation_deg)
    scale = 1.0 + uniform[:, 1] * scale_range
    shift = uniform[:, 2:] * max_translate * 2.0  # normalised coordinates span 2
    return _warp_on_white(images, angle, scale, shift)


def _warp_on_white(
    images: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """Resample images (N, 3, H, W): output point x (normalised coordinates) reads input
    point R(angle) x / scale + shift, with angle and scale (N,) and shift (N, 2); points
    read from outside the image are white."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], dim=1), torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1
    ).to(images)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # Sample the distance to white so that padding with zeros pads with white.
    return 1.0 - F.grid_sample(1.0 - images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def turn_in_plane(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Turn each square image about its centre by its angle; uncovered pixels become white.

    images (N, 3, S, S) in [0, 1]; angles (N,) radians. A pixel at uv moves to
    `turn_pixels(uv, angles, S)`. Returns (N, 3, S, S).
    """
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] != images.shape[-2]:
        raise ShapeError(f"images: expected square (N, 3, S, S), got {tuple(images.shape)}")
    return _warp_on_white(images, angles, torch.ones_like(angles), angles.new_zeros(len(angles), 2))


def turn_pixels(uv: torch.Tensor, angles: torch.Tensor, size: int) -> torch.Tensor:
    """Where pixels uv (N, P, 2) of a size x size image land under `turn_in_plane` by
    angles (N,): the inverse of its sampling map. Returns (N, P, 2)."""
    cos, sin = torch.cos(angles).to(uv)[:, None], torch.sin(angles).to(uv)[:, None]
    x, y = (uv * (2.0 / size) - 1.0).unbind(-1)
    turned = torch.stack([cos * x + sin * y, -sin * x + cos * y], dim=-1)
    return (turned + 1.0) * (size / 2.0)


HIDDEN_BLOCK_VALUE = 0.5
"""What a hidden block of the appearance input shows: mid-grey, 0 after the encoder's
centring, and unlike the white background, so that hidden and empty stay distinguishable."""


def hide_random_blocks(
    images: torch.Tensor, generator: torch.Generator, fraction: float, blocks: int
) -> torch.Tensor:
    """Hide each cell of a blocks x blocks grid with probability `fraction` (AutoLink's
    damaged input: 80% of a 16 x 16 grid), independently per image.

    images (B, 3, H, W) in [0, 1], H and W multiples of `blocks`; the generator must live
    on the CPU and draws nothing when fraction is 0. Returns (B, 3, H, W).
    """
    if fraction == 0:  # before the check: any size passes unhidden
        return images
    if images.ndim != 4 or images.shape[-1] % blocks or images.shape[-2] % blocks:
        raise ShapeError(
            f"images: expected (B, 3, H, W) with H, W multiples of {blocks}, got {tuple(images.shape)}"
        )
    hidden = torch.rand(images.shape[0], 1, blocks, blocks, generator=generator) < fraction
    hidden = F.interpolate(hidden.to(images), size=images.shape[-2:], mode="nearest")
    return images * (1.0 - hidden) + HIDDEN_BLOCK_VALUE * hidden


def random_z_rotations(batch: int, generator: torch.Generator) -> torch.Tensor:
    """Rotations about the world's up axis (+z) by uniform angles. Returns (B, 3, 3) float64."""
    angle = torch.rand(batch, generator=generator, dtype=torch.float64) * 2.0 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack(
        [
            torch.stack([cos, -sin, zero], dim=1),
            torch.stack([sin, cos, zero], dim=1),
            torch.stack([zero, zero, one], dim=1),
        ],
        dim=1,
    )


def rotate_cameras(world_to_camera: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Cameras that see the world rotated by R exactly as the originals saw it unrotated.

    world_to_camera (B, V, 4, 4); rotation (B, 3, 3). Returns (B, V, 4, 4) = T @ [R^T 0; 0 1].
    """
    inverse = torch.eye(4, dtype=world_to_camera.dtype, device=world_to_camera.device).repeat(
        rotation.shape[0], 1, 1
    )
    inverse[:, :3, :3] = rotation.transpose(1, 2).to(world_to_camera)
    return world_to_camera @ inverse.unsqueeze(1)
