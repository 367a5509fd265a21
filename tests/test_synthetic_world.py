"""Synthetic world: clips, figures and renders agree with stages/cameras.py."""

from __future__ import annotations

import numpy as np
import pytest

pb = pytest.importorskip("pybullet")
pytest.importorskip("pybullet_data")

from stages.cameras import orbit_cameras, project_points  # noqa: E402
from stages.config import OrbitConfig  # noqa: E402
from stages.synthetic.errors import SyntheticWorldError  # noqa: E402
from stages.synthetic.figures import figure_bounds, load_figure, pose_figure, randomise_colours  # noqa: E402
from stages.synthetic.mocap import CLIP_LAYOUTS, load_clip, pose_at, rest_pose  # noqa: E402
from stages.synthetic.render import radius_to_fit, render_views  # noqa: E402

CLIPS = {"humanoid": "humanoid3d_walk", "quadruped": "laikago_walk"}
SIZE = 96


@pytest.fixture
def client():
    client_id = pb.connect(pb.DIRECT)
    yield client_id
    pb.disconnect(client_id)


def kept_cameras(radius: float, size: int = SIZE):
    """Stage one's kept views (elevation, azimuths, fov) at a radius the figure fits."""
    orbit = OrbitConfig()
    azimuths = np.array(orbit.kept_azimuths_deg)
    return orbit_cameras(np.full(len(azimuths), orbit.elevation_deg), azimuths, radius, orbit.fov_deg, size)


def posed_world(client_id, category, seed, t=0.4):
    rng = np.random.default_rng(seed)
    figure = load_figure(client_id, category)
    colours = randomise_colours(figure, rng)
    keypoints = pose_figure(figure, pose_at(load_clip(CLIPS[category]), t), rng)
    return figure, colours, keypoints


@pytest.mark.parametrize("category", ["humanoid", "quadruped"])
def test_projected_keypoints_land_in_rendered_masks(client, category):
    figure, _, keypoints = posed_world(client, category, seed=3)
    low, high = figure_bounds(figure)
    intrinsics, world_to_camera = kept_cameras(
        radius_to_fit(0.5 * np.linalg.norm(high - low), OrbitConfig().fov_deg)
    )
    rgb, masks = render_views(client, intrinsics, world_to_camera, SIZE)
    assert rgb.shape == (4, 3, SIZE, SIZE) and rgb.dtype == np.uint8
    assert masks.shape == (4, SIZE, SIZE) and set(np.unique(masks)) <= {0, 1}
    for mask in masks:
        assert mask.sum() > 50, "a view shows no figure"
        # Inside the image: nothing touches the border.
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    assert np.all(rgb.transpose(0, 2, 3, 1)[masks == 0] == 255), "background must be white"
    assert np.any(rgb.transpose(0, 2, 3, 1)[masks == 1] < 250), "the figure must not be white"
    uv, depth = project_points(keypoints, intrinsics, world_to_camera)
    assert np.all(depth > 0)
    columns, rows = np.floor(uv[..., 0]).astype(int), np.floor(uv[..., 1]).astype(int)
    inside = (columns >= 0) & (columns < SIZE) & (rows >= 0) & (rows < SIZE)
    assert inside.all()
    # The DeepMimic humanoid is separate capsules and spheres with gaps at the joints,
    # so its joint centres sit between parts: they count if the 3 x 3 pixels around
    # them touch the mask. The quadruped's legs are solid through the joints.
    reach = 1 if category == "humanoid" else 0
    padded = np.pad(masks, ((0, 0), (reach, reach), (reach, reach)))
    near = np.zeros(rows.shape, dtype=bool)
    for dr in range(2 * reach + 1):
        for dc in range(2 * reach + 1):
            near |= padded[np.arange(4)[:, None], rows + dr, columns + dc] == 1
    assert near.mean() >= 0.95, f"only {near.mean():.0%} of projected keypoints fall on the mask"


