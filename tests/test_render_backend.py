"""The synthetic world as a stage-one backend: same schema, ground truth, determinism, splits."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import zarr

pytest.importorskip("pybullet")

from typer.testing import CliRunner  # noqa: E402

from cache_schema import CacheError, CacheReader  # noqa: E402
from cache_schema.metadata import ATTRS_KEY  # noqa: E402
from pipeline.backends import RenderBackendSpec  # noqa: E402
from pipeline.cache_cli import app  # noqa: E402
from pipeline.generate import GenerateJob, run_generate  # noqa: E402
from pipeline.store_report import verify_store, write_preview  # noqa: E402
from stages.config import GenerationConfig  # noqa: E402
from stages.synthetic.world import QUADRUPED_SEGMENTS, SyntheticWorldConfig  # noqa: E402
from tests.test_generate import assert_same_store  # noqa: E402


def render(tmp_path, name, category="humanoid", split="train", seed=0, n=6):
    world = SyntheticWorldConfig(category, split, num_samples=n, seed=seed)
    job = GenerateJob(
        None,
        None,
        tmp_path / name,
        GenerationConfig(resolution=64),
        backend="render",
        world=world,
        samples_per_shard=3,
        progress=False,
    )
    return run_generate(job)


@pytest.mark.parametrize("category", ["humanoid", "quadruped"])
def test_render_cache_has_the_schema_and_joints_that_project_into_the_masks(tmp_path, category):
    summary = render(tmp_path, "w.zarr", category)
    assert summary.done == 6 and not summary.failed
    reader = CacheReader(tmp_path / "w.zarr")
    meta = reader.store.metadata
    assert meta.source["backend"] == "render" and meta.layout.feature_layers == ()
    assert meta.layout.ground_truth.num_joints == len(meta.layout.ground_truth.joint_names)
    done = reader.done_indices()
    data = reader.read_batch(done, ["views", "view_masks", "input_image", "intrinsics", "world_to_camera"])
    assert data["views"].shape == (6, 4, 3, 64, 64)
    assert np.array_equal(data["views"][:, 0], data["input_image"])
    gt = reader.read_ground_truth(done)
    uv = np.floor(gt["joints_2d"]).astype(int)
    masks = np.pad(data["view_masks"], ((0, 0), (0, 0), (1, 1), (1, 1)))
    near = np.zeros(uv.shape[:3], dtype=bool)  # the humanoid's URDF has gaps at its joints
    for dv in (0, 1, 2):
        for du in (0, 1, 2):
            near |= (
                masks[
                    np.arange(6)[:, None, None], np.arange(4)[None, :, None], uv[..., 1] + dv, uv[..., 0] + du
                ]
                > 0
            )
    assert near.mean() >= 0.98
    assert gt["joints_2d_visible"].all()
    with pytest.raises(CacheError, match="ground truth"):
        reader.read_batch(done, ["ground_truth/joints_3d"])
    assert verify_store(tmp_path / "w.zarr")[0] == []
    assert write_preview(tmp_path / "w.zarr", tmp_path / "p.png", 2).stat().st_size > 1000


def test_same_seed_same_bytes_other_seed_other_samples(tmp_path):
    render(tmp_path, "a.zarr")
    render(tmp_path, "b.zarr")
    assert_same_store(tmp_path / "a.zarr", tmp_path / "b.zarr")
    render(tmp_path, "c.zarr", seed=1)
    a = CacheReader(tmp_path / "a.zarr").read_batch(range(6), ["views"])["views"]
    c = CacheReader(tmp_path / "c.zarr").read_batch(range(6), ["views"])["views"]
    assert not np.array_equal(a, c)


def test_splits_are_disjoint():
    train = set(SyntheticWorldConfig("humanoid", "train").clips())
    test = set(SyntheticWorldConfig("humanoid", "test").clips())
    assert train and test and not train & test
    (a0, a1), (b0, b1) = QUADRUPED_SEGMENTS["train"], QUADRUPED_SEGMENTS["test"]
    assert a1 <= b0 or b1 <= a0


def test_cli_render_needs_a_source(tmp_path):
    result = CliRunner().invoke(app, ["generate", "--backend", "render", "--out", str(tmp_path / "x.zarr")])
    assert result.exit_code == 2 and "synthetic:humanoid" in result.output
    bad = CliRunner().invoke(
        app,
        [
            "generate",
            "--backend",
            "render",
            "--source",
            "synthetic:dragon",
            "--out",
            str(tmp_path / "x.zarr"),
        ],
    )
    assert bad.exit_code == 2 and "dragon" in bad.output


def test_world_version_is_in_the_key_the_fingerprint_and_the_source():
    config = GenerationConfig(resolution=32)
    old, new = (RenderBackendSpec(SyntheticWorldConfig(version=v), config) for v in (1, 2))
    assert old.key() != new.key()
    assert old.model_record()["fingerprint"] != new.model_record()["fingerprint"]
    assert old.source_record()["world"]["version"] == 1 and new.source_record()["world"]["version"] == 2


def test_cli_world_version_and_inspect_read_old_stores_as_version_1(tmp_path):
    runner = CliRunner()
    common = ["generate", "--backend", "render", "--source", "synthetic:humanoid", "--num-samples", "2"]
    common += ["--resolution", "32", "--shard-size", "2", "--no-progress"]
    made = runner.invoke(app, [*common, "--out", str(tmp_path / "v1.zarr"), "--world-version", "1"])
    assert made.exit_code == 0, made.output
    assert CacheReader(tmp_path / "v1.zarr").store.metadata.source["world"]["version"] == 1
    # A store written before versions existed: its world has no version. The store's
    # fingerprint only takes the source's backend, so the store still opens.
    group = zarr.open_group(tmp_path / "v1.zarr", mode="r+")
    attrs = copy.deepcopy(group.attrs[ATTRS_KEY])
    del attrs["source"]["world"]["version"]
    group.attrs[ATTRS_KEY] = attrs
    assert "version" not in CacheReader(tmp_path / "v1.zarr").store.metadata.source["world"]
    shown = runner.invoke(app, ["inspect", str(tmp_path / "v1.zarr")])
    assert shown.exit_code == 0, shown.output
    assert "world          humanoid split train seed 0 version 1" in shown.output
    assert verify_store(tmp_path / "v1.zarr")[0] == []
    bad = runner.invoke(app, [*common, "--out", str(tmp_path / "v3.zarr"), "--world-version", "3"])
    assert bad.exit_code == 2 and "version must be one of (1, 2)" in bad.output
