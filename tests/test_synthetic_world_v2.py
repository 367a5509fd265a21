"""World version 2 (part classes, face, badge, quadruped head, light) and version 1 unchanged."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

pb = pytest.importorskip("pybullet")
pytest.importorskip("pybullet_data")

from pipeline.backends import RenderBackendSpec  # noqa: E402
from stages.config import GenerationConfig  # noqa: E402
from stages.synthetic.appearance import LINK_JITTER, draw_look, part_classes, srgb_to_lab  # noqa: E402
from stages.synthetic.errors import SyntheticWorldError  # noqa: E402
from stages.synthetic.figures import draw_link_colours, load_figure, pose_figure  # noqa: E402
from stages.synthetic.mocap import load_clip, pose_at  # noqa: E402
from stages.synthetic.props import PROPS, add_props, place_props  # noqa: E402
from stages.synthetic.render import Lighting  # noqa: E402
from stages.synthetic.versions import world_version  # noqa: E402
from stages.synthetic.wardrobe import Wardrobe  # noqa: E402
from stages.synthetic.world import SyntheticWorldConfig  # noqa: E402

# sha256 (first 16 hex digits) over every array of a sample, names sorted, made by the
# code at main 8d85f5f before versions existed: seed 5, train split, 48 px. The renders
# come from pybullet's CPU renderer, so another pybullet build may draw other bytes.
VERSION_1_DIGESTS = {
    "humanoid/train/000000": "fdc2462d493c0a89",
    "humanoid/train/000001": "f0ebf90415f74f93",
    "quadruped/train/000000": "0f2c4fa034b8423c",
}


@pytest.fixture
def client():
    client_id = pb.connect(pb.DIRECT)
    yield client_id
    pb.disconnect(client_id)


def renderer(category: str, version: int, samples: int, size: int, seed: int = 0):
    world = SyntheticWorldConfig(category, "train", samples, seed=seed, version=version)
    spec = RenderBackendSpec(world, GenerationConfig(resolution=size))
    return spec.build(), world.sample_ids()


def sample_digest(rows: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(rows):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(rows[name]).tobytes())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("category", ["humanoid", "quadruped"])
def test_version_1_samples_are_byte_for_byte_those_of_before_versions(category):
    expected = {k: v for k, v in VERSION_1_DIGESTS.items() if k.startswith(category)}
    make, ids = renderer(category, 1, len(expected), 48, seed=5)
    for sample_id in ids:
        assert sample_digest(make(sample_id)[0]) == expected[sample_id], sample_id


@pytest.mark.parametrize("category", ["humanoid", "quadruped"])
def test_version_2_has_version_1_joints_and_cameras_and_masks_only_grow(category):
    """Appearance moves nothing: same joints and 2D joints; props only add masked pixels."""
    old, ids = renderer(category, 1, 3, 64)
    new, _ = renderer(category, 2, 3, 64)
    grew = 0
    for sample_id in ids:
        a, b = old(sample_id)[0], new(sample_id)[0]
        for name in ("ground_truth/joints_3d", "ground_truth/joints_2d", "world_to_camera", "intrinsics"):
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        assert not np.array_equal(a["views"], b["views"])
        assert np.all(b["view_masks"] >= a["view_masks"]), "a prop hid part of the figure from the mask"
        grew += int(b["view_masks"].sum() > a["view_masks"].sum())
    assert grew == len(ids), "the props should show in the masks"


def dressed(client_id: int, category: str, seed: int):
    figure = load_figure(client_id, category)
    wardrobe = Wardrobe(figure)
    rng = np.random.default_rng(seed)
    pose_figure(
        figure, pose_at(load_clip(f"{'humanoid3d' if category == 'humanoid' else 'laikago'}_walk"), 0.3)
    )
    look = draw_look(category, wardrobe.link_names, draw_link_colours(figure, rng), rng)
    wardrobe.dress(look)
    return figure, look


def shown_colours(client_id: int, figure) -> dict[int, np.ndarray]:
    """Link index -> the RGB it is drawn with, as pybullet reports it."""
    rows = pb.getVisualShapeData(figure.body_id, physicsClientId=client_id)
    return {row[1]: np.array(row[7][:3]) for row in rows}


COUNTERPARTS = {
    "humanoid": [
        (f"left_{joint}", f"right_{joint}")
        for joint in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle")
    ],
    "quadruped": [
        (f"{end}L_{link}", f"{end}R_{link}")
        for end in "FR"
        for link in ("hip_motor", "upper_leg", "lower_leg")
    ],
}


@pytest.mark.parametrize("category", ["humanoid", "quadruped"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counterparts_share_colour_and_texture_and_classes_stay_apart(client, category, seed):
    figure, look = dressed(client, category, seed)
    shown = shown_colours(client, figure)
    for left, right in COUNTERPARTS[category]:
        rgb_l, rgb_r = shown[figure.link_indices[left]], shown[figure.link_indices[right]]
        assert np.abs(rgb_l - rgb_r).max() <= 2 * LINK_JITTER + 1e-6, (left, right)
    # Textures go by class too (Wardrobe.dress); the quadruped's meshes take none.
    assert set(look.textures) == set(look.class_colours)
    if category == "quadruped":
        assert set(look.textures.values()) == {"plain"}
    classes = part_classes(category)
    assert set(look.class_colours) == set(classes)
    lab = srgb_to_lab(np.array([look.class_colours[c] for c in classes]))
    distance = np.linalg.norm(lab[:, None] - lab[None], axis=-1) + np.eye(len(classes)) * 1e9
    # MIN_DELTA_E (30) is asked for; a crowded draw may keep its farthest candidate instead.
    assert distance.min() >= 20.0, classes[int(np.argmin(distance)) // len(classes)]
    assert np.linalg.norm(lab - srgb_to_lab(np.ones(3)), axis=-1).min() >= 20.0, "a class is near white"


@pytest.mark.parametrize("category", ["humanoid", "quadruped"])
def test_props_follow_their_links_in_any_pose(client, category):
    """A prop's place in its link's frame is the same in two poses with different yaws."""
    figure = load_figure(client, category)
    props = add_props(figure)
    clip = load_clip("humanoid3d_kick" if category == "humanoid" else "laikago_walk")
    local = []
    for t, seed in ((0.2, 0), (0.7, 1)):
        pose_figure(figure, pose_at(clip, t), np.random.default_rng(seed))
        centres = place_props(figure, props)
        rows = []
        for prop, centre in zip(props, centres, strict=True):
            if prop.spec.link == "base":
                origin, rotation = pb.getBasePositionAndOrientation(figure.body_id, physicsClientId=client)
            else:  # the link frame at its joint: the 'neck' keypoint for the head's props
                state = pb.getLinkState(
                    figure.body_id,
                    figure.link_indices[prop.spec.link],
                    computeForwardKinematics=True,
                    physicsClientId=client,
                )
                origin, rotation = state[4], state[5]
            matrix = np.array(pb.getMatrixFromQuaternion(rotation)).reshape(3, 3)
            rows.append(matrix.T @ (centre - np.array(origin)))
        local.append(np.array(rows))
    np.testing.assert_allclose(local[0], local[1], atol=1e-6)
    assert len(props) == len(PROPS[category])


def test_the_face_is_on_the_side_the_feet_point_to(client):
    """The humanoid's forward axis: the visor and nose sit along the feet's direction."""
    figure = load_figure(client, "humanoid")
    props = add_props(figure)
    pose_figure(figure, pose_at(load_clip("humanoid3d_walk"), 0.0), np.random.default_rng(4))
    centres = dict(zip([p.spec.part for p in props], place_props(figure, props), strict=False))
    head = np.array(pb.getLinkState(figure.body_id, figure.link_indices["neck"], physicsClientId=client)[0])
    foot = pb.getLinkState(figure.body_id, figure.link_indices["left_ankle"], physicsClientId=client)
    # The foot box's centre is ahead of its ankle joint: that is the way the figure faces.
    toes = np.array(foot[0]) - np.array(foot[4])
    face = centres["visor"] - head
    assert np.dot(toes[:2], face[:2]) > 0.7 * np.linalg.norm(toes[:2]) * np.linalg.norm(face[:2])


def test_config_version_and_old_metadata():
    assert SyntheticWorldConfig().version == 2
    assert SyntheticWorldConfig().to_dict()["version"] == 2
    with pytest.raises(SyntheticWorldError, match="version"):
        SyntheticWorldConfig(version=3)
    old = {k: v for k, v in SyntheticWorldConfig("quadruped", seed=4, version=1).to_dict().items()}
    del old["version"]
    assert world_version(old) == 1
    assert SyntheticWorldConfig.from_dict(old) == SyntheticWorldConfig("quadruped", seed=4, version=1)
    new = SyntheticWorldConfig("humanoid", "test", 7, version=2)
    assert SyntheticWorldConfig.from_dict(new.to_dict()) == new


def test_lighting_is_checked_and_always_sent_whole():
    with pytest.raises(SyntheticWorldError, match="colour"):
        Lighting(colour=(1.0, 2.0, 0.0))
    with pytest.raises(SyntheticWorldError, match="coefficients"):
        Lighting(ambient=-0.1)
    # The renderer keeps the last values it was given: all four go with every render.
    assert set(dataclasses.asdict(Lighting())) == {"colour", "ambient", "diffuse", "specular"}
    assert len(Lighting().camera_image_arguments()) == 4
