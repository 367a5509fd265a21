"""Hostile inputs and faults (issue 13): nothing outside the output is deleted, no user file is unpickled."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest
from typer.testing import CliRunner

from cache_schema import CacheError
from cache_schema.store import check_removable_store
from pipeline.cache_cli import app

FAST = ["--frames", "8", "--steps", "4", "--decode-chunk-size", "8", "--no-progress"]


def _generate(out, images, model, *extra):
    return CliRunner().invoke(
        app, ["generate", str(images), "--model", str(model), "--out", str(out), *FAST, *extra]
    )


def test_overwrite_never_deletes_a_folder_that_is_not_a_store(tmp_path, tiny_model_dir, good_images):
    precious = tmp_path / "photos-backup"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"not really a jpeg, but mine")
    result = _generate(precious, good_images, tiny_model_dir, "--overwrite")
    assert result.exit_code == 2, result.output
    assert "not a KeyDiff3D store" in result.output and "Traceback" not in result.output
    assert (precious / "holiday.jpg").read_bytes() == b"not really a jpeg, but mine"

    afile = tmp_path / "notes.txt"
    afile.write_text("keep me")
    result = _generate(afile, good_images, tiny_model_dir, "--overwrite")
    assert result.exit_code == 2 and "it is a file" in result.output
    assert afile.read_text() == "keep me"


def test_overwrite_replaces_a_finished_or_half_created_store(tmp_path, tiny_model_dir, good_images):
    out = tmp_path / "c.zarr"
    assert _generate(out, good_images, tiny_model_dir).exit_code == 0
    check_removable_store(out)  # finished: ours
    assert _generate(out, good_images, tiny_model_dir, "--overwrite", "--tau", "300").exit_code == 0
    # Half-created: arrays written, metadata attributes not yet.
    half = tmp_path / "half.zarr"
    half.mkdir()
    (half / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    (half / "views").mkdir()
    (half / "views" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "array"}')
    check_removable_store(half)
    (half / "diary.txt").write_text("not a zarr node")
    with pytest.raises(CacheError, match="diary.txt"):
        check_removable_store(half)


@pytest.mark.parametrize("where", ["inside", "same", "around"])
def test_out_overlapping_the_inputs_is_refused(tmp_path, tiny_model_dir, good_images, where):
    out = {"inside": good_images / "store.zarr", "same": good_images, "around": good_images.parent}[where]
    before = sorted(p.name for p in good_images.iterdir())
    result = _generate(out, good_images, tiny_model_dir, "--overwrite")
    assert result.exit_code == 2 and "overlap" in result.output, result.output
    assert sorted(p.name for p in good_images.iterdir()) == before


def _npz_with_object_array(path, value):
    """An npz whose one member is a pickled object array, as VideoPose3D writes it."""
    array = np.empty((), dtype=object)
    array[()] = value
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("positions_3d.npy", buffer.getvalue())


class _Payload:
    """Unpickling this calls open(marker, 'w'): code running from a data file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_h36m_poses_are_read_without_running_pickled_code(tmp_path):
    from stages.datasets.h36m import read_positions

    good = tmp_path / "good.npz"
    poses = {"S1": {"Walking": np.arange(96 * 3.0, dtype=np.float32).reshape(3, 32, 3)}}
    _npz_with_object_array(good, poses)
    loaded = read_positions(good)
    np.testing.assert_array_equal(loaded["S1"]["Walking"], poses["S1"]["Walking"])

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.npz"
    _npz_with_object_array(evil, {"S1": {"Walking": _Payload(marker)}})
    with pytest.raises(ValueError, match=r"evil.npz.*refusing to load .*open"):
        read_positions(evil)
    assert not marker.exists()
    assert pickle.dumps(_Payload(marker))  # the payload itself is a valid pickle


def test_make_tiny_model_never_replaces_a_folder_it_did_not_write(tmp_path):
    # A converted real SV3D-p has the same layout as a tiny one, but not the marker file.
    real = tmp_path / "sv3d_p"
    (real / "unet").mkdir(parents=True)
    (real / "model_index.json").write_text('{"_class_name": "SV3DPipeline"}')
    (real / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"hours of conversion")
    for extra in ([], ["--overwrite"]):
        result = CliRunner().invoke(app, ["make-tiny-model", str(real), *extra])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert str(real) in result.output
    assert (real / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == b"hours of conversion"

    tiny = tmp_path / "tiny"
    assert CliRunner().invoke(app, ["make-tiny-model", str(tiny)]).exit_code == 0
    again = CliRunner().invoke(app, ["make-tiny-model", str(tiny), "--seed", "1"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    (tiny / "notes.txt").write_text("mine")
    again = CliRunner().invoke(app, ["make-tiny-model", str(tiny), "--overwrite"])
    assert again.exit_code == 2 and "notes.txt" in again.output
    (tiny / "notes.txt").unlink()
    # A digest cache, and the temp file of a digest write that was killed, belong to the model.
    (tiny / ".keydiff3d-weight-digests.json").write_text("{}")
    (tiny / ".keydiff3d-weight-digests.json.k3x9.tmp").write_text("{")
    replaced = CliRunner().invoke(app, ["make-tiny-model", str(tiny), "--overwrite", "--seed", "1"])
    assert replaced.exit_code == 0, replaced.output
    assert '"seed": 1' in (tiny / "keydiff3d_tiny_model.json").read_text()
