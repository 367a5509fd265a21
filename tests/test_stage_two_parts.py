"""Stage-two parts without training: config, batch order, augmentation, cameras, skeleton, losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stages.cameras import orbit_cameras
from stages.errors import ConfigError
from stages.keypoints import geometry
from stages.keypoints.augment import (
    HIDDEN_BLOCK_VALUE,
    hide_random_blocks,
    random_affine,
    random_z_rotations,
    rotate_cameras,
    turn_in_plane,
    turn_pixels,
)
from stages.keypoints.config import PRESETS, StageTwoConfig, preset
from stages.keypoints.data import batch_indices
from stages.keypoints.errors import ShapeError, TrainingError
from stages.keypoints.losses import keypoint_identity_loss, mask_loss
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
        ({"pixel_encoder": "resnet"}, "pixel_encoder"),
        ({"pixel_input_size": -1}, "pixel_input_size"),
        ({"adjacency_lr_scale": 0.0}, "adjacency_lr_scale"),
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


def test_hidden_blocks_are_whole_grey_cells_in_the_asked_share_and_nothing_is_drawn_at_zero():
    images = torch.rand(64, 3, 32, 32)
    generator = torch.Generator().manual_seed(0)
    assert hide_random_blocks(images, generator, 0.0, 16) is images
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())
    hidden = hide_random_blocks(images, generator, 0.8, 16) == HIDDEN_BLOCK_VALUE
    cells = hidden.all(dim=1).unflatten(1, (16, 2)).unflatten(3, (16, 2))  # (B, 16, 2, 16, 2)
    whole = cells.all(dim=(2, 4))
    assert torch.equal(whole, cells.any(dim=(2, 4)))  # a cell is hidden whole or not at all
    assert abs(whole.float().mean().item() - 0.8) < 0.02  # 16,384 cells
    assert not torch.equal(whole[0], whole[1])  # each image draws its own cells
    again = hide_random_blocks(images, torch.Generator().manual_seed(0), 0.8, 16)
    assert torch.equal(again, hide_random_blocks(images, torch.Generator().manual_seed(0), 0.8, 16))
    with pytest.raises(ShapeError, match="multiples of 16"):
        hide_random_blocks(torch.rand(1, 3, 24, 24), generator, 0.8, 16)


def test_a_turned_image_shows_each_pixel_where_turn_pixels_puts_it():
    size = 16
    images = torch.ones(3, 3, size, size)
    images[:, :, 4, 11] = 0.0  # one dark pixel (row 4, column 11) in each
    uv = torch.tensor([[[11.5, 4.5]]]).expand(3, 1, 2)  # its centre as (u, v)
    quarter = torch.tensor([0.0, math.pi / 2, math.pi])  # exact on the pixel grid
    turned = turn_in_plane(images, quarter)
    landed = turn_pixels(uv, quarter, size)
    for image, (u, v) in zip(turned, landed[:, 0], strict=True):
        dark = (image[0] < 0.5).nonzero().tolist()
        assert dark == [[int(v), int(u)]]  # the one dark pixel, and where it was sent
        assert image.min() == pytest.approx(0.0, abs=1e-5)
    assert landed[1, 0].tolist() != landed[0, 0].tolist()  # a quarter turn moved it
    # At any angle, the turned image read where the pixel went is the image read where it was.
    smooth = torch.linspace(0, 1, size)[None, None, :, None] * torch.linspace(0, 1, size)[None, None, None, :]
    smooth = smooth.expand(1, 3, size, size).contiguous()
    angle = torch.tensor([0.7])
    points = torch.tensor([[[6.2, 9.1], [8.0, 8.0], [10.3, 5.5]]])
    before, _ = geometry.sample_views(smooth[:, None], points[:, None], size)
    after, _ = geometry.sample_views(
        turn_in_plane(smooth, angle)[:, None], turn_pixels(points, angle, size)[:, None], size
    )
    assert torch.allclose(before, after, atol=0.02)
    # Corners turned out of the frame come back white.
    assert (
        turn_in_plane(torch.zeros(1, 3, size, size), torch.tensor([math.pi / 4]))[0, :, 0, 0].tolist()
        == [1.0] * 3
    )


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


def _one_hot_parts(parts: torch.Tensor, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (B, 1, P, size, size) whose pixel p of row 0 holds the one-hot code of part
    parts[b, p], and the pixels (B, 1, P, 2) where keypoint n of each sample sits: on part n."""
    samples, count = parts.shape
    features = torch.zeros(samples, 1, count, size, size)
    uv = torch.zeros(samples, 1, count, 2)
    for b in range(samples):
        for pixel, part in enumerate(parts[b].tolist()):
            features[b, 0, part, 0, pixel] = 1.0
            uv[b, 0, part] = torch.tensor([pixel + 0.5, 0.5])  # pixel centres
    return features, uv


