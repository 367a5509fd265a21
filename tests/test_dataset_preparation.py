"""Annotated photos: the box crop, the background choice, and 2D ground truth through crop and resize."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cache_schema import GroundTruthSpec
from stages.datasets.annotations import SourceAnnotation, box_around_points
from stages.datasets.coco_rle import decode_rle, rle_counts
from stages.datasets.preparation import ground_truth_rows, prepare_annotated_image
from stages.errors import ImageLoadError
from stages.images import prepared_to_source, source_to_prepared
from tests.fixtures.stanford_dogs import encode_rle

SIZE = 64


def photo(tmp_path, width=90, height=50):
    """A photo on a grey ground with a red square whose centre pixel is (30, 20)."""
    rgb = np.full((height, width, 3), 128, dtype=np.uint8)
    rgb[15:26, 25:36] = (255, 0, 0)
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    return path


def test_source_to_prepared_inverts_prepared_to_source_and_checks_shapes():
    crop_box = np.array([-7.0, 12.0, 50.0])
    xy = np.array([[0.0, 0.0], [13.25, 40.5], [-7.0, 62.0]])
    uv = source_to_prepared(xy, crop_box, SIZE)
    assert np.allclose(uv[0], [7 * SIZE / 50, -12 * SIZE / 50])  # hand-computed
    assert np.allclose(prepared_to_source(uv, crop_box, SIZE), xy)
    with pytest.raises(ValueError, match=r"xy must be \(\.\.\., 2\), got \(3, 3\)"):
        source_to_prepared(np.zeros((3, 3)), crop_box, SIZE)
    with pytest.raises(ValueError, match="crop_box must be"):
        source_to_prepared(xy, np.zeros(4), SIZE)


def test_box_around_points_adds_the_margin_and_clamps_to_the_image():
    xy = np.array([[10.0, 20.0], [30.0, 60.0], [500.0, 500.0]])
    visible = np.array([True, True, False])
    assert box_around_points(xy, visible, 0.0, 100, 100) == (10.0, 20.0, 20.0, 40.0)
    # 0.25 of the longer side (40) on each side, clamped at the top-left corner
    assert box_around_points(xy, visible, 0.25, 100, 100) == (0.0, 10.0, 40.0, 60.0)
    assert box_around_points(xy, np.zeros(3, bool), 0.1, 100, 100) is None
    with pytest.raises(ValueError, match=r"visible must be \(3,\)"):
        box_around_points(xy, visible[:2], 0.1, 100, 100)


def test_annotation_is_frozen_and_checks_shapes():
    annotation = SourceAnnotation(joints_2d=[[1.0, 2.0]], visible=[True], box=(0, 0, 4, 4))
    assert not annotation.joints_2d.flags.writeable and annotation.box == (0.0, 0.0, 4.0, 4.0)
    with pytest.raises(ValueError, match=r"joints_3d must be \(J, 3\), got \(2, 2\)"):
        SourceAnnotation(joints_3d=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="together"):
        SourceAnnotation(joints_2d=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="w, h > 0"):
        SourceAnnotation(box=(0, 0, 0, 3))


def test_rle_decodes_a_hand_written_string():
    # counts 3, 40, 2, 37: '3'; 40 = 8 + 1 * 32 -> 'X' (8 | 0x20) then '1'; '2'; the 4th is
    # stored as 37 - 40 = -3 -> 29 (0b11101: sign bit set, no continuation) -> 'M'
    assert rle_counts("3X12M") == [3, 40, 2, 37]
    mask = decode_rle("3X12M", 2, 41)
    assert mask.T.reshape(-1).tolist() == [False] * 3 + [True] * 40 + [False] * 2 + [True] * 37
    rng = np.random.default_rng(0)
    blobby = rng.random((13, 17)) > 0.6
    assert np.array_equal(decode_rle(encode_rle(blobby), 13, 17), blobby)
    with pytest.raises(ImageLoadError, match="covers 82 pixels"):
        decode_rle("3X12M", 4, 41)


def test_box_crop_keeps_the_photo_centres_the_box_and_maps_joints(tmp_path):
    path = photo(tmp_path)
    box = (20.0, 10.0, 21.0, 21.0)  # centred on the red square's centre (30.5, 20.5)
    annotation = SourceAnnotation(
        joints_2d=[[30.5, 20.5], [80.5, 40.5], [0.0, 0.0]], visible=[True, True, False], box=box
    )
    prepared = prepare_annotated_image(path, annotation, SIZE, 0.85, 10**8)
    x0, y0, side = prepared.crop_box
    assert (
        side == np.ceil(21 / 0.85) and abs(x0 + side / 2 - 30.5) <= 0.5 and abs(y0 + side / 2 - 20.5) <= 0.5
    )
    # background kept (photo), input mask = the box
    assert tuple(prepared.image[:, 2, 2]) == (128, 128, 128)
    box_in_prepared = source_to_prepared(np.array([[20.0, 10.0], [41.0, 31.0]]), prepared.crop_box, SIZE)
    ys, xs = np.nonzero(prepared.mask)
    assert np.allclose([xs.min(), ys.min()], box_in_prepared[0], atol=1.0)
    assert np.allclose([xs.max() + 1, ys.max() + 1], box_in_prepared[1], atol=1.0)

    spec = GroundTruthSpec(("centre", "far", "hidden"), has_3d=False)
    rows = ground_truth_rows(annotation, prepared, 4, spec)
    assert set(rows) == {"ground_truth/joints_2d", "ground_truth/joints_2d_visible"}
    uv, visible = rows["ground_truth/joints_2d"], rows["ground_truth/joints_2d_visible"]
    assert uv.shape == (4, 3, 2) and visible.tolist() == [[1, 0, 0]] + [[0, 0, 0]] * 3
    red = np.argwhere(np.all(prepared.image.transpose(1, 2, 0) == (255, 0, 0), axis=-1))
    assert np.allclose(uv[0, 0], red.mean(axis=0)[::-1] + 0.5, atol=0.75)
    assert np.allclose(uv[0, 0], [SIZE / 2, SIZE / 2], atol=0.75 * SIZE / side)
    assert not uv[1:].any() and not uv[0, 1:].any()  # outside the crop, hidden, other views: 0


def test_a_mask_whitens_the_background_and_becomes_the_input_mask(tmp_path):
    path = photo(tmp_path)
    mask = np.zeros((50, 90), dtype=bool)
    mask[15:26, 25:36] = True
    for annotation in (
        SourceAnnotation(mask_rle=encode_rle(mask)),
        SourceAnnotation(mask_path=_save_mask(tmp_path, mask)),
    ):
        prepared = prepare_annotated_image(path, annotation, SIZE, 0.5, 10**8)
        assert prepared.crop_box[2] == 22  # no box: the mask's extent (11 px) fills half
        assert tuple(prepared.image[:, 1, 1]) == (255, 255, 255)
        assert prepared.mask[SIZE // 2, SIZE // 2] == 1 and prepared.mask[1, 1] == 0
    with pytest.raises(ImageLoadError, match="mask is 10x50"):
        prepare_annotated_image(
            path, SourceAnnotation(mask_path=_save_mask(tmp_path, mask[:, :10])), SIZE, 0.85, 10**8
        )


def _save_mask(tmp_path, mask):
    path = tmp_path / f"mask{mask.shape[1]}.png"
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path
