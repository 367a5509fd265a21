"""Random bends of the lifted volume (stages/keypoints/bend.py) and the bend term."""

from __future__ import annotations

import math

import torch

from stages.keypoints import geometry
from stages.keypoints.bend import Bend, bend_sources, bend_volume, random_bends

M, HALF = 32, 1.0


def quarter_bend(angle_deg: float = 40.0) -> Bend:
    """Hinge at the origin about +z; the side x > 0 turns."""
    return Bend(
        hinge=torch.zeros(1, 3),
        normal=torch.tensor([[1.0, 0.0, 0.0]]),
        axis=torch.tensor([[0.0, 0.0, 1.0]]),
        angle=torch.tensor([math.radians(angle_deg)]),
        softness=0.05,
    )


def blob(centre: list[float]) -> torch.Tensor:
    """Logits (1, 1, M, M, M) of a Gaussian blob of 5 cm at centre."""
    centres = geometry.voxel_centres(M, HALF)
    return (-((centres - torch.tensor(centre)) ** 2).sum(-1) / (2 * 0.05**2))[None, None]


def test_the_far_side_turns_rigidly_and_the_near_side_stays():
    bend = quarter_bend()
    points = torch.tensor([[[0.5, 0.2, -0.1], [0.8, -0.3, 0.4], [-0.5, 0.2, -0.1]]])
    sources = bend_sources(points, bend)
    turn = math.radians(-40.0)
    expected = [
        [x * math.cos(turn) - y * math.sin(turn), x * math.sin(turn) + y * math.cos(turn), z]
        for x, y, z in points[0, :2].tolist()
    ]
    assert torch.allclose(sources[0, :2], torch.tensor(expected), atol=1e-4)
    # Turned rigidly: the two far points keep their distance.
    assert torch.isclose(
        (sources[0, 0] - sources[0, 1]).norm(), (points[0, 0] - points[0, 1]).norm(), atol=1e-4
    )
    assert torch.allclose(sources[0, 2], points[0, 2], atol=1e-4)


def test_a_bent_volume_carries_its_content_where_the_bend_takes_it():
    bend = quarter_bend()
    centres = geometry.voxel_centres(M, HALF)
    for where, moves in (([0.5, 0.2, -0.1], True), ([-0.5, 0.2, -0.1], False)):
        bent, sources = bend_volume(blob(where), centres, HALF, bend)
        found, _ = geometry.soft_argmax_3d(bent, centres)
        # Taken back through the bend, the blob found in the bent volume is where it was.
        assert torch.allclose(bend_sources(found, bend)[0, 0], torch.tensor(where), atol=0.01), where
        assert ((found[0, 0] - torch.tensor(where)).norm() > 0.2) == moves
        assert sources.shape == (1, M, M, M, 3)


def test_random_bends_are_well_formed_and_repeat_with_the_seed():
    hinges = torch.randn(64, 3)
    first = random_bends(hinges, torch.Generator().manual_seed(3), 45.0, 0.05)
    again = random_bends(hinges, torch.Generator().manual_seed(3), 45.0, 0.05)
    assert torch.equal(first.angle, again.angle) and torch.equal(first.normal, again.normal)
    assert torch.allclose(first.normal.norm(dim=-1), torch.ones(64))
    assert torch.allclose(first.axis.norm(dim=-1), torch.ones(64))
    assert (first.normal * first.axis).sum(-1).abs().max() < 1e-6
    assert first.angle.abs().max() <= math.radians(45.0)
    assert first.angle.min() < 0 < first.angle.max()
    assert torch.equal(first.hinge, hinges)
