"""Keypoint pairs, the distance from pixels to their segments, and the AutoLink edge maps.

Conventions as in `stages.keypoints.geometry` (which re-exports these functions): pixel
(row i, column j) has its centre at (u, v) = (j + 0.5, i + 0.5); E = N (N - 1) / 2 is the
number of keypoint pairs i < j, in `pair_indices` order.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from stages.keypoints.checks import check_shape, pixel_centres, require_positive


def pair_indices(num_keypoints: int, *, device: torch.device | str | None = None) -> Tensor:
    """All keypoint pairs (i, j) with i < j in row-major order: (0, 1), (0, 2), ..., (1, 2), ...

    Returns:
        (E, 2) long tensor, E = N (N - 1) / 2.
    """
    if num_keypoints < 1:
        raise ValueError(f"num_keypoints must be >= 1, got {num_keypoints}")
    return torch.triu_indices(num_keypoints, num_keypoints, offset=1, device=device).T.contiguous()


def _point_segment_distance_sq(
    u: Tensor, v: Tensor, start: Tensor, end: Tensor, min_length_sq: float
) -> Tensor:
    """Squared distance from points (u, v) to segments start-end; all arguments broadcast.

    start, end: (..., 2). Segments shorter than sqrt(min_length_sq) count as the point
    `start`, which keeps the projection parameter (a division by the squared length)
    and its gradient finite.
    """
    to_u = u - start[..., 0]
    to_v = v - start[..., 1]
    along_u = end[..., 0] - start[..., 0]
    along_v = end[..., 1] - start[..., 1]
    length_sq = along_u**2 + along_v**2
    long_enough = length_sq > min_length_sq
    fraction = (to_u * along_u + to_v * along_v) / torch.where(
        long_enough, length_sq, torch.ones_like(length_sq)
    )
    fraction = torch.where(long_enough, fraction.clamp(0.0, 1.0), torch.zeros_like(fraction))
    return (to_u - fraction * along_u) ** 2 + (to_v - fraction * along_v) ** 2


def segment_distance_sq(uv: Tensor, height: int, width: int, *, min_length_sq: float = 1e-8) -> Tensor:
    """Squared distance from every pixel centre to the segment of each keypoint pair.

    Pairs are in `pair_indices(N)` order. The projection onto a segment is clamped to
    its end points; a segment shorter than sqrt(min_length_sq) pixels is treated as
    its first end point, so a zero-length segment gives the point distance.

    Args:
        uv: (B, V, N, 2) keypoint pixel coordinates.
        height, width: H, W of the maps in pixels.

    Returns:
        (B, V, E, H, W) squared distances in pixels^2.
    """
    check_shape("uv", uv, ("B", "V", "N", 2), {})
    u_centres, v_centres = pixel_centres(height, width, uv)
    pairs = pair_indices(uv.shape[2], device=uv.device)
    start = uv[:, :, pairs[:, 0], None, None, :]
    end = uv[:, :, pairs[:, 1], None, None, :]
    return _point_segment_distance_sq(u_centres, v_centres[:, None], start, end, min_length_sq)


# A search block of the CPU path holds two (pairs, pixels) planes of this many elements each:
# 1 MiB in float32, so the dozen passes over a block stay in a core's L2 cache.
_CPU_SEARCH_BLOCK_ELEMENTS = 2**17


def edge_maps(
    uv: Tensor,
    edge_weights: Tensor,
    height: int,
    width: int,
    sigma: float,
    *,
    pairs_per_chunk: int = 16,
    min_length_sq: float = 1e-8,
) -> Tensor:
    """AutoLink edge map: per pixel, the max over pairs i < j of w_ij * exp(-d_ij^2 / (2 sigma^2)).

    The winning pair of each pixel is found without autograd (`_winning_pairs`); the value is
    then computed with autograd for that pair only. Gradients are those of torch.max (all to
    the winner), but the memory kept for backward is a few (B, V, H, W) tensors instead of
    (B, V, E, H, W) ones. The winner is the pair with the least d^2 / (2 sigma^2) - log w, so
    where every value underflows to zero it is still the largest pair in exact arithmetic
    (`edge_maps_reference` then falls back to pair order); values agree to rounding.

    Args:
        uv: (B, V, N, 2) keypoint pixel coordinates.
        edge_weights: (N, N) non-negative weights; only the upper triangle (i < j) is read.
        height, width: H, W of the maps in pixels.
        sigma: Gaussian width in pixels.
        pairs_per_chunk: pairs evaluated at once in the search for the max (peak memory).

    Returns:
        (B, V, H, W) edge maps.
    """
    pairs, pair_weights = _checked_pairs(uv, edge_weights, sigma, pairs_per_chunk)
    if len(pairs) == 0:
        return uv.new_zeros(*uv.shape[:2], height, width)
    with torch.no_grad():
        if (pair_weights < 0).any():
            raise ValueError("edge_weights must be >= 0 above the diagonal (the search compares log w)")
        winners = _winning_pairs(
            uv, pair_weights, pairs, height, width, sigma, pairs_per_chunk, min_length_sq
        )
    return _winner_values(uv, pair_weights, pairs, winners, height, width, sigma, min_length_sq)


def _checked_pairs(
    uv: Tensor, edge_weights: Tensor, sigma: float, pairs_per_chunk: int
) -> tuple[Tensor, Tensor]:
    """Check the edge-map arguments; the pairs (E, 2) and their weights (E,)."""
    sizes: dict[str, int] = {}
    check_shape("uv", uv, ("B", "V", "N", 2), sizes)
    check_shape("edge_weights", edge_weights, ("N", "N"), sizes)
    require_positive("sigma", sigma)
    require_positive("pairs_per_chunk", pairs_per_chunk)
    pairs = pair_indices(uv.shape[2], device=uv.device)
    return pairs, edge_weights[pairs[:, 0], pairs[:, 1]]


def _winning_pairs(
    uv: Tensor,
    pair_weights: Tensor,
    pairs: Tensor,
    height: int,
    width: int,
    sigma: float,
    pairs_per_chunk: int,
    min_length_sq: float,
) -> Tensor:
    """(B, V, H, W) index into `pairs` of the least score d^2 / (2 sigma^2) - log w per pixel, first on ties.

    In a frame scaled by 1 / (sqrt(2) sigma) with its origin at a segment's midpoint, a pixel's
    coordinate along the segment `a` and across it `c` are affine in the pixel (u, v), so one
    matmul gives both for a block of pairs and pixels; the score is then
    max(|a| - half length, 0)^2 + c^2 - log w, a handful of in-place passes. Comparing scores
    instead of values needs no exp per pair and does not underflow far from every segment.

    Args:
        uv: (B, V, N, 2) keypoint pixel coordinates.
        pair_weights: (E,) weight of each pair of `pairs`, >= 0 (zero gives the score +inf).
        pairs: (E, 2) from `pair_indices(N)`, E >= 1.
    """
    batch, views = uv.shape[:2]
    images, num_pairs, num_pixels = batch * views, len(pairs), height * width
    scale = 1.0 / (math.sqrt(2.0) * sigma)
    keypoints = uv.reshape(images, -1, 2)
    start = keypoints[:, pairs[:, 0]]  # (B * V, E, 2)
    along = keypoints[:, pairs[:, 1]] - start
    length_sq = along.square().sum(-1)
    # As in _point_segment_distance_sq, a too short segment is its start point: no direction, length 0.
    long_enough = length_sq > min_length_sq
    length = torch.where(long_enough, length_sq, torch.ones_like(length_sq)).sqrt()
    direction = torch.where(long_enough[..., None], along / length[..., None], uv.new_tensor([1.0, 0.0]))
    half_length = torch.where(long_enough, length, torch.zeros_like(length)) * (0.5 * scale)
    middle = start + 0.5 * torch.where(long_enough[..., None], along, torch.zeros_like(along))
    normal = torch.stack([-direction[..., 1], direction[..., 0]], dim=-1)
    axes = torch.stack([direction, normal], dim=2) * scale  # (B * V, E, 2, 2): along, across
    offsets = -(axes * middle[:, :, None, :]).sum(-1, keepdim=True)
    coefficients = torch.cat([axes, offsets], dim=-1).flatten(1, 2)  # (B * V, 2 * E, 3) rows a, c, a, c, ...
    u_centres, v_centres = pixel_centres(height, width, uv)
    pixels = torch.stack(
        [
            u_centres.repeat(height),
            v_centres.repeat_interleave(width),
            torch.ones_like(u_centres).repeat(height),
        ]
    )  # (3, H * W)
    neg_log_weight = -pair_weights.log()
    order = torch.arange(num_pairs, dtype=uv.dtype, device=uv.device)

    # A block is (images, pairs, pixels). On the CPU it fits the cache; elsewhere it is the
    # whole batch, so a chunk of pairs is a few large kernels as in edge_maps_reference.
    chunk = min(pairs_per_chunk, num_pairs)
    block = _CPU_SEARCH_BLOCK_ELEMENTS if uv.device.type == "cpu" else chunk * images * num_pixels
    block_pixels = max(1, min(num_pixels, block // chunk))
    block_images = max(1, block // (chunk * num_pixels))
    winners = uv.new_empty(images, num_pixels)
    for first_image in range(0, images, block_images):
        image_slice = slice(first_image, first_image + block_images)
        for first_pixel in range(0, num_pixels, block_pixels):
            pixel_slice = slice(first_pixel, first_pixel + block_pixels)
            for first_pair in range(0, num_pairs, chunk):
                pair_slice = slice(first_pair, first_pair + chunk)
                rows = coefficients[image_slice, 2 * first_pair : 2 * (first_pair + chunk)]
                frame = (rows @ pixels[:, pixel_slice]).unflatten(1, (-1, 2))  # (images, chunk, 2, pixels)
                score, across = frame.unbind(2)
                score.abs_().sub_(half_length[image_slice, pair_slice, None]).clamp_min_(0.0).square_()
                score.addcmul_(across, across).add_(neg_log_weight[pair_slice, None])
                chunk_best = score.amin(dim=1)
                # The first pair reaching the least score: pairs above it get + E, then the least index.
                key = score.gt_(chunk_best[:, None]).mul_(num_pairs).add_(order[pair_slice, None])
                chunk_winner = key.amin(dim=1)
                if first_pair == 0:
                    best, winner = chunk_best, chunk_winner
                else:
                    better = chunk_best < best  # strict: an earlier chunk keeps a tie
                    best = torch.where(better, chunk_best, best)
                    winner = torch.where(better, chunk_winner, winner)
            winners[image_slice, pixel_slice] = winner
    return winners.long().reshape(batch, views, height, width)


def _winner_values(
    uv: Tensor,
    pair_weights: Tensor,
    pairs: Tensor,
    winners: Tensor,
    height: int,
    width: int,
    sigma: float,
    min_length_sq: float,
) -> Tensor:
    """(B, V, H, W) w * exp(-d^2 / (2 sigma^2)) of each pixel's winning pair, with autograd.

    Args:
        winners: (B, V, H, W) index into `pairs` of each pixel's pair.
    """
    batch, views = uv.shape[:2]
    u_centres, v_centres = pixel_centres(height, width, uv)
    flat_pair = winners.flatten(start_dim=2)  # (B, V, H * W)
    ends = [
        torch.gather(uv, 2, pairs[flat_pair, side][..., None].expand(-1, -1, -1, 2)) for side in (0, 1)
    ]  # each (B, V, H * W, 2)
    u_grid = u_centres.repeat(height)
    v_grid = v_centres.repeat_interleave(width)
    distance_sq = _point_segment_distance_sq(u_grid, v_grid, ends[0], ends[1], min_length_sq)
    value = _winner_weights(pair_weights, flat_pair) * torch.exp(-distance_sq / (2.0 * sigma**2))
    return value.reshape(batch, views, height, width)


def _winner_weights(pair_weights: Tensor, flat_pair: Tensor) -> Tensor:
    """pair_weights[flat_pair], with a backward that sums in the same order on every run.

    The backward of `pair_weights[flat_pair]` on the CPU is index_put_(accumulate=True), which
    splits the pixels over the intra-op threads and adds them with atomics: with 2 threads the
    edge logits' gradient changed in its last bits from run to run and training diverged from
    step ~10 (issue 13, item 14). gather's backward on a 1-D tensor is a serial scatter_add, in
    pixel order whatever the thread count (and faster: 1 ms against 24 ms at the cpu preset).
    On CUDA it is the other way round: gather's backward uses atomics, indexing's sorts."""
    if pair_weights.device.type != "cpu":
        return pair_weights[flat_pair]
    return pair_weights.gather(0, flat_pair.reshape(-1)).view(flat_pair.shape)


def edge_maps_reference(
    uv: Tensor,
    edge_weights: Tensor,
    height: int,
    width: int,
    sigma: float,
    *,
    pairs_per_chunk: int = 16,
    min_length_sq: float = 1e-8,
) -> Tensor:
    """The former `edge_maps`, kept for tests and benchmarks to compare with: same arguments and result.

    The max is searched over values w * exp(...), chunk by chunk over pairs, each chunk a
    (B, V, pairs_per_chunk, H, W) tensor; ties (also between underflowed zeros) go to the
    first pair. The value is then recomputed with autograd for the winning pair only.
    """
    pairs, pair_weights = _checked_pairs(uv, edge_weights, sigma, pairs_per_chunk)
    u_centres, v_centres = pixel_centres(height, width, uv)
    batch, views = uv.shape[:2]
    if len(pairs) == 0:
        return uv.new_zeros(batch, views, height, width)

    with torch.no_grad():
        best_value = uv.new_full((batch, views, height, width), float("-inf"))
        best_pair = torch.zeros(batch, views, height, width, dtype=torch.long, device=uv.device)
        for first in range(0, len(pairs), pairs_per_chunk):
            chunk = pairs[first : first + pairs_per_chunk]
            start = uv[:, :, chunk[:, 0], None, None, :]
            end = uv[:, :, chunk[:, 1], None, None, :]
            distance_sq = _point_segment_distance_sq(u_centres, v_centres[:, None], start, end, min_length_sq)
            weights = pair_weights[first : first + len(chunk), None, None]
            values = weights * torch.exp(-distance_sq / (2.0 * sigma**2))  # (B, V, chunk, H, W)
            chunk_value, chunk_index = values.max(dim=2)
            better = chunk_value > best_value
            best_value = torch.where(better, chunk_value, best_value)
            best_pair = torch.where(better, chunk_index + first, best_pair)

    return _winner_values(uv, pair_weights, pairs, best_pair, height, width, sigma, min_length_sq)
