"""Stage-two parts without training: config, batch order, augmentation, cameras, skeleton, losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stages.cameras import orbit_cameras
from stages.errors import ConfigError
from stages.keypoints import geometry
from stages.keypoints.augment import random_affine, random_z_rotations, rotate_cameras
from stages.keypoints.config import PRESETS, StageTwoConfig, preset
from stages.keypoints.data import batch_indices
from stages.keypoints.errors import TrainingError
from stages.keypoints.losses import mask_loss
from stages.keypoints.skeleton import maximum_spanning_tree
from stages.keypoints.training import step_generator


def test_presets_follow_the_paper_and_round_trip_through_json():
    paper = PRESETS["paper"]
    assert (paper.volume_size, paper.num_keypoints, paper.num_views, paper.batch_size) == (72, 18, 4, 4)
    assert (paper.steps, paper.lr, paper.lr_reconstruction) == (20_000, 1e-4, 1e-3)
    assert (paper.lambda_perceptual, paper.lambda_mask, paper.aggregation) == (1.0, 0.5, "softmax")
    for config in PRESETS.values():
        assert StageTwoConfig.from_dict(config.to_dict()) == config
    assert preset("cpu", steps=7, seed=None).steps == 7


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"feature_source": "dino"}, "feature_source"),
        ({"aggregation": "max"}, "aggregation"),
        ({"num_keypoints": 1}, "num_keypoints"),
        ({"volume_size": 30, "volume_channels": (8, 16, 32, 64)}, "volume_size"),
        ({"render_size": 60}, "render_size"),
    ],
)
def test_bad_config_fields_are_named(fields, needle):
    with pytest.raises(ConfigError, match=needle):
        StageTwoConfig(**fields)


def test_unknown_preset_and_fields_are_refused():
    with pytest.raises(ConfigError, match="--preset"):
        preset("fast")
    with pytest.raises(ConfigError, match="unknown"):
        StageTwoConfig.from_dict({"num_keypoint": 3})


def test_batches_are_a_function_of_seed_and_step_and_cover_each_epoch_once():
    n, b = 22, 4
    epoch = np.concatenate([batch_indices(n, b, 3, step) for step in range(n // b)])
    assert len(set(epoch.tolist())) == len(epoch) == (n // b) * b
    assert np.array_equal(batch_indices(n, b, 3, 7), batch_indices(n, b, 3, 7))
    assert not np.array_equal(batch_indices(n, b, 3, 0), batch_indices(n, b, 4, 0))
    # The next epoch is a different permutation, not a repeat.
    assert not np.array_equal(batch_indices(n, b, 3, 0), batch_indices(n, b, 3, n // b))
    with pytest.raises(TrainingError, match="batch of 4"):
        batch_indices(3, 4, 0, 0)


def test_step_generator_depends_on_seed_and_step_only():
    draw = [torch.rand(3, generator=step_generator(s, t)) for s, t in [(0, 0), (0, 0), (0, 1), (1, 0)]]
    assert torch.equal(draw[0], draw[1])
    assert not torch.equal(draw[0], draw[2]) and not torch.equal(draw[0], draw[3])


def test_random_affine_without_ranges_is_the_identity_and_pads_with_white():
    images = torch.rand(2, 3, 16, 16)
    same = random_affine(images, torch.Generator().manual_seed(0), 0.0, 0.0, 0.0)
    assert torch.allclose(same, images, atol=1e-5)
    shifted = random_affine(torch.zeros(1, 3, 16, 16), torch.Generator().manual_seed(0), 0.0, 0.0, 0.5)
    assert shifted.max() == pytest.approx(1.0)  # uncovered pixels are white


def test_rotated_cameras_see_the_rotated_world_as_the_originals_saw_the_world():
    intrinsics, world_to_camera = orbit_cameras(np.full(4, 10.0), np.arange(4) * 90.0, 2.0, 33.8, 64)
    k = torch.from_numpy(intrinsics)[None]
    t = torch.from_numpy(world_to_camera)[None]
    points = torch.randn(1, 5, 3, dtype=torch.float64) * 0.3
    rotation = random_z_rotations(1, torch.Generator().manual_seed(1))
    uv, _ = geometry.project_to_views(points, k, t)
    uv_rotated, _ = geometry.project_to_views(
        points @ rotation.transpose(1, 2), k, rotate_cameras(t, rotation)
    )
    assert torch.allclose(uv, uv_rotated, atol=1e-9)
    assert torch.allclose(rotation[0] @ rotation[0].T, torch.eye(3, dtype=torch.float64))


def test_maximum_spanning_tree_on_a_hand_made_graph():
    w = np.zeros((4, 4))
    for i, j, value in [(0, 1, 5.0), (1, 2, 1.0), (0, 2, 4.0), (2, 3, 3.0), (1, 3, 0.5)]:
        w[i, j] = w[j, i] = value
    assert sorted(maximum_spanning_tree(w)) == [(0, 1), (0, 2), (2, 3)]
    assert len(maximum_spanning_tree(np.ones((18, 18)))) == 17
    with pytest.raises(ValueError, match="weights"):
        maximum_spanning_tree(np.ones((3, 4)))


def test_mask_loss_by_hand():
    edges = torch.zeros(1, 1, 2, 2)
    masks = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert mask_loss(edges, masks).item() == pytest.approx(0.25)
    assert mask_loss(masks, masks).item() == 0.0
    assert math.isfinite(mask_loss(edges.requires_grad_(), masks).item())
