"""Pure, differentiable, batched geometry of stage two: cameras, voxels, sampling, structure maps.

Conventions match `stages.cameras` (the numpy code of stage one):
- World: +z up. Cameras are OpenCV (+x right, +y down, +z forward); `world_to_camera`
  is a 4x4 [R|t] mapping homogeneous world points to camera points.
- Pixels: continuous (u, v) = (column, row) with the image's top-left corner at (0, 0),
  so pixel (row i, column j) covers [j, j + 1) x [i, i + 1) and its centre is
  (j + 0.5, i + 0.5).
- A feature map of any size (h, w) covers the whole image, so a feature pixel spans
  W / w image pixels.

Every function checks the shapes of its tensor arguments on entry and raises
`ShapeError` naming the argument, the expected and the actual shape. P is any number
of points (voxel centres or keypoints) and E = N (N - 1) / 2 the number of keypoint pairs.
Keypoint pairs, segment distances and edge maps live in `stages.keypoints.edge_maps` and
are re-exported here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stages.keypoints.checks import check_shape, pixel_centres, require_positive
from stages.keypoints.edge_maps import edge_maps as edge_maps
from stages.keypoints.edge_maps import edge_maps_reference as edge_maps_reference
from stages.keypoints.edge_maps import pair_indices as pair_indices
from stages.keypoints.edge_maps import segment_distance_sq as segment_distance_sq
from stages.keypoints.errors import ShapeError


def project_to_views(
    points: Tensor, intrinsics: Tensor, world_to_camera: Tensor, *, min_depth: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Project world points into every view.

    Args:
        points: (B, P, 3) world coordinates.
        intrinsics: (B, V, 3, 3) pinhole intrinsics in pixels.
        world_to_camera: (B, V, 4, 4) OpenCV [R|t] matrices.
        min_depth: the perspective division uses max(depth, min_depth) so that points on
            or behind the camera plane give large but finite uv and finite gradients;
            the returned depth is not clamped, so callers can mask those points.

    Returns:
        uv: (B, V, P, 2) pixel coordinates (u = column, v = row).
        depth: (B, V, P) camera z of each point (negative behind the camera).
    """
    sizes: dict[str, int] = {}
    check_shape("points", points, ("B", "P", 3), sizes)
    check_shape("intrinsics", intrinsics, ("B", "V", 3, 3), sizes)
    check_shape("world_to_camera", world_to_camera, ("B", "V", 4, 4), sizes)
    require_positive("min_depth", min_depth)
    rotation = world_to_camera[..., :3, :3]
    translation = world_to_camera[..., :3, 3]
    camera_points = torch.einsum("bvij,bpj->bvpi", rotation, points) + translation[:, :, None, :]
    pixels = torch.einsum("bvij,bvpj->bvpi", intrinsics, camera_points)
    depth = camera_points[..., 2]
    # pixels[..., 2] equals depth for intrinsics with last row (0, 0, 1), as stage one writes them.
    uv = pixels[..., :2] / pixels[..., 2:3].clamp_min(min_depth)
    return uv, depth


def camera_centres(world_to_camera: Tensor) -> Tensor:
    """Camera positions in the world, -R^T t (assumes R is a rotation).

    Args:
        world_to_camera: (B, V, 4, 4) OpenCV [R|t] matrices.

    Returns:
        (B, V, 3) camera centres in world coordinates.
    """
    check_shape("world_to_camera", world_to_camera, ("B", "V", 4, 4), {})
    rotation = world_to_camera[..., :3, :3]
    translation = world_to_camera[..., :3, 3]
    return -torch.einsum("bvji,bvj->bvi", rotation, translation)


