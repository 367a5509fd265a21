"""The KeyDiff3D cache format: layout, metadata, writer and reader (numpy + zarr only)."""

from cache_schema.errors import (
    CacheError,
    SampleNotDoneError,
    SchemaMismatchError,
    StoreDamagedError,
    StoreInUseError,
    StoreNotFoundError,
)
from cache_schema.layout import (
    GROUND_TRUTH_PREFIX,
    SCHEMA_VERSION,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_NAMES,
    STATUS_PENDING,
    CacheLayout,
    FeatureLayerSpec,
    GroundTruthSpec,
)
from cache_schema.metadata import StoreMetadata, digest
from cache_schema.reader import CacheReader
from cache_schema.store import CacheStore, inputs_digest

__all__ = [
    "CacheError",
    "CacheLayout",
    "CacheReader",
    "CacheStore",
    "FeatureLayerSpec",
    "GROUND_TRUTH_PREFIX",
    "GroundTruthSpec",
    "SCHEMA_VERSION",
    "STATUS_DONE",
    "STATUS_FAILED",
    "STATUS_NAMES",
    "STATUS_PENDING",
    "SampleNotDoneError",
    "SchemaMismatchError",
    "StoreDamagedError",
    "StoreInUseError",
    "StoreMetadata",
    "StoreNotFoundError",
    "digest",
    "inputs_digest",
]
