"""The cache layout: which arrays a store holds, their shapes, chunks, shards and codecs.

Every per-sample array has the sample axis first. Data arrays are chunked one sample
per chunk and sharded `samples_per_shard` samples per shard; bookkeeping arrays
(ids, status, reasons) are chunked `samples_per_shard` per chunk. So shard `s` of the
store is exactly one file per array, written by exactly one task.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cache_schema.errors import CacheError

SCHEMA_VERSION = 1

STATUS_PENDING = 0
STATUS_DONE = 1
STATUS_FAILED = 2
STATUS_NAMES = {STATUS_PENDING: "pending", STATUS_DONE: "done", STATUS_FAILED: "failed"}

FEATURE_DTYPES = ("float16", "float32")

# Arrays that carry ground truth; stage two must never read them for training.
GROUND_TRUTH_PREFIX = "ground_truth/"


@dataclass(frozen=True)
class FeatureLayerSpec:
    """One cached UNet decoder layer."""

    name: str
    """Module name in the UNet, e.g. 'up_blocks.1'."""
    channels: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise CacheError(f"feature layer name must be non-empty without '/', got {self.name!r}")
        for key in ("channels", "height", "width"):
            if getattr(self, key) < 1:
                raise CacheError(f"feature layer {self.name}: {key} must be >= 1")

    @property
    def array_name(self) -> str:
        return "features/" + self.name.replace(".", "_")


@dataclass(frozen=True)
class GroundTruthSpec:
    """Ground-truth joints that a data source knows (synthetic world, Human3.6M, CUB)."""

    joint_names: tuple[str, ...]
    has_3d: bool = True
    """joints_3d (n, J, 3) in the cache's world frame."""
    has_2d: bool = True
    """joints_2d (n, K, J, 2) in view pixels plus visibility (n, K, J)."""

    def __post_init__(self) -> None:
        if not self.joint_names:
            raise CacheError("ground truth needs at least one joint name")
        if not (self.has_3d or self.has_2d):
            raise CacheError("ground truth must have 3D joints, 2D joints or both")

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)


@dataclass(frozen=True)
class ArraySpec:
    """Shape, dtype and storage of one array in the store."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    dims: tuple[str, ...]
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    kind: str
    """Codec family: 'image' (uint8 pixels), 'float', 'small' or 'text'."""


@dataclass(frozen=True)
class CacheLayout:
    """Sizes that fix every array of a store."""

    num_samples: int
    image_size: int
    num_views: int
    feature_layers: tuple[FeatureLayerSpec, ...] = ()
    feature_dtype: str = "float16"
    samples_per_shard: int = 16
    ground_truth: GroundTruthSpec | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form, JSON-serialisable layout notes (not used to build arrays)."""

    def __post_init__(self) -> None:
        for key in ("num_samples", "image_size", "num_views", "samples_per_shard"):
            if getattr(self, key) < 1:
                raise CacheError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.feature_dtype not in FEATURE_DTYPES:
            raise CacheError(f"feature_dtype must be one of {FEATURE_DTYPES}, got {self.feature_dtype!r}")
        names = [layer.array_name for layer in self.feature_layers]
        if len(set(names)) != len(names):
            raise CacheError(f"feature layer names collide: {[f.name for f in self.feature_layers]}")

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.samples_per_shard)

    def shard_range(self, shard: int) -> tuple[int, int]:
        """Sample indices [start, stop) of one shard."""
        if not 0 <= shard < self.num_shards:
            raise CacheError(f"shard must be in [0, {self.num_shards}), got {shard}")
        start = shard * self.samples_per_shard
        return start, min(start + self.samples_per_shard, self.num_samples)

    def samples_in(self, shards: list[int] | tuple[int, ...]) -> int:
        """How many samples the given shards hold together."""
        return sum(stop - start for start, stop in map(self.shard_range, shards))

    def arrays(self) -> dict[str, ArraySpec]:
        """Every array of the store, by name."""
        n, size, k, s = self.num_samples, self.image_size, self.num_views, self.samples_per_shard
        out: list[ArraySpec] = [
            _book("sample_id", n, s, "str", "text"),
            _book("status", n, s, "uint8", "small"),
            _book("failure_reason", n, s, "str", "text"),
            _data("input_image", (n, 3, size, size), "uint8", ("sample", "rgb", "y", "x"), s, "image"),
            _data("input_mask", (n, size, size), "uint8", ("sample", "y", "x"), s, "image"),
            _data("crop_box", (n, 3), "float64", ("sample", "crop_xys"), s, "small"),
            _data("source_size", (n, 2), "int32", ("sample", "wh"), s, "small"),
            _data("views", (n, k, 3, size, size), "uint8", ("sample", "view", "rgb", "y", "x"), s, "image"),
            _data("view_masks", (n, k, size, size), "uint8", ("sample", "view", "y", "x"), s, "image"),
            _data("intrinsics", (n, k, 3, 3), "float32", ("sample", "view", "k_row", "k_col"), s, "small"),
            _data(
                "world_to_camera", (n, k, 4, 4), "float32", ("sample", "view", "rt_row", "rt_col"), s, "small"
            ),
        ]
        for layer in self.feature_layers:
            tag = layer.name.replace(".", "_")
            out.append(
                _data(
                    layer.array_name,
                    (n, k, layer.channels, layer.height, layer.width),
                    self.feature_dtype,
                    ("sample", "view", f"c_{tag}", f"y_{tag}", f"x_{tag}"),
                    s,
                    "float",
                )
            )
        gt = self.ground_truth
        if gt is not None:
            j = gt.num_joints
            if gt.has_3d:
                out.append(
                    _data(
                        GROUND_TRUTH_PREFIX + "joints_3d",
                        (n, j, 3),
                        "float32",
                        ("sample", "joint", "xyz"),
                        s,
                        "small",
                    )
                )
            if gt.has_2d:
                out.append(
                    _data(
                        GROUND_TRUTH_PREFIX + "joints_2d",
                        (n, k, j, 2),
                        "float32",
                        ("sample", "view", "joint", "uv"),
                        s,
                        "small",
                    )
                )
                out.append(
                    _data(
                        GROUND_TRUTH_PREFIX + "joints_2d_visible",
                        (n, k, j),
                        "uint8",
                        ("sample", "view", "joint"),
                        s,
                        "small",
                    )
                )
        return {spec.name: spec for spec in out}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CacheLayout:
        data = dict(data)
        layers = tuple(FeatureLayerSpec(**f) for f in data.pop("feature_layers", ()))
        gt = data.pop("ground_truth", None)
        ground_truth = None
        if gt is not None:
            gt = dict(gt)
            gt["joint_names"] = tuple(gt["joint_names"])
            ground_truth = GroundTruthSpec(**gt)
        return cls(feature_layers=layers, ground_truth=ground_truth, **data)


def _book(name: str, n: int, s: int, dtype: str, kind: str) -> ArraySpec:
    return ArraySpec(name, (n,), dtype, ("sample",), (s,), None, kind)


def _data(
    name: str, shape: tuple[int, ...], dtype: str, dims: tuple[str, ...], s: int, kind: str
) -> ArraySpec:
    chunks = (1, *shape[1:])
    shards = (s, *shape[1:])
    return ArraySpec(name, shape, dtype, dims, chunks, shards, kind)