def mirror_cameras(intrinsics: Tensor, world_to_camera: Tensor, image_width: int) -> tuple[Tensor, Tensor]:
    """The cameras that see the world reflected in the plane x = 0 as these see the world,
    each image flipped left to right.

    A world point X becomes M X with M = diag(-1, 1, 1); the new camera is F [R|t] M with
    F = diag(-1, 1, 1) in the camera frame, so it is again a rotation (two reflections)
    and maps M X to F (R X + t): the camera point with x negated. Its pixel is then
    u' = W - u, which the principal point cx' = W - cx gives. Vertical planes keep +z up.

    Args:
        intrinsics: (B, V, 3, 3) pinhole intrinsics in pixels, no skew.
        world_to_camera: (B, V, 4, 4) OpenCV [R|t] matrices.
        image_width: W, pixels of the images the intrinsics are for.

    Returns:
        (B, V, 3, 3) intrinsics and (B, V, 4, 4) world_to_camera of the mirrored cameras.
    """
    sizes: dict[str, int] = {}
    check_shape("intrinsics", intrinsics, ("B", "V", 3, 3), sizes)
    check_shape("world_to_camera", world_to_camera, ("B", "V", 4, 4), sizes)
    mirrored_intrinsics = intrinsics.clone()
    mirrored_intrinsics[..., 0, 2] = image_width - intrinsics[..., 0, 2]
    flip = torch.ones(4, dtype=world_to_camera.dtype, device=world_to_camera.device)
    flip[0] = -1.0
    # F @ A @ M: F scales row 0 by -1, M scales column 0 by -1.
    mirrored = world_to_camera * flip[:, None] * flip[None, :]
    return mirrored_intrinsics, mirrored


