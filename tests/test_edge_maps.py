"""The fast edge-map search against the former one (`edge_maps_reference`): values, winners, gradients."""

from __future__ import annotations

import pytest
import torch

from stages.keypoints import edge_maps as edge_maps_module
from stages.keypoints.edge_maps import edge_maps, edge_maps_reference, pair_indices, segment_distance_sq


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def all_pair_values(uv, edge_weights, height, width, sigma):
    """(B, V, E, H, W) w * exp(-d^2 / (2 sigma^2)) of every pair, in float64."""
    uv, edge_weights = uv.detach().double(), edge_weights.detach().double()
    pairs = pair_indices(uv.shape[2])
    weights = edge_weights[pairs[:, 0], pairs[:, 1]]
    return weights[:, None, None] * torch.exp(-segment_distance_sq(uv, height, width) / (2 * sigma**2))


def unambiguous_pixels(uv, edge_weights, height, width, sigma):
    """(B, V, H, W) True where the winner is clear: its value is not tiny and beats the runner-up by 1e-4."""
    values = all_pair_values(uv, edge_weights, height, width, sigma)
    top = values.topk(2, dim=2).values if values.shape[2] > 1 else torch.cat([values, 0 * values], dim=2)
    return (top[:, :, 0] > 1e-6) & (top[:, :, 0] - top[:, :, 1] > 1e-4 * top[:, :, 0])


def random_case(batch, views, keypoints, *, low, high, dtype, seed):
    """Keypoints uniform in [low, high) (0 and 1 at the same spot), weights in [0, 2), some 0."""
    uv = low + (high - low) * torch.rand(batch, views, keypoints, 2, dtype=dtype, generator=generator(seed))
    if keypoints > 2:
        uv[:, :, 1] = uv[:, :, 0]
    weights = 2 * torch.rand(keypoints, keypoints, dtype=dtype, generator=generator(seed + 1))
    weights[torch.rand(keypoints, keypoints, generator=generator(seed + 2)) < 0.2] = 0.0
    return uv.requires_grad_(), weights.requires_grad_()


CASES = {
    # name: (B, V, N, H, W, sigma, keypoint range, pairs_per_chunk)
    "one pair": (1, 1, 2, 5, 7, 0.7, (0, 7), 16),
    "small": (2, 3, 6, 16, 12, 2.0, (0, 16), 4),
    "outside the image": (1, 2, 9, 20, 33, 3.0, (-15, 48), 5),
    "narrow and wide": (2, 1, 7, 9, 40, 0.5, (-3, 42), 1000),
    "cpu preset": (4, 4, 18, 64, 64, 1.0, (0, 64), 16),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_edge_maps_agree_with_the_reference_in_value_and_gradient(name, dtype):
    batch, views, keypoints, height, width, sigma, (low, high), chunk = CASES[name]
    uv, weights = random_case(batch, views, keypoints, low=low, high=high, dtype=dtype, seed=7)
    maps = edge_maps(uv, weights, height, width, sigma, pairs_per_chunk=chunk)
    expected = edge_maps_reference(uv, weights, height, width, sigma, pairs_per_chunk=chunk)
    clear = unambiguous_pixels(uv, weights, height, width, sigma)
    assert clear.float().mean() > 0.1  # the case exercises real winners, not only ties and far pixels
    # The same winner gives the very same value; elsewhere the maps differ by rounding at most.
    assert torch.equal(maps[clear], expected[clear])
    assert (maps - expected).abs().max() <= 1e-6
    probe = torch.rand(maps.shape, dtype=dtype, generator=generator(3)) * clear
    grads = torch.autograd.grad((maps * probe).sum(), (uv, weights))
    expected_grads = torch.autograd.grad((expected * probe).sum(), (uv, weights))
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert torch.allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block_elements", [40, 1000, 2**17])
def test_every_search_block_shape_finds_the_same_winners(monkeypatch, block_elements):
    """Blocks of part of an image, of one image and of several images tile the batch alike."""
    uv, weights = random_case(3, 2, 7, low=0, high=13, dtype=torch.float64, seed=11)
    monkeypatch.setattr(edge_maps_module, "_CPU_SEARCH_BLOCK_ELEMENTS", block_elements)
    maps = edge_maps(uv, weights, 13, 11, 1.5, pairs_per_chunk=6)
    assert torch.allclose(maps, edge_maps_reference(uv, weights, 13, 11, 1.5), rtol=0, atol=1e-12)


def test_all_zero_weights_send_the_weight_gradient_to_the_first_pair_as_before():
    uv = torch.rand(2, 2, 4, 2, dtype=torch.float64, generator=generator(5)) * 8
    weights = torch.zeros(4, 4, dtype=torch.float64, requires_grad=True)
    maps = edge_maps(uv, weights, 8, 8, 1.0, pairs_per_chunk=2)
    assert torch.equal(maps, torch.zeros_like(maps))
    (grad,) = torch.autograd.grad(maps.sum(), weights)
    (expected,) = torch.autograd.grad(edge_maps_reference(uv, weights, 8, 8, 1.0).sum(), weights)
    assert grad[0, 1] > 0 and torch.equal(grad, expected)


def test_far_from_every_segment_the_winner_is_the_nearest_pair_even_where_values_underflow():
    # Two far short segments: at pixel (0, 0) both values underflow to 0 in float32, but the
    # second pair (keypoints 2, 3) is nearer, so the log-domain search picks it (the old one took pair 0).
    uv = torch.tensor([[[[60.0, 60.0], [61.0, 60.0], [30.0, 30.0], [31.0, 30.0]]]])
    weights = torch.zeros(4, 4)
    weights[0, 1] = weights[2, 3] = 1.0
    pairs = pair_indices(4)
    pair_weights = weights[pairs[:, 0], pairs[:, 1]]
    winners = edge_maps_module._winning_pairs(uv, pair_weights, pairs, 64, 64, 0.5, 16, 1e-8)
    assert edge_maps(uv, weights, 64, 64, 0.5)[0, 0, 0, 0] == 0.0
    assert pairs[winners[0, 0, 0, 0]].tolist() == [2, 3]
    assert pairs[winners[0, 0, 63, 63]].tolist() == [0, 1]


def test_edge_maps_reject_negative_weights():
    weights = torch.ones(3, 3)
    weights[0, 2] = -0.1
    with pytest.raises(ValueError, match="edge_weights"):
        edge_maps(torch.zeros(1, 1, 3, 2), weights, 4, 4, 1.0)
    weights[0, 2], weights[2, 0] = 0.5, -1.0  # the lower triangle is never read
    edge_maps(torch.zeros(1, 1, 3, 2), weights, 4, 4, 1.0)
