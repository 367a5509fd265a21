"""Stage-two geometry: shapes, bad input, hand-computed cases, gradcheck, and agreement with stage one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stages.cameras import orbit_camera_centers, orbit_cameras, project_points
from stages.keypoints.errors import ShapeError
from stages.keypoints.geometry import (
    aggregate_views_mean,
    aggregate_views_softmax,
    camera_centres,
    edge_maps,
    gaussian_heatmaps,
    mirror_cameras,
    pair_indices,
    project_to_views,
    sample_views,
    segment_distance_sq,
    soft_argmax_3d,
    voxel_centres,
)

F64 = torch.float64


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def camera_on_minus_y(dtype=torch.float32):
    """A camera at (0, -2, 0) looking at the origin, +z up; focal 100, principal point (32, 32)."""
    intrinsics = torch.tensor([[100.0, 0, 32], [0, 100, 32], [0, 0, 1]], dtype=dtype)
    # Camera axes in world rows: right = +x, down = -z, forward = +y; t = -R c.
    world_to_camera = torch.tensor(
        [[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 2], [0, 0, 0, 1]],
        dtype=dtype,
    )
    return intrinsics[None, None], world_to_camera[None, None]


def orbit_batch(azimuths, image_size, dtype=F64):
    intrinsics, world_to_camera = orbit_cameras(
        np.full(len(azimuths), 10.0), np.array(azimuths), 2.0, 33.8, image_size
    )
    return torch.tensor(intrinsics, dtype=dtype)[None], torch.tensor(world_to_camera, dtype=dtype)[None]


# project_to_views


def test_project_to_views_shapes():
    points = torch.zeros(2, 5, 3)
    intrinsics, world_to_camera = camera_on_minus_y()
    uv, depth = project_to_views(points, intrinsics.expand(2, 3, 3, 3), world_to_camera.expand(2, 3, 4, 4))
    assert uv.shape == (2, 3, 5, 2) and depth.shape == (2, 3, 5)


@pytest.mark.parametrize(
    ("name", "points", "intrinsics", "world_to_camera"),
    [
        ("points", (2, 5, 4), (2, 3, 3, 3), (2, 3, 4, 4)),
        ("intrinsics", (2, 5, 3), (2, 3, 4, 4), (2, 3, 4, 4)),
        ("world_to_camera", (2, 5, 3), (2, 3, 3, 3), (2, 4, 4, 4)),
        ("intrinsics", (2, 5, 3), (1, 3, 3, 3), (2, 3, 4, 4)),
    ],
)
def test_project_to_views_bad_shapes_name_the_argument(name, points, intrinsics, world_to_camera):
    with pytest.raises(ShapeError, match=name):
        project_to_views(torch.zeros(points), torch.zeros(intrinsics), torch.zeros(world_to_camera))


def test_project_to_views_by_hand():
    intrinsics, world_to_camera = camera_on_minus_y()
    points = torch.tensor([[[0.0, 0, 0], [0.1, 0, 0.2], [0, 1, 0]]])
    uv, depth = project_to_views(points, intrinsics, world_to_camera)
    # Origin on the optical axis at depth 2; +x is right, +z is up (smaller v); +y moves away.
    expected_uv = torch.tensor([[32.0, 32.0], [37.0, 22.0], [32.0, 32.0]])
    assert torch.allclose(uv[0, 0], expected_uv)
    assert torch.allclose(depth[0, 0], torch.tensor([2.0, 2.0, 3.0]))


def test_project_to_views_agrees_with_stage_one_numpy():
    azimuths = [0.0, 90.0, 180.0, 270.0]
    points = np.random.default_rng(0).uniform(-0.5, 0.5, size=(7, 3))
    intrinsics, world_to_camera = orbit_batch(azimuths, 64)
    uv, depth = project_to_views(torch.tensor(points)[None], intrinsics, world_to_camera)
    expected_uv, expected_depth = project_points(points, intrinsics[0].numpy(), world_to_camera[0].numpy())
    np.testing.assert_allclose(uv[0].numpy(), expected_uv, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(depth[0].numpy(), expected_depth, rtol=1e-10, atol=1e-12)


def test_project_to_views_gradients_stay_finite_on_and_behind_the_camera_plane():
    intrinsics, world_to_camera = camera_on_minus_y()
    # Depth 0 (on the camera plane) and depth -1 (behind the camera).
    points = torch.tensor([[[0.3, -2.0, 0.1], [0.3, -3.0, 0.1]]], requires_grad=True)
    uv, depth = project_to_views(points, intrinsics, world_to_camera)
    assert torch.isfinite(uv).all() and torch.allclose(depth[0, 0], torch.tensor([0.0, -1.0]))
    uv.sum().backward()
    assert torch.isfinite(points.grad).all()


def test_project_to_views_gradcheck():
    intrinsics, world_to_camera = orbit_batch([0.0, 120.0], 32)
    points = torch.rand(1, 3, 3, dtype=F64, generator=generator()) - 0.5
    inputs = (points.requires_grad_(), intrinsics.requires_grad_(), world_to_camera.requires_grad_())
    assert torch.autograd.gradcheck(lambda *args: project_to_views(*args), inputs)


# camera_centres


def test_camera_centres_by_hand_and_on_the_orbit():
    _, world_to_camera = camera_on_minus_y()
    assert torch.allclose(camera_centres(world_to_camera), torch.tensor([[[0.0, -2.0, 0.0]]]))
    azimuths = [0.0, 45.0, 200.0]
    _, orbit = orbit_batch(azimuths, 32)
    expected = orbit_camera_centers(np.full(3, 10.0), np.array(azimuths), 2.0)
    np.testing.assert_allclose(camera_centres(orbit)[0].numpy(), expected, atol=1e-12)


def test_camera_centres_bad_shape_and_gradcheck():
    with pytest.raises(ShapeError, match="world_to_camera"):
        camera_centres(torch.zeros(2, 4, 4))
    _, orbit = orbit_batch([0.0, 45.0], 32)
    assert torch.autograd.gradcheck(camera_centres, (orbit.requires_grad_(),))


# mirror_cameras


def test_mirror_cameras_see_the_mirrored_world_as_the_flipped_image():
    intrinsics, world_to_camera = orbit_batch([10.0, 100.0, 250.0], 48)
    intrinsics = intrinsics.clone()
    intrinsics[..., 0, 2] += 3.0  # an off-centre principal point, which the flip moves
    points = torch.randn(1, 7, 3, generator=generator(), dtype=F64) * 0.4
    uv, depth = project_to_views(points, intrinsics, world_to_camera)
    mirrored_intrinsics, mirrored = mirror_cameras(intrinsics, world_to_camera, 48)
    reflected = points * torch.tensor([-1.0, 1.0, 1.0], dtype=F64)
    uv_mirrored, depth_mirrored = project_to_views(reflected, mirrored_intrinsics, mirrored)
    torch.testing.assert_close(uv_mirrored[..., 0], 48.0 - uv[..., 0])
    torch.testing.assert_close(uv_mirrored[..., 1], uv[..., 1])
    torch.testing.assert_close(depth_mirrored, depth)
    rotations = mirrored[..., :3, :3]
    torch.testing.assert_close(torch.linalg.det(rotations), torch.ones(1, 3, dtype=F64))
    # +z stays up: the camera's "down" axis has the same world z as before.
    torch.testing.assert_close(rotations[..., 1, 2], world_to_camera[..., 1, 2])
    with pytest.raises(ShapeError, match="world_to_camera"):
        mirror_cameras(intrinsics, world_to_camera[:, :2], 48)


# voxel_centres


def test_voxel_centres_by_hand():
    centres = voxel_centres(2, 1.0, (1.0, 2.0, 3.0), dtype=F64)
    assert centres.shape == (2, 2, 2, 3) and centres.dtype == F64
    assert centres[0, 0, 0].tolist() == [0.5, 1.5, 2.5]
    assert centres[1, 0, 1].tolist() == [1.5, 1.5, 3.5]
    grid = voxel_centres(4, 0.5)
    assert grid.dtype == torch.float32
    # Axis i varies x only; the cube [-0.5, 0.5]^3 is filled by cells of side 0.25.
    assert torch.allclose(grid[:, 0, 0, 0], torch.tensor([-0.375, -0.125, 0.125, 0.375]))
    assert torch.all(grid[:, 0, 0, 1:] == grid[0, 0, 0, 1:])


@pytest.mark.parametrize(("args", "error"), [((0, 1.0), ValueError), ((3, 0.0), ValueError)])
def test_voxel_centres_bad_arguments(args, error):
    with pytest.raises(error):
        voxel_centres(*args)
    with pytest.raises(ShapeError, match="centre"):
        voxel_centres(2, 1.0, (0.0, 0.0))


# sample_views


def test_sample_views_shapes_and_bad_input():
    sampled, inside = sample_views(torch.zeros(2, 3, 4, 8, 8), torch.zeros(2, 3, 5, 2), 16)
    assert sampled.shape == (2, 3, 4, 5) and inside.shape == (2, 3, 5) and inside.dtype == torch.bool
    with pytest.raises(ShapeError, match="uv"):
        sample_views(torch.zeros(2, 3, 4, 8, 8), torch.zeros(2, 2, 5, 2), 16)
    with pytest.raises(ShapeError, match="features"):
        sample_views(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 5, 2), 16)
    with pytest.raises(ShapeError, match="depth"):
        sample_views(torch.zeros(2, 3, 4, 8, 8), torch.zeros(2, 3, 5, 2), 16, depth=torch.zeros(2, 3, 4))


def test_sample_views_reads_a_painted_pixel_at_its_centre():
    features = torch.zeros(1, 1, 2, 16, 16)
    features[0, 0, 0, 5, 9] = 7.0
    features[0, 0, 1, 5, 10] = 3.0
    sampled, inside = sample_views(features, torch.tensor([[[[9.5, 5.5], [10.0, 5.5]]]]), 16)
    assert sampled[0, 0, 0].tolist() == [7.0, 3.5]  # centre of (5, 9); half-way to (5, 10)
    assert sampled[0, 0, 1].tolist() == [0.0, 1.5]
    assert inside.all()


def test_sample_views_inside_and_depth():
    uv = torch.tensor([[[[-0.1, 4.0], [0.0, 4.0], [15.99, 4.0], [16.0, 4.0], [4.0, 16.0], [4.0, 4.0]]]])
    features = torch.ones(1, 1, 1, 8, 8)
    sampled, inside = sample_views(features, uv, 16)
    assert inside[0, 0].tolist() == [False, True, True, False, False, True]
    # Zero padding: on the image border, half of the bilinear weight falls outside.
    assert sampled[0, 0, 0].tolist() == pytest.approx([0.45, 0.5, 0.505, 0.5, 0.5, 1.0])
    depth = torch.tensor([[[1.0, 1.0, 1.0, 1.0, 1.0, -0.5]]])
    sampled, inside = sample_views(features, uv, 16, depth=depth)
    assert inside[0, 0].tolist() == [False, True, True, False, False, False]
    assert sampled[0, 0, 0, 5] == 0.0 and sampled[0, 0, 0, 1] == 0.5


def test_sample_views_non_square_image():
    # A 2 x 4 feature map over an 8 (H) x 16 (W) image: cell (1, 3) covers u in [12, 16), v in [4, 8).
    features = torch.zeros(1, 1, 1, 2, 4)
    features[..., 1, 3] = 1.0
    sampled, inside = sample_views(features, torch.tensor([[[[14.0, 6.0], [14.0, 9.0]]]]), (8, 16))
    assert sampled[0, 0, 0, 0] == 1.0 and inside[0, 0].tolist() == [True, False]


@pytest.mark.parametrize("downsample", [1, 2])
def test_sample_views_at_projected_points_reads_the_painted_cell(downsample):
    """Project with stage-one cameras; the feature map (full or half resolution) holds what we painted."""
    image_size = 32
    cells = image_size // downsample
    points = np.array([[0.0, 0.0, 0.0], [0.2, -0.1, 0.15], [-0.25, 0.2, -0.1]])
    intrinsics, world_to_camera = orbit_cameras(
        np.full(2, 10.0), np.array([0.0, 90.0]), 2.0, 33.8, image_size
    )
    expected_uv, _ = project_points(points, intrinsics, world_to_camera)
    uv, depth = project_to_views(
        torch.tensor(points, dtype=F64)[None],
        torch.tensor(intrinsics)[None],
        torch.tensor(world_to_camera)[None],
    )
    # Channels 0 and 1 hold each cell's centre in image pixels (bilinear sampling of a linear
    # function is exact), channel 2 is 1 on the 3 x 3 cells around the cell under each point.
    centres = (torch.arange(cells, dtype=F64) + 0.5) * downsample
    features = torch.zeros(1, 2, 3 + len(points), cells, cells, dtype=F64)
    features[:, :, 0] = centres[None, :]
    features[:, :, 1] = centres[:, None]
    for view in range(2):
        for index, (u, v) in enumerate(expected_uv[view]):
            column, row = int(u // downsample), int(v // downsample)
            features[0, view, 3 + index, row - 1 : row + 2, column - 1 : column + 2] = 1.0
    sampled, inside = sample_views(features, uv, image_size, depth=depth)
    assert inside.all()
    np.testing.assert_allclose(sampled[0, :, :2].transpose(1, 2).numpy(), expected_uv, atol=1e-9)
    for index in range(len(points)):
        assert torch.all(sampled[0, :, 3 + index, index] == 1.0)


def test_sample_views_gradcheck():
    features = torch.rand(1, 2, 2, 4, 4, dtype=F64, generator=generator())
    # Generic positions: bilinear sampling has kinks on the lines through feature pixel centres.
    uv = torch.tensor(
        [[[[1.3, 2.9], [6.2, 0.7], [3.1, 5.3]], [[0.9, 6.6], [5.4, 3.3], [7.3, 1.2]]]], dtype=F64
    )
    inputs = (features.requires_grad_(), uv.requires_grad_())
    assert torch.autograd.gradcheck(lambda f, p: sample_views(f, p, 8)[0], inputs)


# aggregate_views_softmax / aggregate_views_mean


def test_aggregate_views_softmax_by_hand():
    sampled = torch.tensor([[[[1.0, 1.0, 1.0]], [[5.0, 5.0, 5.0]]]])  # (B=1, V=2, C=1, P=3)
    logits = torch.tensor([[[0.0, 0.0, 0.0], [math.log(3.0), 1000.0, 2.0]]])
    inside = torch.tensor([[[True, True, False], [True, False, False]]])
    out = aggregate_views_softmax(sampled, logits, inside)
    # Weights 1/4, 3/4; only view 0 sees point 1 (its big logit is ignored); no view sees point 2.
    assert torch.allclose(out, torch.tensor([[[4.0, 1.0, 0.0]]]))


def test_aggregate_views_softmax_gradient_is_zero_and_finite_for_unseen_points():
    sampled = torch.randn(1, 3, 2, 4, generator=generator(), requires_grad=True)
    logits = torch.tensor([[[1e4, 0.0, -1e4, 5.0]] * 3], requires_grad=True)
    inside = torch.zeros(1, 3, 4, dtype=torch.bool)
    inside[:, :2, :3] = True
    out = aggregate_views_softmax(sampled, logits, inside)
    out.sum().backward()
    assert (
        torch.isfinite(out).all() and torch.isfinite(logits.grad).all() and torch.isfinite(sampled.grad).all()
    )
    assert torch.all(out[..., 3] == 0) and torch.all(logits.grad[..., 3] == 0)
    assert torch.all(sampled.grad[:, 2] == 0)  # the view that sees nothing gets no gradient


def test_aggregate_views_bad_shapes():
    with pytest.raises(ShapeError, match="logits"):
        aggregate_views_softmax(
            torch.zeros(1, 2, 3, 4), torch.zeros(1, 3, 4), torch.ones(1, 2, 4, dtype=torch.bool)
        )
    with pytest.raises(ShapeError, match="inside"):
        aggregate_views_softmax(
            torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 4), torch.ones(1, 2, 5, dtype=torch.bool)
        )
    with pytest.raises(ShapeError, match="inside"):
        aggregate_views_mean(torch.zeros(1, 2, 3, 4), torch.ones(2, 2, 4, dtype=torch.bool))
    assert aggregate_views_mean(torch.zeros(1, 2, 3, 4), torch.ones(1, 2, 4, dtype=torch.bool)).shape == (
        1,
        3,
        4,
    )


def test_aggregate_views_mean_by_hand():
    sampled = torch.tensor([[[[1.0, 1.0, 1.0]], [[5.0, 5.0, 5.0]], [[6.0, 6.0, 6.0]]]])
    inside = torch.tensor([[[True, True, False], [True, False, False], [False, True, False]]])
    assert torch.allclose(aggregate_views_mean(sampled, inside), torch.tensor([[[3.0, 3.5, 0.0]]]))


def test_aggregate_views_gradcheck():
    sampled = torch.randn(2, 3, 2, 4, dtype=F64, generator=generator()).requires_grad_()
    logits = torch.randn(2, 3, 4, dtype=F64, generator=generator(1)).requires_grad_()
    inside = torch.rand(2, 3, 4, generator=generator(2)) > 0.4
    inside[0, :, 0] = False
    assert torch.autograd.gradcheck(lambda s, g: aggregate_views_softmax(s, g, inside), (sampled, logits))
    assert torch.autograd.gradcheck(lambda s: aggregate_views_mean(s, inside), (sampled,))


# soft_argmax_3d


def test_soft_argmax_3d_peak_and_uniform():
    centres = voxel_centres(4, 1.0, (0.5, 0.0, -0.5))
    heatmaps = torch.zeros(2, 3, 4, 4, 4)
    heatmaps[0, 1, 1, 2, 0] = 60.0  # one-hot-ish: softmax puts ~1 - 63 e^-60 on it
    heatmaps[1, 0] = 1e4  # huge but uniform logits must not overflow
    points, probabilities = soft_argmax_3d(heatmaps, centres)
    assert points.shape == (2, 3, 3) and probabilities.shape == (2, 3, 4, 4, 4)
    assert torch.allclose(points[0, 1], centres[1, 2, 0])
    assert torch.allclose(points[0, 1], torch.tensor([0.25, 0.25, -1.25]))
    assert torch.allclose(points[1, 0], torch.tensor([0.5, 0.0, -0.5]), atol=1e-6)  # cube centre
    assert torch.allclose(probabilities.sum(dim=(2, 3, 4)), torch.ones(2, 3))


def test_soft_argmax_3d_bad_shapes_and_gradcheck():
    with pytest.raises(ShapeError, match="heatmaps"):
        soft_argmax_3d(torch.zeros(1, 2, 3, 4, 3), voxel_centres(3, 1.0))
    with pytest.raises(ShapeError, match="centres"):
        soft_argmax_3d(torch.zeros(1, 2, 3, 3, 3), voxel_centres(4, 1.0))
    heatmaps = torch.randn(1, 2, 3, 3, 3, dtype=F64, generator=generator()).requires_grad_()
    centres = voxel_centres(3, 1.0, dtype=F64)
    assert torch.autograd.gradcheck(lambda h: soft_argmax_3d(h, centres), (heatmaps,))


# gaussian_heatmaps


def test_gaussian_heatmaps_by_hand():
    uv = torch.tensor([[[[3.5, 2.5], [0.0, 0.0]]]])
    maps = gaussian_heatmaps(uv, 6, 8, 2.0)
    assert maps.shape == (1, 1, 2, 6, 8)
    assert maps[0, 0, 0, 2, 3] == 1.0  # pixel (row 2, col 3) has its centre on uv
    assert torch.isclose(maps[0, 0, 0, 2, 4], torch.tensor(math.exp(-1 / 8)))
    assert torch.isclose(maps[0, 0, 0, 4, 6], torch.tensor(math.exp(-13 / 8)))  # d^2 = 3^2 + 2^2
    assert torch.isclose(maps[0, 0, 1, 0, 0], torch.tensor(math.exp(-0.5 / 8)))  # corner to centre


def test_gaussian_heatmaps_bad_input_and_gradcheck():
    with pytest.raises(ShapeError, match="uv"):
        gaussian_heatmaps(torch.zeros(1, 2, 3), 4, 4, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_heatmaps(torch.zeros(1, 1, 2, 2), 4, 4, 0.0)
    uv = (torch.rand(2, 1, 3, 2, dtype=F64, generator=generator()) * 5).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: gaussian_heatmaps(p, 5, 4, 1.5), (uv,))


# pair_indices / segment_distance_sq


def test_pair_indices_row_major():
    assert pair_indices(4).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert pair_indices(4).dtype == torch.long
    assert pair_indices(18).shape == (153, 2) and pair_indices(1).shape == (0, 2)


def test_segment_distance_sq_by_hand():
    # Keypoint 0 and 1 span row 4 from column 2 to 10 (on pixel centres); keypoint 2 sits at (2.5, 1.5).
    uv = torch.tensor([[[[2.5, 4.5], [10.5, 4.5], [2.5, 1.5]]]])
    distance = segment_distance_sq(uv, 9, 14)
    assert distance.shape == (1, 1, 3, 9, 14)
    assert distance[0, 0, 0, 4, 6] == 0.0  # on the segment
    assert distance[0, 0, 0, 7, 6] == 9.0  # 3 px below it
    assert distance[0, 0, 0, 4, 13] == 9.0  # 3 px past the end: distance to the end point
    assert distance[0, 0, 0, 1, 0] == 13.0  # before the start, off-axis: 2^2 + 3^2
    assert distance[0, 0, 1, 2, 3] == 1.0  # pair (0, 2) is the vertical segment on column 2
    assert distance[0, 0, 2, 0, 0] == 5.0  # pair (1, 2): (0.5, 0.5) is past its end (2.5, 1.5)


def test_segment_distance_sq_degenerate_segment_is_the_point_distance():
    uv = torch.tensor([[[[3.5, 2.5], [3.5, 2.5]]]], requires_grad=True)
    distance = segment_distance_sq(uv, 5, 6)
    rows, columns = torch.meshgrid(torch.arange(5) + 0.5, torch.arange(6) + 0.5, indexing="ij")
    assert torch.allclose(distance[0, 0, 0], (columns - 3.5) ** 2 + (rows - 2.5) ** 2)
    distance.sum().backward()
    assert torch.isfinite(uv.grad).all()


def test_segment_distance_sq_bad_input_and_gradcheck():
    with pytest.raises(ShapeError, match="uv"):
        segment_distance_sq(torch.zeros(1, 1, 3, 3), 4, 4)
    uv = torch.tensor([[[[0.7, 1.2], [4.3, 3.9], [2.2, 0.3]]]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: segment_distance_sq(p, 5, 6), (uv,))


# edge_maps


def brute_force_edge_maps(uv, edge_weights, height, width, sigma):
    pairs = pair_indices(uv.shape[2])
    weights = edge_weights[pairs[:, 0], pairs[:, 1]]
    maps = weights[:, None, None] * torch.exp(-segment_distance_sq(uv, height, width) / (2 * sigma**2))
    return maps.amax(dim=2)


def random_keypoints(batch, views, keypoints, size, seed=0):
    return torch.rand(batch, views, keypoints, 2, dtype=F64, generator=generator(seed)) * size


def test_edge_maps_single_pair_by_hand():
    uv = torch.tensor([[[[2.5, 4.5], [10.5, 4.5]]]])
    weights = torch.tensor([[0.0, 0.5], [9.0, 0.0]])  # the lower triangle is never read
    maps = edge_maps(uv, weights, 9, 14, 1.5)
    assert maps.shape == (1, 1, 9, 14)
    assert maps[0, 0, 4, 6] == 0.5
    assert torch.isclose(maps[0, 0, 7, 6], torch.tensor(0.5 * math.exp(-9 / 4.5)))


@pytest.mark.parametrize("pairs_per_chunk", [1, 4, 1000])
def test_edge_maps_match_the_brute_force_max_in_value_and_gradient(pairs_per_chunk):
    uv = random_keypoints(2, 2, 6, 16).requires_grad_()
    weights = torch.rand(6, 6, dtype=F64, generator=generator(1)).requires_grad_()
    maps = edge_maps(uv, weights, 16, 12, 2.0, pairs_per_chunk=pairs_per_chunk)
    expected = brute_force_edge_maps(uv, weights, 16, 12, 2.0)
    assert torch.allclose(maps, expected, atol=1e-12)
    probe = torch.rand(maps.shape, dtype=F64, generator=generator(2))
    grads = torch.autograd.grad((maps * probe).sum(), (uv, weights))
    expected_grads = torch.autograd.grad((expected * probe).sum(), (uv, weights))
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert torch.allclose(grad, expected_grad, atol=1e-10)


def test_edge_maps_only_read_the_upper_triangle():
    uv = random_keypoints(1, 2, 4, 8)
    weights = torch.rand(4, 4, dtype=F64, generator=generator(1))
    changed = weights.triu(1) + 5.0 * torch.ones(4, 4, dtype=F64).tril()
    assert torch.equal(edge_maps(uv, weights, 8, 8, 1.0), edge_maps(uv, changed, 8, 8, 1.0))


def test_edge_maps_bad_input_and_no_pairs():
    with pytest.raises(ShapeError, match="edge_weights"):
        edge_maps(torch.zeros(1, 1, 3, 2), torch.zeros(4, 4), 4, 4, 1.0)
    with pytest.raises(ShapeError, match="uv"):
        edge_maps(torch.zeros(1, 3, 2), torch.zeros(3, 3), 4, 4, 1.0)
    assert torch.equal(
        edge_maps(torch.zeros(2, 1, 1, 2), torch.ones(1, 1), 4, 5, 1.0), torch.zeros(2, 1, 4, 5)
    )


def test_edge_maps_gradcheck():
    single = torch.tensor([[[[0.7, 1.2], [4.3, 3.9]]]], dtype=F64, requires_grad=True)
    single_weights = torch.tensor([[0.0, 0.8], [0.0, 0.0]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, w: edge_maps(p, w, 5, 6, 1.2), (single, single_weights))
    # Several pairs at generic positions: no pixel sits on a tie between two pairs.
    uv = random_keypoints(1, 2, 4, 6, seed=3).requires_grad_()
    weights = (torch.rand(4, 4, dtype=F64, generator=generator(4)) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda p, w: edge_maps(p, w, 6, 6, 1.0, pairs_per_chunk=2), (uv, weights))


def saved_for_backward(keypoints, size):
    """Elements autograd keeps for the backward of one edge map (B = 1, V = 2)."""
    uv = random_keypoints(1, 2, keypoints, size).float().requires_grad_()
    weights = torch.rand(keypoints, keypoints, generator=generator(1), requires_grad=True)
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        edge_maps(uv, weights, size, size, 1.5).sum().backward()
    assert torch.isfinite(uv.grad).all() and uv.grad.abs().sum() > 0
    return sum(saved)


def test_edge_maps_keep_only_per_pixel_tensors_for_backward():
    """What autograd saves grows with B V H W, not with the number of pairs E."""
    per_pixel = 2 * 24 * 24
    few, many = saved_for_backward(3, 24), saved_for_backward(16, 24)  # 3 and 120 pairs
    assert many < 40 * per_pixel  # a brute-force max over 120 pairs keeps > 120 * per_pixel
    assert many - few < per_pixel  # only the per-pair weights and indices grow with E