def voxel_centres(
    num_per_side: int,
    half_extent: float,
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0),
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Centres of a regular M x M x M voxel grid filling [centre - half_extent, centre + half_extent]^3.

    Entry [i, j, k] is (x_i, y_j, z_k) with x_i = centre_x - half_extent + (i + 0.5) * 2 * half_extent / M,
    so the last three axes of a volume (B, C, M, M, M) are x, y, z.

    Args:
        num_per_side: M, voxels along each axis.
        half_extent: half the side of the cube, in world units.
        centre: (3,) centre of the cube in world coordinates.
        dtype, device: of the returned tensor.

    Returns:
        (M, M, M, 3) voxel centres.
    """
    if num_per_side < 1:
        raise ValueError(f"num_per_side must be >= 1, got {num_per_side}")
    require_positive("half_extent", half_extent)
    if len(centre) != 3:
        raise ShapeError(f"centre must have 3 coordinates (x, y, z), got {len(centre)}")
    step = 2.0 * half_extent / num_per_side
    offsets = (torch.arange(num_per_side, dtype=dtype, device=device) + 0.5) * step - half_extent
    axes = [offsets + c for c in centre]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def sample_views(
    features: Tensor, uv: Tensor, image_size: int | tuple[int, int], *, depth: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Bilinearly sample per-view feature maps at image pixel coordinates.

    Sampling is `grid_sample` with align_corners=False and zero padding, so a point
    within half a feature pixel outside the image still reads a fading border value;
    `inside` is the exact test to mask with.

    Args:
        features: (B, V, C, h, w) feature maps covering the whole image.
        uv: (B, V, P, 2) image pixel coordinates (u = column, v = row).
        image_size: S for a square S x S image, or (H, W).
        depth: optional (B, V, P) camera depths; points with depth <= 0 are then
            not inside and their samples are zero.

    Returns:
        sampled: (B, V, C, P) features.
        inside: (B, V, P) bool, True where 0 <= u < W and 0 <= v < H (and depth > 0).
    """
    sizes: dict[str, int] = {}
    check_shape("features", features, ("B", "V", "C", "h", "w"), sizes)
    check_shape("uv", uv, ("B", "V", "P", 2), sizes)
    if depth is not None:
        check_shape("depth", depth, ("B", "V", "P"), sizes)
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    require_positive("image height", height)
    require_positive("image width", width)
    batch, views, channels, feature_h, feature_w = features.shape
    points = uv.shape[2]
    scale = uv.new_tensor([2.0 / width, 2.0 / height])
    # Beyond +-4 every bilinear tap is in the zero padding for any feature size; clamping
    # keeps far-away (e.g. behind-camera) points from huge index arithmetic inside grid_sample.
    grid = (uv * scale - 1.0).clamp(-4.0, 4.0)
    sampled = F.grid_sample(
        features.reshape(batch * views, channels, feature_h, feature_w),
        grid.reshape(batch * views, 1, points, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    ).reshape(batch, views, channels, points)
    u, v = uv.unbind(-1)
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    if depth is not None:
        in_front = depth > 0
        inside = inside & in_front
        sampled = torch.where(in_front[:, :, None, :], sampled, torch.zeros_like(sampled))
    return sampled, inside


def aggregate_views_softmax(sampled: Tensor, logits: Tensor, inside: Tensor) -> Tensor:
    """Attention-weighted mean over views: softmax of `logits` over the views that see each point.

    A point seen by no view gets zeros, with zero (not NaN) gradient.

    Args:
        sampled: (B, V, C, P) per-view features.
        logits: (B, V, P) per-view scores.
        inside: (B, V, P) bool, which views see each point.

    Returns:
        (B, C, P) aggregated features.
    """
    sizes: dict[str, int] = {}
    check_shape("sampled", sampled, ("B", "V", "C", "P"), sizes)
    check_shape("logits", logits, ("B", "V", "P"), sizes)
    check_shape("inside", inside, ("B", "V", "P"), sizes)
    inside = inside.bool()
    # The shift only stabilises exp; softmax is invariant to it, so it needs no gradient.
    masked = torch.where(inside, logits.detach(), torch.full_like(logits, float("-inf")))
    shift = masked.amax(dim=1, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    exponent = torch.where(inside, logits - shift, torch.zeros_like(logits))
    scores = torch.exp(exponent) * inside
    total = scores.sum(dim=1, keepdim=True)
    seen = inside.any(dim=1, keepdim=True)
    weights = scores / torch.where(seen, total, torch.ones_like(total))
    return torch.einsum("bvcp,bvp->bcp", sampled, weights)


def aggregate_views_mean(sampled: Tensor, inside: Tensor) -> Tensor:
    """Mean over the views that see each point (the visibility-based ablation); zeros if none does.

    Args:
        sampled: (B, V, C, P) per-view features.
        inside: (B, V, P) bool, which views see each point.

    Returns:
        (B, C, P) aggregated features.
    """
    sizes: dict[str, int] = {}
    check_shape("sampled", sampled, ("B", "V", "C", "P"), sizes)
    check_shape("inside", inside, ("B", "V", "P"), sizes)
    weights = inside.to(sampled.dtype)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1.0)
    return torch.einsum("bvcp,bvp->bcp", sampled, weights)


def soft_argmax_3d(heatmaps: Tensor, centres: Tensor) -> tuple[Tensor, Tensor]:
    """Integral regression: the expected voxel centre under a softmax over each keypoint's volume.

    Args:
        heatmaps: (B, N, M, M, M) logits, axes x, y, z as in `voxel_centres`.
        centres: (M, M, M, 3) voxel centres.

    Returns:
        points: (B, N, 3) expected positions.
        probabilities: (B, N, M, M, M) softmax over the M^3 voxels of each keypoint.
    """
    sizes: dict[str, int] = {}
    check_shape("heatmaps", heatmaps, ("B", "N", "M", "M", "M"), sizes)
    check_shape("centres", centres, ("M", "M", "M", 3), sizes)
    flat = heatmaps.flatten(start_dim=2)
    # Subtracting the max keeps exp in range for large logits (F.softmax does the same internally).
    flat = flat - flat.amax(dim=-1, keepdim=True).detach()
    probabilities = torch.softmax(flat, dim=-1)
    points = probabilities @ centres.reshape(-1, 3)
    return points, probabilities.reshape(heatmaps.shape)


def gaussian_heatmaps(uv: Tensor, height: int, width: int, sigma: float) -> Tensor:
    """Isotropic Gaussian per keypoint, exp(-d^2 / (2 sigma^2)) with d from each pixel centre to uv.

    Args:
        uv: (B, V, N, 2) keypoint pixel coordinates.
        height, width: H, W of the maps in pixels.
        sigma: standard deviation in pixels.

    Returns:
        (B, V, N, H, W) heatmaps with peak value 1.
    """
    check_shape("uv", uv, ("B", "V", "N", 2), {})
    require_positive("sigma", sigma)
    u_centres, v_centres = pixel_centres(height, width, uv)
    # The Gaussian is separable: two 1D profiles instead of H * W distances.
    along_u = torch.exp(-((u_centres - uv[..., 0:1]) ** 2) / (2.0 * sigma**2))
    along_v = torch.exp(-((v_centres - uv[..., 1:2]) ** 2) / (2.0 * sigma**2))
    return along_v[..., :, None] * along_u[..., None, :]