def test_the_identity_term_pays_keypoints_that_stay_on_their_part_wherever_it_is():
    # Each sample puts the 4 parts on other pixels: keypoints that follow the parts match.
    parts = torch.tensor([[0, 1, 2, 3], [2, 0, 3, 1], [3, 2, 1, 0]])
    features, on_parts = _one_hot_parts(parts)
    temperature = 0.1
    matched = keypoint_identity_loss(features, on_parts, 8, temperature)
    # Per pair: the right keypoint scores 1 / T, the 3 others 0.
    assert matched.item() == pytest.approx(math.log(1 + 3 * math.exp(-1 / temperature)), abs=1e-6)
    # Keypoints at fixed pixels (n at pixel n in every sample) land on other parts in other samples.
    fixed = on_parts[:1].expand_as(on_parts).clone()
    assert keypoint_identity_loss(features, fixed, 8, temperature).item() > 4.0
    # Features that tell nothing apart: every keypoint is as likely as another.
    flat = torch.ones_like(features)
    assert keypoint_identity_loss(flat, on_parts, 8, temperature).item() == pytest.approx(math.log(4))
    # The term moves the keypoints (through the bilinear sample) and the features.
    fixed.requires_grad_(True)
    features.requires_grad_(True)
    keypoint_identity_loss(features, fixed + 0.25, 8, temperature).backward()
    assert fixed.grad.abs().sum() > 0 and features.grad.abs().sum() > 0


def test_the_deep_pixel_encoder_sees_far_beyond_the_shallow_one():
    from stages.keypoints.features import DeepPixelEncoder, PixelEncoder

    torch.manual_seed(0)
    views = torch.rand(1, 1, 3, 64, 64, requires_grad=True)
    rows, columns = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    far = (rows - 34.0) ** 2 + (columns - 34.0) ** 2 > 16.0**2
    share = {}
    for name, encoder in (("shallow", PixelEncoder(16, 16)), ("deep", DeepPixelEncoder(16, 16))):
        out = encoder(views)
        assert out.shape == (1, 1, 16, 16, 16)
        views.grad = None
        out[0, 0, :, 8, 8].sum().backward()
        # GroupNorm couples every pixel a little; what matters is how strongly the most
        # influential pixel more than 16 px away acts, against the most influential one.
        energy = views.grad[0, 0].abs().sum(dim=0)
        share[name] = float(energy[far].max() / energy.max())
    assert share["shallow"] < 0.05 and share["deep"] > 0.2, share


def test_appearance_transport_paints_each_keypoints_view0_colour_where_it_lands():
    from stages.keypoints.decoder import AppearanceTransport

    torch.manual_seed(0)
    transport = AppearanceTransport(3)
    # Make the feature layers the identity on RGB in [-1, 1]: conv -> leaky -> conv.
    with torch.no_grad():
        for conv in (transport.layers[0], transport.layers[2]):
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[:, :, 1, 1] = torch.eye(3)
    view0 = torch.ones(1, 3, 16, 16)
    view0[0, :, 2:6, 2:6] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]  # a red patch
    uv0 = torch.tensor([[[4.0, 4.0], [12.0, 12.0]]])  # keypoint 0 on red, keypoint 1 on white
    uv = torch.tensor([[[[9.5, 2.5], [2.5, 9.5]]]])  # where they land in view k (pixel centres)
    heatmaps = geometry.gaussian_heatmaps(uv, 16, 16, 1.0)
    with torch.no_grad():
        painted = transport(view0, uv0, heatmaps)
    assert painted.shape == (1, 1, 3, 16, 16)
    red_spot, white_spot = painted[0, 0, :, 2, 9], painted[0, 0, :, 9, 2]
    # 2 * (0.9, 0.1) - 1 = (0.8, -0.8) at full weight; -0.8 passes the leaky ReLU as -0.16.
    assert red_spot[0] == pytest.approx(0.8, abs=0.02) and red_spot[1] == pytest.approx(-0.16, abs=0.02)
    assert white_spot.min() > 0.9
    assert painted[0, 0, :, 14, 14].abs().max() < 1e-3  # nothing painted far from both


