"""Keypoint pairs, the distance from pixels to their segments, and the AutoLink edge maps.

Conventions as in `stages.keypoints.geometry` (which re-exports these functions): pixel
(row i, column j) has its centre at (u, v) = (j + 0.5, i + 0.5); E = N (N - 1) / 2 is the
number of keypoint pairs i < j, in `pair_indices` order.
"""

from __future__ import annotations

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

    The max is found without autograd, chunk by chunk over pairs; the value is then
    recomputed with autograd for the winning pair of each pixel only. Gradients are
    those of torch.max (all to the winner), but the memory kept for backward is a few
    (B, V, H, W) tensors instead of (B, V, E, H, W) ones.

    Args:
        uv: (B, V, N, 2) keypoint pixel coordinates.
        edge_weights: (N, N) non-negative weights; only the upper triangle (i < j) is read.
        height, width: H, W of the maps in pixels.
        sigma: Gaussian width in pixels.
        pairs_per_chunk: pairs evaluated at once in the search for the max (peak memory).

    Returns:
        (B, V, H, W) edge maps.
    """
    sizes: dict[str, int] = {}
    check_shape("uv", uv, ("B", "V", "N", 2), sizes)
    check_shape("edge_weights", edge_weights, ("N", "N"), sizes)
    require_positive("sigma", sigma)
    require_positive("pairs_per_chunk", pairs_per_chunk)
    u_centres, v_centres = pixel_centres(height, width, uv)
    batch, views, num_keypoints, _ = uv.shape
    pairs = pair_indices(num_keypoints, device=uv.device)
    if len(pairs) == 0:
        return uv.new_zeros(batch, views, height, width)
    pair_weights = edge_weights[pairs[:, 0], pairs[:, 1]]

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

    flat_pair = best_pair.flatten(start_dim=2)  # (B, V, H * W)
    ends = [
        torch.gather(uv, 2, pairs[flat_pair, side][..., None].expand(-1, -1, -1, 2)) for side in (0, 1)
    ]  # each (B, V, H * W, 2)
    u_grid = u_centres.repeat(height)
    v_grid = v_centres.repeat_interleave(width)
    distance_sq = _point_segment_distance_sq(u_grid, v_grid, ends[0], ends[1], min_length_sq)
    value = pair_weights[flat_pair] * torch.exp(-distance_sq / (2.0 * sigma**2))
    return value.reshape(batch, views, height, width)
