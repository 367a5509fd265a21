"""Random bends of the lifted volume: a smooth hinge that turns one side of a plane.

A bend moves the parts on one side of a plane rigidly about an axis in that plane, the
way a joint moves a limb. Keypoints that sit on parts follow such a warp; keypoints that
mark the volume's furthest points in fixed directions do not (after a bend, another part
is furthest that way). `bend_consistency` in the losses asks the keypoints found in a bent
volume to be the bent keypoints. (The bend moves lifted features, not re-lifted views, so
a keypoint that detects a view-based feature follows a bend as well: README, seventeenth
screening.)

The warp is defined by its sampling map G (output point -> source point), which is what
`grid_sample` needs. Consistency is checked in the unbent frame: G of the keypoints found
in the bent volume must be the keypoints found in the unbent one, which needs no inverse
of G. House letters: B batch, N keypoints, M voxels per side, P points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Bend:
    """One bend per sample; every field has leading dimension B."""

    hinge: torch.Tensor
    """(B, 3) a point on the hinge axis."""
    normal: torch.Tensor
    """(B, 3) unit normal of the plane; the side it points to turns."""
    axis: torch.Tensor
    """(B, 3) unit hinge direction, in the plane (orthogonal to normal)."""
    angle: torch.Tensor
    """(B,) radians the far side turns by."""
    softness: float
    """Width of the plane's blend, in world units (the side weight is a sigmoid of distance / softness)."""


def random_bends(
    hinges: torch.Tensor, generator: torch.Generator, max_angle_deg: float, softness: float
) -> Bend:
    """A bend per sample with a uniform random plane normal, hinge direction and angle.

    hinges (B, 3): a point on each hinge axis (for instance one of the sample's keypoints).
    The generator lives on the CPU; draws are float64 and then cast to hinges' dtype.
    """
    b = hinges.shape[0]
    draws = torch.randn(b, 2, 3, generator=generator, dtype=torch.float64)
    normal = F.normalize(draws[:, 0], dim=-1)
    across = draws[:, 1] - (draws[:, 1] * normal).sum(-1, keepdim=True) * normal
    axis = F.normalize(across, dim=-1)
    uniform = torch.rand(b, generator=generator, dtype=torch.float64) * 2.0 - 1.0
    angle = uniform * math.radians(max_angle_deg)
    cast = dict(dtype=hinges.dtype, device=hinges.device)
    return Bend(hinges, normal.to(**cast), axis.to(**cast), angle.to(**cast), softness)


def _turn(points: torch.Tensor, axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues: points (B, P, 3) turned about unit axis (B, 3) by per-point angle (B, P)."""
    a = axis[:, None, :].expand_as(points)
    cos, sin = torch.cos(angle)[..., None], torch.sin(angle)[..., None]
    along = (a * points).sum(-1, keepdim=True)
    return points * cos + torch.cross(a, points, dim=-1) * sin + a * along * (1.0 - cos)


def _side(points: torch.Tensor, bend: Bend) -> torch.Tensor:
    """Side weight (B, P) in (0, 1): 1 on the side the normal points to."""
    distance = ((points - bend.hinge[:, None]) * bend.normal[:, None]).sum(-1)
    return torch.sigmoid(distance / bend.softness)


def bend_sources(points: torch.Tensor, bend: Bend) -> torch.Tensor:
    """G: where each point (B, P, 3) of the bent volume comes from in the unbent one. (B, P, 3).

    A point at side weight s is turned back by s times the angle about the hinge, so the
    far side is turned rigidly and the near side is left in place."""
    offset = points - bend.hinge[:, None]
    return bend.hinge[:, None] + _turn(offset, bend.axis, -bend.angle[:, None] * _side(points, bend))


def bend_volume(
    volume: torch.Tensor, centres: torch.Tensor, half_extent: float, bend: Bend
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample a volume (B, C, M, M, M) (axes x, y, z, voxel centres (M, M, M, 3) of a cube
    centred on the origin) under a bend.

    Returns the bent volume (B, C, M, M, M) and the source of every voxel (B, M, M, M, 3),
    for anything else defined on the voxels (such as a prior) to be read at the same place.
    Outside the cube the volume's border values are repeated (empty space, as the border is).
    """
    b, m = volume.shape[0], volume.shape[-1]
    sources = bend_sources(centres.reshape(1, -1, 3).expand(b, -1, -1), bend).reshape(b, m, m, m, 3)
    # grid_sample's last dimension indexes (W, H, D), that is the volume's (z, y, x).
    grid = (sources / half_extent).flip(-1)
    bent = F.grid_sample(
        volume, grid.to(volume.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )
    return bent, sources
