"""Cameras: the stored matrices put a known 3D point on the pixel where it is seen."""

import numpy as np
import pytest

from stages.cameras import (
    intrinsics_from_fov,
    look_at_world_to_camera,
    orbit_camera_centers,
    orbit_cameras,
    project_points,
)

SPHERES = np.array([[0.0, 0.0, 0.0], [0.3, 0.0, 0.1], [0.0, 0.35, -0.1], [-0.2, -0.2, 0.3]])
RADIUS = 0.06


def raycast_spheres(elevation_deg, azimuth_deg, radius, fov_deg, size):
    """Per sphere, the (H, W) mask of pixels whose ray hits it, with rays built from angles.

    Independent of the matrix code: camera basis from spherical derivatives, a ray
    through every pixel centre, analytic ray-sphere intersection.
    """
    el, az = np.deg2rad(elevation_deg), np.deg2rad(azimuth_deg)
    eye = radius * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    forward = -eye / radius
    right = np.array([-np.sin(az), np.cos(az), 0.0])  # d(eye)/d(az), normalised
    up = np.cross(right, forward)
    half = np.tan(np.deg2rad(fov_deg) / 2)
    centres = (np.arange(size) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    xs, ys = np.meshgrid(centres * half, centres * half)
    dirs = forward + xs[..., None] * right - ys[..., None] * up
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    masks = []
    for centre in SPHERES:
        oc = eye - centre
        b = np.einsum("hwc,c->hw", dirs, oc)
        disc = b * b - (oc @ oc - RADIUS**2)
        masks.append((disc > 0) & (-b - np.sqrt(np.maximum(disc, 0)) > 0))
    return masks


@pytest.mark.parametrize("azimuth", [0.0, 85.7, 171.4, 274.3])
def test_projected_sphere_centres_land_on_their_rendered_discs(azimuth):
    size, fov, radius, elevation = 96, 33.8, 2.0, 10.0
    intrinsics, w2c = orbit_cameras(np.array([elevation]), np.array([azimuth]), radius, fov, size)
    uv, depth = project_points(SPHERES, intrinsics, w2c)
    masks = raycast_spheres(elevation, azimuth, radius, fov, size)
    for index, mask in enumerate(masks):
        pixels = np.argwhere(mask)
        assert len(pixels) > 10
        centroid = pixels.mean(axis=0)[::-1] + 0.5  # (row, col) -> (u, v) of pixel centres
        assert np.allclose(uv[0, index], centroid, atol=0.5), (index, uv[0, index], centroid)
        u, v = np.floor(uv[0, index]).astype(int)
        assert mask[v, u]
        assert depth[0, index] > 0


def test_world_conventions_by_hand():
    # Input view (azimuth 0, elevation 0): camera on +x looking at -x, +z is up in the image.
    intrinsics, w2c = orbit_cameras(np.array([0.0]), np.array([0.0]), 2.0, 90.0, 100)
    uv, depth = project_points(np.array([[0.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]), intrinsics, w2c)
    assert np.allclose(uv[0, 0], [50, 50]) and np.isclose(depth[0, 0], 2.0)
    # f = 50 px; a point 1 unit off-axis at depth 2 lands 25 px from the centre.
    assert np.allclose(uv[0, 1], [50, 25])  # +z is up in the image
    assert np.allclose(uv[0, 2], [75, 50])  # +y is to the right: azimuth grows counter-clockwise
    assert np.allclose(intrinsics[0], [[50, 0, 50], [0, 50, 50], [0, 0, 1]])


def test_look_at_is_a_rigid_transform_and_centres_sit_on_the_orbit():
    centers = orbit_camera_centers(np.full(6, 10.0), np.linspace(0, 300, 6), 2.5)
    w2c = look_at_world_to_camera(centers)
    rot = w2c[:, :3, :3]
    assert np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(rot), 1.0)
    recovered = -np.einsum("vji,vj->vi", rot, w2c[:, :3, 3])
    assert np.allclose(recovered, centers)
    assert np.allclose(np.linalg.norm(centers, axis=1), 2.5)


def test_bad_shapes_and_values_raise():
    with pytest.raises(ValueError, match="points must be"):
        project_points(np.zeros((3, 2)), np.eye(3)[None], np.eye(4)[None])
    with pytest.raises(ValueError, match="fov_deg"):
        intrinsics_from_fov(180.0, 64)
    with pytest.raises(ValueError, match="up vector"):
        look_at_world_to_camera(np.array([[0.0, 0.0, 2.0]]))
