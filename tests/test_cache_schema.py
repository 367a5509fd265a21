"""The cache format: layout, metadata round trip, shard writes, resume checks, reader."""

import numpy as np
import pytest

from cache_schema import (
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_PENDING,
    CacheError,
    CacheLayout,
    CacheReader,
    CacheStore,
    FeatureLayerSpec,
    GroundTruthSpec,
    SampleNotDoneError,
    SchemaMismatchError,
    StoreMetadata,
    StoreNotFoundError,
    inputs_digest,
)

LAYERS = (FeatureLayerSpec("up_blocks.0", 8, 4, 4), FeatureLayerSpec("up_blocks.1", 4, 8, 8))


def make_metadata(n=5, per_shard=2, gt=None, **generation):
    layout = CacheLayout(
        num_samples=n,
        image_size=16,
        num_views=3,
        feature_layers=LAYERS,
        samples_per_shard=per_shard,
        ground_truth=gt,
    )
    ids = [f"img{i}.png" for i in range(n)]
    meta = StoreMetadata(
        layout=layout,
        generation={"seed": 0, **generation},
        model={"path": "/m", "fingerprint": "abc"},
        source={"backend": "test"},
        cameras={"radius": 2.0},
        inputs_digest=inputs_digest(ids),
    )
    return meta, ids


def shard_rows(store, shard, value):
    start, stop = store.layout.shard_range(shard)
    specs = store.layout.arrays()
    return {
        name: np.full((stop - start, *specs[name].shape[1:]), value, dtype=specs[name].dtype)
        for name in store.data_array_names()
    }


def test_layout_and_metadata_round_trip():
    gt = GroundTruthSpec(("head", "hip"))
    meta, _ = make_metadata(gt=gt)
    again = StoreMetadata.from_dict(meta.to_dict())
    assert again == meta and again.fingerprint == meta.fingerprint
    arrays = meta.layout.arrays()
    assert arrays["views"].shape == (5, 3, 3, 16, 16)
    assert arrays["views"].chunks == (1, 3, 3, 16, 16) and arrays["views"].shards == (2, 3, 3, 16, 16)
    assert arrays["features/up_blocks_1"].shape == (5, 3, 4, 8, 8)
    assert arrays["ground_truth/joints_2d"].shape == (5, 3, 2, 2)
    assert meta.layout.num_shards == 3 and meta.layout.shard_range(2) == (4, 5)


def test_fingerprint_covers_config_but_not_sample_count():
    a, _ = make_metadata(n=5)
    b, _ = make_metadata(n=9)
    c, _ = make_metadata(n=5, tau=300)
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint


def test_tampered_attributes_and_wrong_version_are_refused():
    meta, _ = make_metadata()
    data = meta.to_dict()
    data["generation"]["seed"] = 1
    with pytest.raises(SchemaMismatchError, match="fingerprint"):
        StoreMetadata.from_dict(data)
    data = meta.to_dict()
    data["schema_version"] = 99
    with pytest.raises(SchemaMismatchError, match="schema_version is 99"):
        StoreMetadata.from_dict(data)


def test_write_shards_and_read_back(tmp_path):
    meta, ids = make_metadata()
    store = CacheStore.create(tmp_path / "c.zarr", meta, ids)
    assert store.shards_to_do() == [0, 1, 2]
    store.write_shard(1, shard_rows(store, 1, 7), np.array([STATUS_DONE, STATUS_FAILED]), ["", "bad file"])
    store.write_shard(2, shard_rows(store, 2, 3), np.array([STATUS_DONE]), [""])
    assert store.shards_to_do() == [0]
    assert store.shards_to_do(retry_failed=True) == [0, 1]

    reader = CacheReader(tmp_path / "c.zarr", expected_feature_layers=["up_blocks.0", "up_blocks.1"])
    assert reader.done_indices().tolist() == [2, 4]
    batch = reader.read_batch([2, 4], ["views", "features/up_blocks_0"])
    assert batch["views"].shape == (2, 3, 3, 16, 16)
    assert batch["views"][0].min() == 7 and batch["views"][1].max() == 3
    assert batch["features/up_blocks_0"].dtype == np.float16
    assert reader.sample_ids()[2] == "img2.png"
    with pytest.raises(SampleNotDoneError, match=r"\[3\]"):
        reader.read_sample(3)
    with pytest.raises(SchemaMismatchError, match="feature layers"):
        CacheReader(tmp_path / "c.zarr", expected_feature_layers=["up_blocks.3"])


