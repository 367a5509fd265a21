"""Malformed, missing or unknown annotation files: one error class, naming the file and line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cache_cli import app
from stages.datasets.cub import read_cub
from stages.datasets.errors import AnnotationError
from stages.datasets.h36m import read_h36m
from stages.datasets.registry import read_dataset
from stages.datasets.selection import DatasetSelection
from stages.datasets.stanford_dogs import read_stanford_dogs
from stages.errors import StageError
from tests.fixtures.cub import write_fake_cub
from tests.fixtures.h36m import write_fake_h36m
from tests.fixtures.stanford_dogs import write_fake_dogs

TEST = DatasetSelection(split="test")


def replace_line(path, number, text):
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_cub_malformed_lines_name_file_and_line(tmp_path):
    fake = write_fake_cub(tmp_path / "cub")
    locs = fake.root / "parts" / "part_locs.txt"
    replace_line(locs, 17, "2 2 13.0")
    with pytest.raises(AnnotationError) as error:
        read_cub(fake.root, TEST)
    assert str(error.value) == f"{locs}:17: expected 5 fields 'img_id part_id x y visible', got 3"
    assert isinstance(error.value, StageError)

    replace_line(locs, 17, "2 2 13.0 east 1")
    with pytest.raises(AnnotationError, match=r"part_locs.txt:17: y must be a number, got 'east'"):
        read_cub(fake.root, TEST)
    replace_line(locs, 17, "2 99 13.0 4.0 1")
    with pytest.raises(AnnotationError, match=r"part_locs.txt:17: part id 99 is not in parts/parts.txt"):
        read_cub(fake.root, TEST)
    replace_line(locs, 17, "2 1 13.0 4.0 1")
    with pytest.raises(AnnotationError, match=r"part_locs.txt:17: second location of part 1 in image 2"):
        read_cub(fake.root, TEST)

    boxes = fake.root / "bounding_boxes.txt"
    replace_line(boxes, 3, "7 1.0 2.0 3.0 4.0")
    with pytest.raises(AnnotationError, match=r"bounding_boxes.txt:3: image id 7 is not in images.txt"):
        read_cub(fake.root, TEST)
    replace_line(boxes, 3, "")
    with pytest.raises(
        AnnotationError, match=r"bounding_boxes.txt: no bounding box for image id 3 \(images.txt:3\)"
    ):
        read_cub(fake.root, TEST)


def test_missing_files_name_the_file_and_show_the_layout(tmp_path):
    fake = write_fake_cub(tmp_path / "cub")
    (fake.root / "parts" / "parts.txt").unlink()
    with pytest.raises(
        AnnotationError, match=r"parts\.txt: required file not found; a cub root must look"
    ) as error:
        read_cub(fake.root, TEST)
    assert "ROOT/parts/part_locs.txt     <image_id> <part_id> <x> <y> <visible>" in str(error.value)

    h36m = write_fake_h36m(tmp_path / "h36m")
    (h36m.root / "cameras.json").unlink()
    with pytest.raises(
        AnnotationError, match=r"cameras\.json: required file not found; a h36m root"
    ) as error:
        read_h36m(h36m.root, TEST)
    assert "ROOT/images/<subject>/<action>.<camera_id>/<frame:06d>.jpg" in str(error.value)


def test_h36m_malformed_cameras_and_npz(tmp_path):
    fake = write_fake_h36m(tmp_path / "h36m")
    cameras_path = fake.root / "cameras.json"
    cameras = json.loads(cameras_path.read_text())
    del cameras["S9"]["55011271"]["focal_length"]
    cameras_path.write_text(json.dumps(cameras))
    with pytest.raises(AnnotationError, match=r"cameras\.json: S9/55011271: missing field 'focal_length'"):
        read_h36m(fake.root, TEST)
    cameras["S9"]["55011271"]["focal_length"] = [1.0, 2.0, 3.0]
    cameras_path.write_text(json.dumps(cameras))
    with pytest.raises(AnnotationError, match=r"S9/55011271/focal_length: expected a list of 2 numbers"):
        read_h36m(fake.root, TEST)
    cameras_path.write_text('{\n "S9": {\n  "55011271": [1, 2,]\n }\n}\n')
    with pytest.raises(AnnotationError, match=r"cameras\.json:3: not valid JSON"):
        read_h36m(fake.root, TEST)

    np.savez(fake.root / "data_3d_h36m.npz", poses=np.zeros(3))
    with pytest.raises(
        AnnotationError, match=r"data_3d_h36m\.npz: no array 'positions_3d' \(it has: poses\)"
    ):
        read_h36m(fake.root, TEST)
    np.savez(fake.root / "data_3d_h36m.npz", positions_3d={"S9": {"Walking": np.zeros((4, 17, 3))}})
    with pytest.raises(AnnotationError, match=r"positions_3d/S9/Walking: expected \(F, 32, 3\)"):
        read_h36m(fake.root, TEST)
    (fake.root / "data_3d_h36m.npz").write_bytes(b"not a zip")
    with pytest.raises(AnnotationError, match=r"data_3d_h36m\.npz: not a readable npz"):
        read_h36m(fake.root, TEST)


def test_dogs_malformed_json_and_split_files(tmp_path):
    fake = write_fake_dogs(tmp_path / "dogs")
    json_path = fake.root / "StanfordExtra_v12" / "StanfordExtra_v12.json"
    entries = json.loads(json_path.read_text())
    entries[1]["joints"] = entries[1]["joints"][:5]
    json_path.write_text(json.dumps(entries))
    with pytest.raises(AnnotationError, match=r"StanfordExtra_v12\.json: \[1\]/joints: expected 24 joints"):
        read_stanford_dogs(fake.root, TEST)
    entries[1]["joints"] = [[1.0, 2.0, 1.0]] * 23 + [["x", 2.0, 1.0]]
    json_path.write_text(json.dumps(entries))
    read_stanford_dogs(fake.root, TEST)  # joints 20-23 are not read
    entries[1]["img_path"] = "../../etc/passwd"
    json_path.write_text(json.dumps(entries))
    with pytest.raises(AnnotationError, match=r"\[1\]/img_path: expected a relative path"):
        read_stanford_dogs(fake.root, TEST)
    split = fake.root / "StanfordExtra_v12" / "test_stanford_StanfordExtra_v12.npy"
    np.save(split, np.array([1, 9]))
    with pytest.raises(
        AnnotationError, match=r"test_stanford_StanfordExtra_v12\.npy: index 9 is outside the 4"
    ):
        read_stanford_dogs(fake.root, TEST)


def test_unknown_dataset_lists_the_choices_on_the_command_line(tmp_path, tiny_model_dir):
    with pytest.raises(AnnotationError, match=r"unknown dataset 'coco'; choose from h36m, cub, dogs"):
        read_dataset(f"coco:{tmp_path}", TEST)
    with pytest.raises(AnnotationError, match=r"must be NAME:ROOT"):
        read_dataset("h36m", TEST)
    runner = CliRunner()
    out = str(tmp_path / "x.zarr")
    model = ["--model", str(tiny_model_dir)]
    result = runner.invoke(app, ["generate", "--source", f"coco:{tmp_path}", *model, "--out", out])
    assert result.exit_code == 2 and "choose from h36m, cub, dogs" in result.output
    result = runner.invoke(app, ["generate", str(tmp_path), *model, "--out", out, "--stride", "3"])
    assert result.exit_code == 2 and "--stride need --source h36m:ROOT" in result.output
    result = runner.invoke(
        app, ["generate", "--source", f"cub:{tmp_path}", *model, "--out", out, "--split", "val"]
    )
    assert result.exit_code == 2 and "--split must be one of ('train', 'test')" in result.output
