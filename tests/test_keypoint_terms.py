"""Stage two's geometric terms on the keypoints: rigid partners, rigid edges, a stick
skeleton, the concentration of the voxel distributions and the coverage of the body
(all off by default)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("pybullet")

from stages.errors import ConfigError  # noqa: E402
from stages.keypoints import geometry  # noqa: E402
from stages.keypoints.checkpoint import latest_checkpoint, load_model  # noqa: E402
from stages.keypoints.config import StageTwoConfig  # noqa: E402
from stages.keypoints.losses import (  # noqa: E402
    concentration_loss,
    coverage_loss,
    rigid_edge_loss,
    rigid_partner_loss,
)
from stages.keypoints.training import FitJob, fit  # noqa: E402
from tests.fixtures.stage_two import TINY_STAGE_TWO as TINY  # noqa: E402
from tests.fixtures.synthetic_caches import render_humanoid_cache  # noqa: E402


@pytest.fixture(scope="module")
def render_cache(tmp_path_factory) -> Path:
    return render_humanoid_cache(tmp_path_factory.mktemp("terms") / "humanoid.zarr", 4, samples_per_shard=4)


def first_losses(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])


def test_the_rigid_term_is_zero_for_a_moving_rigid_constellation_and_not_for_jumping_points():
    generator = torch.Generator().manual_seed(0)
    constellation = torch.randn(6, 3, generator=generator)
    turned = []
    for angle in (0.1, 1.0, 2.0, 3.0):
        c, s = math.cos(angle), math.sin(angle)
        turn = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        turned.append(constellation @ turn.T + torch.randn(3, generator=generator))
    assert rigid_partner_loss(torch.stack(turned), 0.1) < 1e-9
    # One point that jumps between two places: every distance to it changes, the others' do not.
    jumping = torch.stack(turned).clone()
    jumping[::2, 0] += 2.0
    points = jumping.requires_grad_()
    loss = rigid_partner_loss(points, 0.1)
    loss.backward()
    assert loss > 1e-3 and points.grad[:, 0].abs().sum() > 0
    # Coincident points are nobody's partner, and their gradient stays finite.
    together = torch.zeros(4, 5, 3, requires_grad=True)
    loss = rigid_partner_loss(together, 0.1)
    loss.backward()
    assert loss == 0 and torch.isfinite(together.grad).all()
    with pytest.raises(ConfigError, match="batch_size"):
        StageTwoConfig(**{**TINY.to_dict(), "lambda_rigid": 1.0, "batch_size": 1})
    with pytest.raises(ConfigError, match="rigid_pairs"):
        StageTwoConfig(**{**TINY.to_dict(), "rigid_pairs": "all"})


def test_a_stick_skeleton_draws_only_its_segments_and_round_trips(render_cache, tmp_path):
    fields = {"steps": 1, "batch_size": 2, "skeleton": "sticks", "lambda_rigid": 1.0, "rigid_pairs": "edges"}
    config = StageTwoConfig(**{**TINY.to_dict(), **fields})
    fit(FitJob((render_cache,), tmp_path / "sticks", config))
    assert 0 < first_losses(tmp_path / "sticks")["rigid"] < 1
    model = load_model(latest_checkpoint(tmp_path / "sticks"))
    weights = model.edge_weights()
    n = config.num_keypoints
    assert weights.sum() == n and all(weights[2 * m, 2 * m + 1] == 1 for m in range(n // 2))
    with pytest.raises(ConfigError, match="num_keypoints"):
        StageTwoConfig(**{**TINY.to_dict(), "skeleton": "sticks", "num_keypoints": 5})


def test_the_concentration_term_is_the_variance_of_each_keypoints_voxel_distribution():
    centres = geometry.voxel_centres(8, 1.0)
    logits = torch.zeros(1, 2, 8, 8, 8)
    logits[0, 1, 2, 3, 4] = 50.0  # keypoint 1 on one voxel, keypoint 0 spread evenly
    points, probabilities = geometry.soft_argmax_3d(logits, centres)
    per_axis = (2.0 / 8) ** 2 * (8**2 - 1) / 12  # a uniform grid of 8 steps of 2/8
    expected = 0.5 * 3 * per_axis
    assert abs(concentration_loss(probabilities, centres, points, 1.0) - expected) < 1e-5
    assert abs(concentration_loss(probabilities, centres, points, 2.0) - expected / 4) < 1e-5


def test_the_coverage_term_measures_the_foreground_to_the_nearest_keypoint():
    masks = torch.zeros(1, 1, 8, 8)
    masks[0, 0, 2:4, 2:4] = 1.0  # one 2 x 2 block whose pooled centre is (3, 3)
    on_it = torch.tensor([[[[3.0, 3.0], [7.0, 7.0]]]])
    assert coverage_loss(on_it, masks, 2) < 1e-12
    beside = torch.tensor([[[[3.0, 5.0], [7.0, 1.0]]]], requires_grad=True)
    value = coverage_loss(beside, masks, 2)
    assert abs(value - 4.0 / 64) < 1e-6
    value.backward()
    # Only the nearest keypoint is pulled, towards the uncovered block.
    assert beside.grad[0, 0, 1].abs().sum() == 0 and beside.grad[0, 0, 0, 1] > 0
    assert coverage_loss(on_it, torch.zeros(1, 1, 8, 8), 2) == 0


def test_the_rigid_edge_term_charges_only_the_drawn_edges_and_leaves_the_weights_alone():
    generator = torch.Generator().manual_seed(1)
    points = torch.randn(4, 3, 3, generator=generator) * 0.01
    points[:, 1] += torch.tensor([1.0, 0.0, 0.0])  # 0-1 keeps its length
    points[:, 2] += torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 2.0, 0.0]])
    rigid_edge = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    loose_edge = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    points.requires_grad_()
    steady = rigid_edge_loss(points, rigid_edge, 0.1)
    assert steady < 1e-3 < rigid_edge_loss(points, loose_edge, 0.1)
    steady.backward()
    assert rigid_edge.grad is None and points.grad.abs().sum() > 0
    assert rigid_edge_loss(points, torch.zeros(3, 3), 0.1) == 0
