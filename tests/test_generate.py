"""Stage one end to end with the tiny SV3D-p model: store, failures, resume, dask, verify."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cache_schema import STATUS_DONE, STATUS_FAILED, CacheReader, CacheStore, SchemaMismatchError
from pipeline.generate import GenerateJob, run_generate
from pipeline.store_report import verify_store
from stages.cameras import project_points
from stages.config import GenerationConfig, OrbitConfig
from tests.fixtures.images import write_bad_images, write_good_images
from tests.test_cameras import SPHERES, raycast_spheres

FAST = GenerationConfig(orbit=OrbitConfig(num_frames=8), num_inference_steps=4, decode_chunk_size=8)


def job(tmp_path, images, model, name="c.zarr", **overrides):
    fields = dict(
        images=images, model=model, out=tmp_path / name, config=FAST, samples_per_shard=2, progress=False
    )
    fields.update(overrides)
    return GenerateJob(**fields)


def read_all(path):
    store = CacheStore.open(path)
    return {name: np.asarray(store.array(name)[:]) for name in store.layout.arrays()}


def assert_same_store(a, b):
    left, right = read_all(a), read_all(b)
    assert left.keys() == right.keys()
    for name in left:
        assert np.array_equal(left[name], right[name]), name


@pytest.fixture
def mixed_images(tmp_path):
    folder = tmp_path / "mixed"
    write_good_images(folder)
    bad = write_bad_images(folder / "bad")
    return folder, bad


def test_tiny_model_end_to_end_records_bad_inputs_and_keeps_the_rest(tmp_path, tiny_model_dir, mixed_images):
    folder, bad = mixed_images
    summary = run_generate(
        job(tmp_path, folder, tiny_model_dir, config=dataclasses.replace(FAST, max_image_pixels=10_000_000))
    )
    assert summary.done == 6 and summary.errors == []
    failed = dict(summary.failed)
    assert set(failed) == {f"bad/{p.name}" for p in bad.values()}
    assert "exceeds max_image_pixels" in failed["bad/huge.png"]
    assert "truncated" in failed["bad/truncated.jpg"]

    reader = CacheReader(tmp_path / "c.zarr")
    meta = reader.store.metadata
    assert meta.capture["mapping"] == "ddpm" and 0 <= meta.capture["step_index"] < 4
    assert [layer.name for layer in meta.layout.feature_layers] == [f"up_blocks.{i}" for i in range(4)]
    done = reader.done_indices()
    assert len(done) == 6
    batch = reader.read_batch(
        done, ["input_image", "input_mask", "views", "view_masks"] + reader.feature_array_names()
    )
    assert batch["views"].shape == (6, 4, 3, 64, 64)
    assert np.array_equal(batch["views"][:, 0], batch["input_image"])  # view 0 is the input
    assert np.array_equal(batch["view_masks"][:, 0], batch["input_mask"])
    for name in reader.feature_array_names():
        assert batch[name].dtype == np.float16 and np.isfinite(batch[name]).all()
        assert np.abs(batch[name]).max() > 0
    status = reader.store.statuses()
    assert (
        status[[i for i, s in enumerate(reader.sample_ids()) if s.startswith("bad/")]] == STATUS_FAILED
    ).all()
    problems, checked = verify_store(tmp_path / "c.zarr")
    assert problems == [] and checked > 0


def test_stored_cameras_project_a_known_geometry_onto_the_right_pixels(tmp_path, tiny_model_dir, good_images):
    run_generate(job(tmp_path, good_images, tiny_model_dir))
    reader = CacheReader(tmp_path / "c.zarr")
    sample = reader.read_sample(int(reader.done_indices()[0]), ["intrinsics", "world_to_camera"])
    cams = reader.store.metadata.cameras
    size = reader.layout.image_size
    uv, _ = project_points(
        SPHERES, sample["intrinsics"].astype(np.float64), sample["world_to_camera"].astype(np.float64)
    )
    for view, frame in enumerate(cams["kept_frames"]):
        masks = raycast_spheres(
            cams["frame_elevations_deg"][frame],
            cams["frame_azimuths_deg"][frame],
            cams["radius"],
            cams["fov_deg"],
            size,
        )
        for index, mask in enumerate(masks):
            u, v = np.floor(uv[view, index]).astype(int)
            assert mask[v, u], (view, index)
    assert cams["frame_azimuths_deg"][cams["kept_frames"][0]] == 0.0


def test_resume_after_a_crash_in_the_middle_of_a_shard(tmp_path, tiny_model_dir, good_images, monkeypatch):
    import stages.stage_one as stage_one

    run_generate(job(tmp_path, good_images, tiny_model_dir, name="reference.zarr"))
    real = stage_one.build_sample
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # second sample of the second shard
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(stage_one, "build_sample", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_generate(job(tmp_path, good_images, tiny_model_dir))
    status = CacheStore.open(tmp_path / "c.zarr").statuses()
    assert status.tolist() == [STATUS_DONE, STATUS_DONE, 0, 0, 0, 0]
    monkeypatch.setattr(stage_one, "build_sample", real)
    summary = run_generate(job(tmp_path, good_images, tiny_model_dir))
    assert summary.done == 4 and summary.skipped == 2
    assert_same_store(tmp_path / "c.zarr", tmp_path / "reference.zarr")
    again = run_generate(job(tmp_path, good_images, tiny_model_dir))
    assert again.done == 0 and again.skipped == 6


def test_other_config_is_refused_unless_overwrite(tmp_path, tiny_model_dir, good_images):
    run_generate(job(tmp_path, good_images, tiny_model_dir))
    other = dataclasses.replace(FAST, tau=300)
    with pytest.raises(SchemaMismatchError, match="generation.tau"):
        run_generate(job(tmp_path, good_images, tiny_model_dir, config=other))
    summary = run_generate(job(tmp_path, good_images, tiny_model_dir, config=other, overwrite=True))
    assert summary.done == 6
    assert CacheStore.open(tmp_path / "c.zarr").metadata.generation["tau"] == 300


def test_one_and_two_dask_workers_write_identical_stores(tmp_path, tiny_model_dir, good_images):
    local = run_generate(job(tmp_path, good_images, tiny_model_dir, name="local.zarr"))
    one = run_generate(job(tmp_path, good_images, tiny_model_dir, name="one.zarr", workers=1))
    two = run_generate(job(tmp_path, good_images, tiny_model_dir, name="two.zarr", workers=2))
    assert local.done == one.done == two.done == 6 and not one.errors and not two.errors
    assert_same_store(tmp_path / "one.zarr", tmp_path / "two.zarr")
    assert_same_store(tmp_path / "local.zarr", tmp_path / "one.zarr")


def test_a_complete_store_starts_no_cluster_and_contacts_no_scheduler(
    tmp_path, tiny_model_dir, good_images, monkeypatch
):
    import dask.distributed

    run_generate(job(tmp_path, good_images, tiny_model_dir))
    before = read_all(tmp_path / "c.zarr")

    def no_cluster(*args, **kwargs):
        raise AssertionError("a LocalCluster was started for a complete store")

    monkeypatch.setattr(dask.distributed, "LocalCluster", no_cluster)
    again = run_generate(job(tmp_path, good_images, tiny_model_dir, workers=2))
    # Port 9 (discard) has nothing listening: contacting it would fail the run.
    remote = run_generate(job(tmp_path, good_images, tiny_model_dir, scheduler="tcp://127.0.0.1:9"))
    for summary in (again, remote):
        assert summary.done == 0 and summary.skipped == 6 and not summary.errors
    after = read_all(tmp_path / "c.zarr")
    assert all(np.array_equal(before[name], after[name]) for name in before)


def test_existing_scheduler_is_used_and_gives_the_same_bytes(tmp_path, tiny_model_dir, good_images):
    from dask.distributed import LocalCluster

    run_generate(job(tmp_path, good_images, tiny_model_dir, name="local.zarr"))
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        summary = run_generate(
            job(
                tmp_path, good_images, tiny_model_dir, name="remote.zarr", scheduler=cluster.scheduler_address
            )
        )
        assert cluster.scheduler.workers, "the existing cluster was not shut down by the run"
    assert summary.done == 6 and not summary.errors
    assert_same_store(tmp_path / "local.zarr", tmp_path / "remote.zarr")


@pytest.mark.parametrize("kill_after_done", [1, 3])
def test_kill_9_never_leaves_a_done_but_partial_sample(
    tmp_path, tiny_model_dir, good_images, kill_after_done
):
    run_generate(job(tmp_path, good_images, tiny_model_dir, name="reference.zarr", samples_per_shard=1))
    out = tmp_path / "killed.zarr"
    command = [
        sys.executable,
        "-m",
        "pipeline.cache_cli",
        "generate",
        str(good_images),
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--frames",
        "8",
        "--steps",
        "4",
        "--decode-chunk-size",
        "8",
        "--shard-size",
        "1",
        "--no-progress",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = int((CacheStore.open(out).statuses() == STATUS_DONE).sum())
        except Exception:  # noqa: BLE001 - the store is still being created
            done = 0
        if done >= kill_after_done:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"finished before the kill: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    killed, reference = read_all(out), read_all(tmp_path / "reference.zarr")
    status = killed["status"]
    assert 0 < (status == STATUS_DONE).sum() < len(status)
    for index in np.flatnonzero(status == STATUS_DONE):
        for name in killed:
            assert np.array_equal(killed[name][index], reference[name][index]), (name, index)
    summary = run_generate(
        job(tmp_path, good_images, tiny_model_dir, name="killed.zarr", samples_per_shard=1)
    )
    assert summary.skipped == int((status == STATUS_DONE).sum())
    assert not list(out.rglob("*.partial"))
    assert_same_store(out, tmp_path / "reference.zarr")


def test_verify_finds_damage(tmp_path, tiny_model_dir, good_images):
    run_generate(job(tmp_path, good_images, tiny_model_dir))
    path = tmp_path / "c.zarr"
    assert verify_store(path)[0] == []

    shard_file = path / "views" / "c" / "1" / "0" / "0" / "0" / "0"
    data = bytearray(shard_file.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard_file.write_bytes(bytes(data))
    store = CacheStore.open(path, writable=True)
    feature = store.array("features/up_blocks_1")
    block = np.asarray(feature[4:6])
    block[0, 0, 0, 0, 0] = np.nan
    feature[4:6] = block
    store.array("status")[0:2] = np.array([STATUS_DONE, 7], dtype=np.uint8)

    problems, _ = verify_store(path)
    text = "\n".join(problems)
    assert "views shard 1" in text and "unreadable" in text
    assert "features/up_blocks_1: NaN or inf in samples [4]" in text
    assert "unknown codes [7]" in text
