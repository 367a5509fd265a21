"""A damaged or shared store (reliability issue): one writer at a time, missing shard files,
damaged zarr.json files and chunks that do not decode are named in one line, exit code 2.

Apart from tests/test_faults.py because every test here needs the synthetic renderer
(pybullet), whose absence must not skip those.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import zarr

pytest.importorskip("pybullet")

from typer.testing import CliRunner  # noqa: E402

from cache_schema import CacheReader, StoreDamagedError  # noqa: E402
from pipeline.cache_cli import app  # noqa: E402
from pipeline.train_cli import app as train_app  # noqa: E402
from tests.store.helpers import (  # noqa: E402
    files_of,
    flip_byte,
    generate,
    hold_lock_in_subprocess,
    one_error_line,
    shard_file,
)

# -- 1. one writer per store ------------------------------------------------------------


def test_a_second_writer_is_refused_and_a_killed_holder_does_not_block(store):
    before = files_of(store)
    holder = hold_lock_in_subprocess(store)
    try:
        for extra in ([], ["--overwrite"]):
            line = one_error_line(generate(store, *extra))
            assert line == (
                f"error: {store}: store is in use by PID {holder.pid} on {socket.gethostname()} "
                f"(lock {store}.lock)"
            )
        assert files_of(store) == before  # --overwrite deleted nothing
        # Readers take no lock.
        assert CliRunner().invoke(app, ["verify", str(store)]).exit_code == 0
        assert CliRunner().invoke(app, ["inspect", str(store)]).exit_code == 0
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the kernel drops the flock
        holder.wait()
    assert Path(f"{store}.lock").exists() and Path(f"{store}.lock.info").exists()  # left by the dead holder
    result = generate(store, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "4 done now" in result.output
    assert not Path(f"{store}.lock.info").exists()  # a clean release removes the holder record


# -- 2. a missing shard file is not zeros -----------------------------------------------

PER_SAMPLE = [
    "views",
    "view_masks",
    "input_image",
    "input_mask",
    "crop_box",
    "source_size",
    "intrinsics",
    "world_to_camera",
    "ground_truth/joints_3d",
    "ground_truth/joints_2d",
    "ground_truth/joints_2d_visible",
    "sample_id",
]


def test_verify_names_every_missing_shard_file_of_done_samples(store):
    for name in PER_SAMPLE:
        shard_file(store, name, 1).unlink()
    result = CliRunner().invoke(app, ["verify", str(store)])
    assert result.exit_code == 2, result.output
    assert "ok: no problems" not in result.output and "Traceback" not in result.output
    for name in PER_SAMPLE:
        assert f"problem: {name} shard 1 (samples 2..3, 2 done): file {name}/c/1" in result.output, name
    assert "shard 0" not in result.output


def test_a_missing_shard_file_of_failed_samples_only_is_fine(store):
    # zarr writes no file for a shard whose samples are all zeros (failed ones are).
    shard_file(store, "views", 1).unlink()
    zarr.open_array(str(store / "status"), mode="r+")[2:4] = np.array([2, 2], dtype=np.uint8)
    zarr.open_array(str(store / "failure_reason"), mode="r+")[2:4] = np.array(["x", "y"])
    result = CliRunner().invoke(app, ["verify", str(store)])
    assert result.exit_code == 0 and "ok: no problems found" in result.output, result.output


def test_the_reader_refuses_a_done_sample_whose_shard_file_is_missing(store):
    gone = shard_file(store, "view_masks", 1)
    gone.unlink()
    reader = CacheReader(store)
    assert reader.read_batch([0, 1], ("view_masks",))["view_masks"].max() == 1  # shard 0 is intact
    with pytest.raises(
        StoreDamagedError, match=rf"{store}: array view_masks shard 1 .*its file view_masks/c/1"
    ):
        reader.read_batch([1, 2], ("views", "view_masks"))
    shard_file(store, "ground_truth/joints_3d", 1).unlink()
    with pytest.raises(StoreDamagedError, match="ground_truth/joints_3d shard 1"):
        reader.read_ground_truth([3])
    # An empty file reads as zeros in zarr, without an error: refused like a missing one.
    shard_file(store, "views", 0).write_bytes(b"")
    with pytest.raises(
        StoreDamagedError, match=r"array views shard 0 .*its file views/c/0\S* is missing or empty"
    ):
        CacheReader(store).read_batch([0], ("views",))


def fit(store: Path, tmp_path: Path):
    return CliRunner().invoke(
        train_app,
        [
            "fit", str(store), "--out", str(tmp_path / "run"), "--steps", "1", "--batch-size", "4",
            "--perceptual", "ssim", "--num-keypoints", "5", "--volume-size", "8", "--workers", "1",
            "--device", "cpu", "--no-progress",
        ],
    )  # fmt: skip


def test_fit_names_a_missing_shard_file_in_one_line(store, tmp_path):
    shard_file(store, "views", 1).unlink()
    line = one_error_line(fit(store, tmp_path))
    assert f"{store}: array views shard 1 (samples 2..3) has done samples but its file views/c/1" in line


# -- 3. a damaged zarr.json is named, never trusted -------------------------------------


def truncate(path: Path) -> None:
    path.write_text(path.read_text()[: len(path.read_text()) // 2])


DAMAGES = {
    "array truncated": ("views", truncate),
    "array deleted": ("input_mask", Path.unlink),
    "group deleted": ("ground_truth", Path.unlink),
    "store truncated": ("", truncate),
    "store deleted": ("", Path.unlink),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_zarr_json_is_named_by_generate_verify_and_inspect(store, damage):
    node, harm = DAMAGES[damage]
    harm(store / node / "zarr.json")
    expected = f"error: {store / node if node else store}: damaged or missing zarr.json ("
    for result in (
        generate(store),
        CliRunner().invoke(app, ["verify", str(store)]),
        CliRunner().invoke(app, ["inspect", str(store)]),
    ):
        assert one_error_line(result).startswith(expected), result.output


# -- 4. a chunk that does not decode is named -------------------------------------------


def test_generate_names_a_chunk_that_does_not_decode(store):
    status = shard_file(store, "status", 0)
    intact = status.read_bytes()
    flip_byte(status)
    line = one_error_line(generate(store))
    assert f"{store}: array status shard 0 (samples 0..1, file status/c/0) does not decode" in line
    status.write_bytes(intact)

    # A shard with a pending sample is read back to rewrite its done one.
    flip_byte(shard_file(store, "views", 1))
    zarr.open_array(str(store / "status"), mode="r+")[3] = 0
    line = one_error_line(generate(store))
    assert f"{store}: array views shard 1 (samples 2..3, file views/c/1/0/0/0/0) does not decode" in line


def test_fit_names_a_chunk_that_does_not_decode(store, tmp_path):
    flip_byte(shard_file(store, "views", 1))
    line = one_error_line(fit(store, tmp_path))
    assert f"{store}: array views shard 1 (samples 2..3, file views/c/1/0/0/0/0) does not decode" in line
    assert "checksum" in line
