"""`verify --repair` (issue 13): a damaged shard no longer blocks the whole store. Its
samples are marked pending under the writer lock, the next `generate` redoes them, and
the store then verifies ok and holds what a fresh run writes."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("pybullet")

from typer.testing import CliRunner  # noqa: E402

from cache_schema import CacheStore  # noqa: E402
from pipeline.cache_cli import app  # noqa: E402
from tests.store.helpers import (  # noqa: E402
    files_of,
    flip_byte,
    generate,
    hold_lock_in_subprocess,
    one_error_line,
    shard_file,
)


def verify(path, *extra):
    return CliRunner().invoke(app, ["verify", str(path), *extra])


def read_all(path):
    opened = CacheStore.open(path)
    return {name: np.asarray(opened.array(name)[:]) for name in opened.layout.arrays()}


def assert_redone_like_a_fresh_run(path, fresh_store, redone: int):
    result = generate(path)
    assert result.exit_code == 0, result.output
    assert f"{redone} done now" in result.output
    result = verify(path)
    assert result.exit_code == 0 and "ok: no problems found" in result.output, result.output
    fresh, repaired = read_all(fresh_store), read_all(path)
    for name in fresh:
        assert np.array_equal(fresh[name], repaired[name]), name  # generation is seeded per sample


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_a_missing_or_empty_shard_file_is_marked_pending_and_redone(store, pristine, damage):
    # An empty file (a crash between creating and writing it) reads as zeros in zarr,
    # without an error, exactly like a missing one.
    target = shard_file(store, "views", 1)
    target.unlink() if damage == "deleted" else target.write_bytes(b"")
    before = verify(store)
    assert before.exit_code == 2 and "--repair" in before.output, before.output

    result = verify(store, "--repair")
    assert result.exit_code == 0, result.output
    assert (
        "repaired: shard 1 (samples 2..3): views/c/1/0/0/0/0 is missing or empty; "
        "marked 2 samples pending (2 were done, 0 failed)"
    ) in result.output
    assert "shard 0" not in result.output and "ok: no problems found" in result.output
    assert CacheStore.open(store).statuses().tolist() == [1, 1, 0, 0]
    assert_redone_like_a_fresh_run(store, pristine, redone=2)


def test_a_status_chunk_that_does_not_decode_is_rewritten_as_pending(store, pristine):
    flip_byte(shard_file(store, "status", 0))
    before = verify(store)
    assert before.exit_code == 1 and "status/failure_reason unreadable" in before.output, before.output

    result = verify(store, "--repair")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("repaired: "))
    assert line.startswith("repaired: shard 0 (samples 0..1): status/c/0 does not decode (")
    assert line.endswith("marked 2 samples pending (its status did not decode); removed status/c/0")
    assert CacheStore.open(store).statuses().tolist() == [0, 0, 1, 1]
    assert_redone_like_a_fresh_run(store, pristine, redone=2)


def test_undecodable_data_and_id_chunks_are_removed_and_rewritten(store, pristine):
    flip_byte(shard_file(store, "views", 0))
    flip_byte(shard_file(store, "sample_id", 1))
    result = verify(store, "--repair")
    assert result.exit_code == 0, result.output
    assert "shard 0 (samples 0..1): views/c/0/0/0/0/0 does not decode" in result.output
    assert "shard 1 (samples 2..3): sample_id/c/1 does not decode" in result.output
    assert "removed views/c/0/0/0/0/0" in result.output and "removed sample_id/c/1" in result.output
    assert not (store / "views/c/0/0/0/0/0").exists() and not (store / "sample_id/c/1").exists()
    assert_redone_like_a_fresh_run(store, pristine, redone=4)
    assert files_of(store) == files_of(pristine)  # byte for byte, ids included


def test_unknown_status_codes_mark_their_shard_pending(store, pristine):
    opened = CacheStore.open(store, writable=True)
    opened.array("status")[2:4] = np.array([1, 9], dtype=np.uint8)
    result = verify(store, "--repair")
    assert "shard 1 (samples 2..3): status/c/1 holds unknown status codes [9]" in result.output
    assert_redone_like_a_fresh_run(store, pristine, redone=2)


def test_repair_takes_the_writer_lock(store):
    shard_file(store, "views", 1).unlink()
    before = files_of(store)
    holder = hold_lock_in_subprocess(store)
    try:
        line = one_error_line(verify(store, "--repair"))
        assert f"{store}: store is in use by PID {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()
    assert files_of(store) == before


def test_repair_never_removes_a_file_outside_the_store(store, tmp_path):
    outside = tmp_path / "precious.bin"
    outside.write_bytes(b"not a zarr shard, and not the store's to delete")
    inside = shard_file(store, "views", 1)
    inside.unlink()
    os.symlink(outside, inside)
    line = one_error_line(verify(store, "--repair"))
    assert "outside the store; refusing to remove it" in line
    assert outside.read_bytes() == b"not a zarr shard, and not the store's to delete"


def test_a_healthy_store_is_left_as_it_was(store):
    before = files_of(store)
    result = verify(store, "--repair")
    assert result.exit_code == 0 and "repair: no damaged shard found" in result.output
    assert files_of(store) == before


def test_repair_and_report_read_the_store_once_and_keep_the_healthy_shards_findings(store, monkeypatch):
    """A missing file in shard 1 is repaired; a bad camera in shard 0 (not damage: repair
    leaves it) is still reported after the repair, from the same read of the store."""
    import pipeline.store_report as store_report

    shard_file(store, "views", 1).unlink()
    opened = CacheStore.open(store, writable=True)
    intrinsics = np.asarray(opened.array("intrinsics")[0:2])
    intrinsics[1, 0, 0, 0] = -1.0
    opened.array("intrinsics")[0:2] = intrinsics
    scans = []
    real = store_report.find_damaged_shards
    monkeypatch.setattr(store_report, "find_damaged_shards", lambda *a: scans.append(1) or real(*a))

    result = verify(store, "--repair")
    assert len(scans) == 1
    assert "repaired: shard 1 (samples 2..3): views/c/1/0/0/0/0 is missing or empty" in result.output
    problems = [line for line in result.output.splitlines() if line.startswith("problem: ")]
    assert problems == [
        "problem: intrinsics: non-positive focal or principal point outside the image in [1]"
    ], result.output
    assert result.exit_code == 1
    assert CacheStore.open(store).statuses().tolist() == [1, 1, 0, 0]