def test_rendered_sphere_centres_match_projection(client):
    """Sub-pixel check of the OpenCV -> OpenGL conversion: each small sphere's mask
    centroid must sit where project_points puts its centre."""
    centres = np.array([[0.3, -0.2, 0.25], [-0.25, 0.3, -0.3], [0.0, 0.0, 0.0]])
    for centre in centres:
        shape = pb.createCollisionShape(pb.GEOM_SPHERE, radius=0.05, physicsClientId=client)
        look = pb.createVisualShape(pb.GEOM_SPHERE, radius=0.05, physicsClientId=client)
        pb.createMultiBody(0, shape, look, basePosition=centre.tolist(), physicsClientId=client)
    intrinsics, world_to_camera = kept_cameras(2.0, 128)
    uv, _ = project_points(centres, intrinsics, world_to_camera)
    for view in range(4):
        errors = []
        for body in range(len(centres)):
            # Draw one sphere at a time so that no other sphere occludes part of it.
            for other in range(len(centres)):
                pb.changeVisualShape(
                    other, -1, rgbaColor=[0.5, 0.5, 0.5, float(other == body)], physicsClientId=client
                )
            _, masks = render_views(
                client, intrinsics[view : view + 1], world_to_camera[view : view + 1], 128
            )
            rows, columns = np.nonzero(masks[0])
            errors.append([columns.mean() + 0.5 - uv[view, body, 0], rows.mean() + 0.5 - uv[view, body, 1]])
        assert np.abs(np.mean(errors, axis=0)).max() < 0.2, errors
        assert np.abs(errors).max() < 0.5, errors


def render_bytes(category, seed):
    client_id = pb.connect(pb.DIRECT)
    try:
        _, colours, keypoints = posed_world(client_id, category, seed)
        rgb, masks = render_views(client_id, *kept_cameras(3.5, 48), 48)
        return colours, keypoints, rgb.tobytes() + masks.tobytes()
    finally:
        pb.disconnect(client_id)


def test_same_seed_same_bytes_other_seed_other_colours():
    colours, keypoints, image = render_bytes("humanoid", seed=7)
    again_colours, again_keypoints, again_image = render_bytes("humanoid", seed=7)
    other_colours, _, other_image = render_bytes("humanoid", seed=8)
    assert image == again_image
    np.testing.assert_array_equal(keypoints, again_keypoints)
    np.testing.assert_array_equal(colours, again_colours)
    assert not np.allclose(colours, other_colours)
    assert image != other_image


@pytest.mark.parametrize("name", ["humanoid3d_walk", "humanoid3d_kick", "laikago_walk"])
def test_pose_at_frame_times_and_between(name):
    clip = load_clip(name)
    for k in (0, 5, len(clip.frame_times) - 2):
        pose = pose_at(clip, clip.frame_times[k])
        np.testing.assert_allclose(pose.root_position, clip.root_positions[k], atol=1e-12)
        np.testing.assert_allclose(abs(np.dot(pose.root_rotation, clip.root_rotations[k])), 1.0, atol=1e-9)
        angles = np.array(clip.layout.joint_dofs) == 1
        starts = np.cumsum((0,) + clip.layout.joint_dofs[:-1])
        np.testing.assert_allclose(
            pose.joint_values[starts[angles]], clip.joint_values[k, starts[angles]], atol=1e-12
        )
    k = 3
    a, b = clip.frame_times[k], clip.frame_times[k + 1]
    mid = pose_at(clip, 0.5 * (a + b))
    low = np.minimum(clip.root_positions[k], clip.root_positions[k + 1]) - 1e-12
    high = np.maximum(clip.root_positions[k], clip.root_positions[k + 1]) + 1e-12
    assert np.all((low <= mid.root_position) & (mid.root_position <= high))
    q0, q1 = clip.root_rotations[k], clip.root_rotations[k + 1]
    whole = np.arccos(min(1.0, abs(np.dot(q0, q1))))
    assert np.arccos(min(1.0, abs(np.dot(q0, mid.root_rotation)))) <= whole + 1e-9
    assert np.isclose(np.linalg.norm(mid.root_rotation), 1.0)


def test_humanoid_is_adult_height(client):
    figure = load_figure(client, "humanoid")
    clip = load_clip("humanoid3d_walk")
    for pose in [rest_pose(CLIP_LAYOUTS["humanoid"])] + [pose_at(clip, t) for t in (0.0, 0.3, 0.9)]:
        pose_figure(figure, pose)
        low, high = figure_bounds(figure)
        assert 1.7 * 0.9 <= high[2] - low[2] <= 1.7 * 1.1
        np.testing.assert_allclose(0.5 * (low + high), 0.0, atol=1e-6)


def test_bad_inputs_raise_clear_errors(client):
    with pytest.raises(SyntheticWorldError, match="category"):
        load_figure(client, "octopus")
    with pytest.raises(SyntheticWorldError, match="unknown clip name"):
        load_clip("humanoid3d_moonwalk")
    with pytest.raises(SyntheticWorldError, match="clip name"):
        load_clip("octopus_swim")
    kick = load_clip("humanoid3d_kick")
    assert not kick.loops
    with pytest.raises(SyntheticWorldError, match="non-looping"):
        pose_at(kick, kick.duration + 0.1)
    with pytest.raises(SyntheticWorldError, match="intrinsics"):
        render_views(client, np.eye(3), np.eye(4)[None], 32)
