"""CUB-200-2011 and StanfordExtra readers on fabricated datasets: parsing, splits, crops, 2D ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from cache_schema import CacheReader
from pipeline.generate import GenerateJob, run_generate
from stages.config import GenerationConfig, OrbitConfig
from stages.datasets.cub import read_cub
from stages.datasets.preparation import ground_truth_rows, prepare_annotated_image
from stages.datasets.selection import DatasetSelection
from stages.datasets.stanford_dogs import JOINT_NAMES, read_stanford_dogs
from stages.errors import ConfigError
from tests.fixtures import cub as cub_fixture
from tests.fixtures import stanford_dogs as dogs_fixture
from tests.fixtures.blobs import blob_centre

SIZE = 64


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    return cub_fixture.write_fake_cub(tmp_path_factory.mktemp("cub") / "CUB_200_2011")


@pytest.fixture(scope="module")
def dogs(tmp_path_factory):
    return dogs_fixture.write_fake_dogs(tmp_path_factory.mktemp("dogs") / "stanford")


def test_cub_parses_parts_boxes_and_splits(cub):
    train = read_cub(cub.root, DatasetSelection(split="train"))
    test = read_cub(cub.root, DatasetSelection(split="test"))
    assert [s.sample_id for s in train.sources] == [cub.paths[1], cub.paths[2]]
    assert [s.sample_id for s in test.sources] == [cub.paths[3], cub.paths[4]]
    assert train.ground_truth.joint_names == cub_fixture.PART_NAMES and not train.ground_truth.has_3d
    assert train.record["background"] == "photo" and train.record["joints_3d_frame"] is None
    source = test.sources[1]
    locs = cub.parts[4]
    assert source.path == cub.root / "images" / cub.paths[4]
    assert source.annotation.box == tuple(float(v) for v in cub.boxes[4])
    assert source.annotation.visible.tolist() == [True] * 13 + [False] * 2
    assert np.allclose(source.annotation.joints_2d[:13], locs[:13, :2] + 0.5)  # pixel index -> corner
    assert not source.annotation.joints_2d[13:].any()
    assert [s.sample_id for s in read_cub(cub.root, DatasetSelection(split="test", stride=2)).sources] == [
        cub.paths[3]
    ]


def test_cub_box_crop_maps_parts_onto_their_blobs(cub):
    for source in read_cub(cub.root, DatasetSelection(split="train")).sources:
        prepared = prepare_annotated_image(source.path, source.annotation, SIZE, 0.85, 10**8)
        x, y, w, h = source.annotation.box
        x0, y0, side = prepared.crop_box
        assert side == np.ceil(max(w, h) / 0.85)
        assert abs(x0 + side / 2 - (x + w / 2)) <= 0.5 and abs(y0 + side / 2 - (y + h / 2)) <= 0.5
        spec = read_cub(cub.root, DatasetSelection()).ground_truth
        rows = ground_truth_rows(source.annotation, prepared, 4, spec)
        for part, colour in cub_fixture.BLOBS.items():
            found = blob_centre(prepared.image, colour)
            assert np.linalg.norm(found - rows["ground_truth/joints_2d"][0, part]) < 1.5, (
                source.sample_id,
                part,
            )
        assert rows["ground_truth/joints_2d_visible"][0].tolist() == [1] * 13 + [0] * 2


def test_cub_segmentations_make_the_background_white(tmp_path):
    fake = cub_fixture.write_fake_cub(tmp_path / "CUB", with_segmentations=True)
    dataset = read_cub(fake.root, DatasetSelection(split="test"))
    assert dataset.record["background"] == "mask"
    source = dataset.sources[0]
    assert source.annotation.mask_path == fake.root / "segmentations" / fake.paths[3].replace(".jpg", ".png")
    prepared = prepare_annotated_image(source.path, source.annotation, SIZE, 0.85, 10**8)
    assert tuple(prepared.image[:, 1, 1]) == (255, 255, 255)
    assert not np.any(np.all(prepared.image.transpose(1, 2, 0) == cub_fixture.GROUND, axis=-1))


def test_dogs_parse_twenty_joints_splits_and_multi_dog_ids(dogs):
    train = read_stanford_dogs(dogs.root, DatasetSelection(split="train"))
    test = read_stanford_dogs(dogs.root, DatasetSelection(split="test"))
    assert [s.sample_id for s in train.sources] == [
        "n02085620-Chihuahua/n02085620_1.jpg",
        "n02087394-Rhodesian_ridgeback/n02087394_3.jpg#2",
    ]
    assert [s.sample_id for s in test.sources][1] == "n02087394-Rhodesian_ridgeback/n02087394_3.jpg#3"
    assert train.ground_truth.joint_names == JOINT_NAMES and len(JOINT_NAMES) == 20
    assert train.ground_truth.has_2d and not train.ground_truth.has_3d
    annotation = test.sources[0].annotation
    joints = np.array(dogs.entries[1]["joints"])
    assert annotation.visible.tolist() == [True] * 3 + [False] + [True] * 16  # (x, y, 0) is hidden
    assert np.allclose(annotation.joints_2d[4:], joints[4:20, :2] + 0.5) and not annotation.joints_2d[3].any()
    assert annotation.box == tuple(float(v) for v in dogs.entries[1]["img_bbox"])
    assert test.sources[1].path == dogs.root / "Images" / dogs.entries[3]["img_path"]
    with pytest.raises(ConfigError, match="--actions applies to h36m only"):
        read_stanford_dogs(dogs.root, DatasetSelection(actions="paper"))


def test_dogs_masks_whiten_the_other_dog_and_joints_land_on_their_blobs(dogs):
    source = read_stanford_dogs(dogs.root, DatasetSelection(split="test")).sources[1]  # second dog of a pair
    prepared = prepare_annotated_image(source.path, source.annotation, SIZE, 0.85, 10**8)
    spec = read_stanford_dogs(dogs.root, DatasetSelection()).ground_truth
    uv = ground_truth_rows(source.annotation, prepared, 4, spec)["ground_truth/joints_2d"][0]
    for joint, colour in dogs_fixture.BLOBS.items():
        assert np.linalg.norm(blob_centre(prepared.image, colour) - uv[joint]) < 1.5, joint
    rgb = prepared.image.transpose(1, 2, 0)
    assert not np.any(np.all(rgb == dogs_fixture.GROUND, axis=-1))  # the photo's ground is gone
    assert prepared.mask[SIZE // 2, SIZE // 2] == 1 and prepared.mask[0, 0] == 0  # the mask is the input mask


def test_dogs_end_to_end_store_has_2d_ground_truth_only(tmp_path, tiny_model_dir, dogs):
    config = GenerationConfig(orbit=OrbitConfig(num_frames=8), num_inference_steps=4, decode_chunk_size=8)
    job = GenerateJob(
        images=None,
        model=tiny_model_dir,
        out=tmp_path / "dogs.zarr",
        config=config,
        dataset=f"dogs:{dogs.root}",
        selection=DatasetSelection(split="train"),
        progress=False,
    )
    summary = run_generate(job)
    assert summary.done == 2 and not summary.failed
    reader = CacheReader(tmp_path / "dogs.zarr")
    assert "ground_truth/joints_3d" not in reader.layout.arrays()
    truth = reader.read_ground_truth([0, 1])
    assert truth["joints_2d"].shape == (2, 4, 20, 2) and truth["joints_2d_visible"][:, 1:].sum() == 0
    assert reader.store.metadata.source["dataset"] == "dogs"
    images = reader.read_batch([0, 1], ["input_image"])["input_image"]
    for joint, colour in dogs_fixture.BLOBS.items():
        assert np.linalg.norm(blob_centre(images[0], colour) - truth["joints_2d"][0, 0, joint]) < 1.5