def test_reader_keeps_ground_truth_apart(tmp_path):
    meta, ids = make_metadata(n=2, gt=GroundTruthSpec(("a", "b", "c")))
    store = CacheStore.create(tmp_path / "g.zarr", meta, ids)
    store.write_shard(0, shard_rows(store, 0, 1), np.array([STATUS_DONE, STATUS_DONE]), ["", ""])
    reader = CacheReader(tmp_path / "g.zarr")
    with pytest.raises(CacheError, match="ground truth"):
        reader.read_batch([0], ["ground_truth/joints_3d"])
    gt = reader.read_ground_truth([0, 1])
    assert gt["joints_3d"].shape == (2, 3, 3)


def test_status_is_written_last(tmp_path, monkeypatch):
    """A writer killed after the data but before the status leaves the samples pending."""
    meta, ids = make_metadata()
    store = CacheStore.create(tmp_path / "c.zarr", meta, ids)
    real_array = store.array

    def dying_array(name):
        if name == "status":
            raise KeyboardInterrupt("killed before the status write")
        return real_array(name)

    monkeypatch.setattr(store, "array", dying_array)
    with pytest.raises(KeyboardInterrupt):
        store.write_shard(0, shard_rows(store, 0, 5), np.array([STATUS_DONE] * 2), ["", ""])
    monkeypatch.undo()
    reopened = CacheStore.open(tmp_path / "c.zarr")
    assert (reopened.statuses() == STATUS_PENDING).all()
    assert reopened.shards_to_do() == [0, 1, 2]


def test_resume_checks_refuse_other_config_and_inputs(tmp_path):
    meta, ids = make_metadata()
    CacheStore.create(tmp_path / "c.zarr", meta, ids)
    store = CacheStore.open(tmp_path / "c.zarr", writable=True)
    store.check_compatible(meta, ids)
    other, _ = make_metadata(tau=300)
    with pytest.raises(SchemaMismatchError, match="generation.tau"):
        store.check_compatible(other, ids)
    with pytest.raises(SchemaMismatchError, match="different list of input images"):
        store.check_compatible(meta, ids[:-1] + ["other.png"])
    with pytest.raises(CacheError, match="exists"):
        CacheStore.create(tmp_path / "c.zarr", meta, ids)
    CacheStore.create(tmp_path / "c.zarr", meta, ids, overwrite=True)


def test_bad_writes_and_paths_raise_clear_errors(tmp_path):
    meta, ids = make_metadata()
    store = CacheStore.create(tmp_path / "c.zarr", meta, ids)
    rows = shard_rows(store, 0, 1)
    rows["views"] = rows["views"][:, :2]
    with pytest.raises(
        CacheError, match=r"views has shape \(2, 2, 3, 16, 16\), expected \(2, 3, 3, 16, 16\)"
    ):
        store.write_shard(0, rows, np.array([1, 1]), ["", ""])
    with pytest.raises(StoreNotFoundError, match="zarr.json missing"):
        CacheStore.open(tmp_path / "nothing.zarr")
    with pytest.raises(CacheError, match="unique"):
        CacheStore.create(tmp_path / "d.zarr", meta, ["a"] * 5)
    with pytest.raises(CacheError, match="read-only"):
        CacheStore.open(tmp_path / "c.zarr").write_shard(
            0, shard_rows(store, 0, 1), np.array([1, 1]), ["", ""]
        )


def test_xarray_opens_the_store(tmp_path):
    xr = pytest.importorskip("xarray")
    meta, ids = make_metadata()
    store = CacheStore.create(tmp_path / "c.zarr", meta, ids)
    store.write_shard(0, shard_rows(store, 0, 2), np.array([1, 1]), ["", ""])
    ds = xr.open_zarr(tmp_path / "c.zarr", consolidated=False)
    assert ds["views"].dims == ("sample", "view", "rgb", "y", "x")
    assert int(ds["views"][0].max()) == 2
    features = xr.open_zarr(tmp_path / "c.zarr", group="features", consolidated=False)
    assert features["up_blocks_1"].shape == (5, 3, 4, 8, 8)