def test_autolink_edge_logits_get_their_own_learning_rate_and_no_decay():
    from stages.keypoints.model import KeyDiff3DModel
    from stages.keypoints.training import build_optimizer

    config = preset("cpu", feature_source="pixels", adjacency_init=-4.0, adjacency_lr_scale=512.0)
    model = KeyDiff3DModel(
        image_size=64, volume_half_extent=1.0, feature_source="pixels", num_keypoints=5, volume_size=8,
        volume_channels=(8, 16), feature_channels=16, feature_size=8, keypoint_channels=8,
        render_size=32, decoder_channels=8, adjacency_init=-4.0,
    )  # fmt: skip
    assert (
        float(model.edge_weights().detach().max()) < 0.03
    )  # softplus(-4) = 0.018: edges start nearly absent
    groups = build_optimizer(model, config).param_groups
    (edges,) = [g for g in groups if any(p is model.adjacency for p in g["params"])]
    assert len(edges["params"]) == 1 and edges["lr"] == pytest.approx(config.lr * 512.0)
    assert edges["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


SPREAD_TEST_MODEL = dict(
    image_size=64, volume_half_extent=1.0, feature_source="pixels", num_keypoints=6, volume_size=16,
    volume_channels=(8, 16), feature_channels=16, feature_size=8, keypoint_channels=8,
    render_size=32, decoder_channels=8,
)  # fmt: skip
"""A tiny KeyDiff3DModel on a 16^3 volume of half extent 1, for the spread-start tests."""


def test_spread_keypoints_start_on_their_anchors_and_the_anchors_learn():
    from stages.keypoints.model import KeyDiff3DModel, fibonacci_sphere
    from stages.keypoints.training import build_optimizer

    sizes = SPREAD_TEST_MODEL
    volume = torch.zeros(2, 8, 16, 16, 16)
    torch.manual_seed(0)  # the untrained logits' spread depends on the draw
    centred = KeyDiff3DModel(**sizes)
    spread = KeyDiff3DModel(**sizes, keypoint_spread=0.5)
    assert not hasattr(centred, "spread_anchors") or centred.spread_anchors is None
    anchors = fibonacci_sphere(6) * 0.5
    assert torch.allclose(spread.spread_anchors.detach(), anchors)
    assert torch.allclose(torch.linalg.norm(fibonacci_sphere(50), dim=-1), torch.ones(50))
    with torch.no_grad():
        start, _ = geometry.soft_argmax_3d(spread.keypoint_logits(volume), spread.voxel_centres)
        near_centre, _ = geometry.soft_argmax_3d(centred.keypoint_logits(volume), centred.voxel_centres)
    # Keypoints start near their own anchors (the prior outweighs the untrained logits), not
    # at the centre, where the paper's start puts them all.
    assert torch.linalg.norm(start[0] - anchors, dim=-1).max() < 0.15
    # (untrained logits put them 0.07-0.16 from the centre, by draw; the anchors are 0.5 out).
    assert torch.linalg.norm(near_centre[0], dim=-1).max() < 0.25
    groups = build_optimizer(spread, StageTwoConfig(feature_source="pixels")).param_groups
    assert any(p is spread.spread_anchors for p in groups[0]["params"])


def test_a_fading_spread_prior_weighs_one_at_the_start_and_nothing_after_its_steps(tmp_path):
    from stages.keypoints.checkpoint import load_model
    from stages.keypoints.model import KeyDiff3DModel

    sizes = dict(SPREAD_TEST_MODEL, keypoint_spread=0.5)
    volume = torch.zeros(1, 8, 16, 16, 16)
    held = KeyDiff3DModel(**sizes)
    fading = KeyDiff3DModel(**sizes, keypoint_spread_steps=10)
    fading.load_state_dict(held.state_dict(), strict=False)
    logits = held.volume_net(volume)
    prior = held.keypoint_logits(volume) - logits
    for step, weight in ((0, 1.0), (5, 0.5), (10, 0.0), (25, 0.0)):
        fading.fade_spread_prior(step)
        expected = logits + weight * prior
        assert torch.allclose(fading.keypoint_logits(volume), expected, atol=1e-5), step
    held.fade_spread_prior(25)  # a prior that does not fade ignores the step
    assert torch.allclose(held.keypoint_logits(volume), logits + prior)
    # The weight is saved: a checkpoint predicts with the prior it ended training under.
    fading.save_pretrained(tmp_path / "fading")
    assert float(load_model(tmp_path / "fading").spread_weight) == 0.0
    held.save_pretrained(tmp_path / "held")
    assert not hasattr(load_model(tmp_path / "held"), "spread_weight")
    with pytest.raises(ConfigError, match="keypoint_spread_steps"):
        StageTwoConfig(keypoint_spread_steps=-1)
    with pytest.raises(ConfigError, match="needs keypoint_spread > 0"):
        StageTwoConfig(keypoint_spread_steps=100)  # the paper's start has no prior to fade
    assert preset("cpu", keypoint_spread_steps=100).keypoint_spread_steps == 100
