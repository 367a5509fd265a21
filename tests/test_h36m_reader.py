"""The Human3.6M reader on a fabricated dataset in its exact layout, and end to end into a cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cache_schema import STATUS_DONE, STATUS_FAILED, CacheReader
from pipeline.cache_cli import app
from stages.datasets.h36m import JOINT_NAMES, read_h36m, select_actions
from stages.datasets.h36m_cameras import project_pinhole, quaternion_to_matrix, world_to_camera
from stages.datasets.preparation import ground_truth_rows, prepare_annotated_image
from stages.datasets.selection import DatasetSelection
from stages.errors import ConfigError
from tests.fixtures.blobs import blob_centre
from tests.fixtures.h36m import BLOBS, project, write_fake_h36m

# The 17 joints of the usual protocol, written out from the 15 that are dropped.
EXPECTED_KEPT = [0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27]
FAST = ["--frames", "8", "--steps", "4", "--decode-chunk-size", "8", "--no-progress"]


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return write_fake_h36m(tmp_path_factory.mktemp("h36m") / "root")


def read(fake, **selection):
    return read_h36m(fake.root, DatasetSelection(**selection))


def test_splits_follow_the_subject_protocol(fake):
    train = read(fake, split="train", stride=1)
    test = read(fake, split="test", stride=1)
    assert {s.sample_id.split("/")[0] for s in train.sources} == {"S1"}
    assert {s.sample_id.split("/")[0] for s in test.sources} == {"S9"}
    assert len(test.sources) == 2 * 2 * 3  # actions x cameras x frames
    assert test.record["subjects"] == ["S9"] and test.record["joints_3d_frame"] == "input_camera"
    assert test.ground_truth.has_3d and test.ground_truth.has_2d


def test_seventeen_joints_in_the_protocol_order_in_the_input_camera_frame(fake):
    assert len(JOINT_NAMES) == 17 and JOINT_NAMES[0] == "Hip" and JOINT_NAMES[10] == "Head"
    assert JOINT_NAMES[13] == "LWrist" and JOINT_NAMES[16] == "RWrist"
    sources = read(fake, split="test", stride=1).sources
    source = next(s for s in sources if s.sample_id == "S9/WalkDog.55011271/000002")
    camera = fake.cameras["55011271"]
    world = fake.positions["S9"]["WalkDog"][2][EXPECTED_KEPT].astype(np.float64)
    w, x, y, z = camera["orientation"]
    # the camera's axes in the world are the columns of R(q); a point's camera coordinates
    # are its offset from the centre along those axes
    axes = quaternion_to_matrix(np.array([w, x, y, z]))
    expected = (world - np.array(camera["translation"]) / 1000.0) @ axes
    assert np.allclose(source.annotation.joints_3d, expected, atol=1e-6)
    assert np.all(source.annotation.joints_3d[:, 2] > 4.0)  # about 5 m in front
    assert source.path == fake.root / "images/S9/WalkDog.55011271/000002.jpg"


def test_projection_agrees_with_the_3d_joints_and_an_independent_projection(fake):
    for source in read(fake, split="train", stride=1).sources:
        subject_action, frame = source.sample_id.rsplit("/", 1)
        action, camera_id = subject_action.split("/")[1].rsplit(".", 1)
        camera = fake.cameras[camera_id]
        a = source.annotation
        from_3d = a.joints_3d[:, :2] / a.joints_3d[:, 2:] * camera["focal_length"] + camera["center"] + 0.5
        assert np.allclose(a.joints_2d, from_3d)
        world = fake.positions["S1"][action][int(frame)][EXPECTED_KEPT].astype(np.float64)
        assert np.allclose(a.joints_2d, project(world, camera) + 0.5, atol=1e-6)
        assert a.visible.all()
        x, y, w, h = a.box
        lo, hi = a.joints_2d.min(axis=0), a.joints_2d.max(axis=0)
        assert x < lo[0] and y < lo[1] and x + w > hi[0] and y + h > hi[1]
        assert x >= 0 and y >= 0 and x + w <= 96 and y + h <= 96


def test_world_to_camera_and_projection_by_hand():
    points = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 7.0]])
    assert np.allclose(
        world_to_camera(points, np.array([1.0, 0, 0, 0]), np.array([0.5, 0.5, 1.0])), points - [0.5, 0.5, 1.0]
    )
    # 90 degrees about world z: the camera's x axis is the world's y axis
    quarter = np.array([np.cos(np.pi / 4), 0.0, 0.0, np.sin(np.pi / 4)])
    assert np.allclose(world_to_camera(np.array([0.0, 1.0, 0.0]), quarter, np.zeros(3)), [1.0, 0.0, 0.0])
    assert np.allclose(world_to_camera(np.array([-1.0, 0.0, 2.0]), quarter, np.zeros(3)), [0.0, 1.0, 2.0])
    assert np.allclose(
        project_pinhole(np.array([0.2, -0.4, 2.0]), np.array([100.0, 50.0]), np.array([10.0, 20.0])),
        [20.0, 10.0],
    )
    with pytest.raises(ValueError, match=r"quaternion must be \(4,\)"):
        world_to_camera(points, np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match=r"points must be \(\.\.\., 3\), got \(2, 2\)"):
        world_to_camera(points[:, :2], quarter, np.zeros(3))


def test_stride_and_camera_subset(fake):
    sources = read(fake, split="test", stride=2, cameras=("55011271",)).sources
    assert [s.sample_id for s in sources] == [
        "S9/WalkDog.55011271/000000",
        "S9/WalkDog.55011271/000002",
        "S9/Walking 1.55011271/000000",
        "S9/Walking 1.55011271/000002",
    ]
    default = read(fake, split="test")  # every 5th frame: frame 0 of each 3-frame clip
    assert {s.sample_id[-6:] for s in default.sources} == {"000000"} and default.record["stride"] == 5
    with pytest.raises(ConfigError, match="unknown camera id 123; choose from 54138969, 55011271"):
        read(fake, split="test", cameras=("123",))


def test_action_names_match_on_the_base_name_only():
    names = ["Directions", "Directions 1", "Walking", "Walking 1", "WalkDog", "WalkDog 1", "WalkTogether"]
    names += ["Posing 1", "Sitting 1", "SittingDown", "Greeting 2", "Waiting 1", "Discussion 1"]
    assert select_actions(names, "Walking") == ["Walking", "Walking 1"]
    assert select_actions(names, "WalkDog") == ["WalkDog", "WalkDog 1"]
    assert select_actions(names, "Walking 1,Sitting") == ["Walking 1", "Sitting 1"]
    assert select_actions(names, "paper") == [
        "Directions",
        "Directions 1",
        "Walking",
        "Walking 1",
        "Posing 1",
        "Greeting 2",
        "Waiting 1",
        "Discussion 1",
    ]
    assert select_actions(names, "all") == names
    with pytest.raises(ConfigError, match="no action named Walk;.*WalkDog"):
        select_actions(names, "Walk")


def test_reader_applies_the_action_subset(fake):
    walking = read(fake, split="test", stride=1, actions="Walking")
    assert {s.sample_id.split(".")[0] for s in walking.sources} == {"S9/Walking 1"}
    assert walking.record["actions_read"] == ["Walking 1"]
    assert {s.sample_id.split(".")[0] for s in read(fake, split="test", actions="paper").sources} == {
        "S9/Walking 1"
    }


def test_masks_folder_whitens_the_background_and_joints_still_land_on_their_blobs(tmp_path):
    fake = write_fake_h36m(tmp_path / "masked", with_masks=True)
    dataset = read(fake, split="train", stride=1, actions="WalkDog", cameras=("54138969",))
    assert dataset.record["background"] == "mask"
    source = dataset.sources[1]
    assert source.annotation.mask_path == fake.root / "masks/S1/WalkDog.54138969/000001.png"
    prepared = prepare_annotated_image(source.path, source.annotation, 64, 0.85, 10**8)
    assert tuple(prepared.image[:, 1, 1]) == (255, 255, 255)
    uv = ground_truth_rows(source.annotation, prepared, 4, dataset.ground_truth)["ground_truth/joints_2d"][0]
    for joint, colour in BLOBS.items():
        assert np.linalg.norm(blob_centre(prepared.image, colour) - uv[joint]) < 1.5, JOINT_NAMES[joint]


def test_cli_builds_a_cache_whose_ground_truth_lands_on_the_drawn_joints(tmp_path, tiny_model_dir):
    fake = write_fake_h36m(tmp_path / "root")
    (fake.root / "images/S9/Walking 1.54138969/000002.jpg").unlink()  # listed, recorded as failed
    out = tmp_path / "h36m.zarr"
    args = ["generate", "--source", f"h36m:{fake.root}", "--split", "test", "--model", str(tiny_model_dir)]
    args += ["--out", str(out), "--stride", "2", "--actions", "Walking", *FAST]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 done now, 1 failed" in result.output and "000002.jpg: file not found" in result.output

    reader = CacheReader(out)
    source = reader.store.metadata.source
    assert source["dataset"] == "h36m" and source["split"] == "test" and source["stride"] == 2
    assert source["actions"] == "Walking" and source["joints_3d_frame"] == "input_camera"
    assert source["root"] == str(fake.root.resolve()) and source["background"] == "photo"
    assert reader.layout.ground_truth.joint_names == JOINT_NAMES
    ids = list(reader.sample_ids())
    status = reader.store.statuses()
    assert status[ids.index("S9/Walking 1.54138969/000002")] == STATUS_FAILED
    done = [i for i in range(len(ids)) if status[i] == STATUS_DONE]
    truth = reader.read_ground_truth(done)
    images = reader.read_batch(done, ["input_image"])["input_image"]
    expected = {s.sample_id: s for s in read(fake, split="test", stride=2, actions="Walking").sources}
    for row, index in enumerate(done):
        annotation = expected[ids[index]].annotation
        assert np.allclose(truth["joints_3d"][row], annotation.joints_3d, atol=1e-5)
        visible = truth["joints_2d_visible"][row]
        assert visible[0].all() and not visible[1:].any()
        assert not truth["joints_2d"][row, 1:].any()
        for joint, colour in BLOBS.items():
            found = blob_centre(images[row], colour)
            assert np.linalg.norm(found - truth["joints_2d"][row, 0, joint]) < 1.5, (ids[index], joint)
    json.dumps(source)  # the record is plain JSON
