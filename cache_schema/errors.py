"""One error hierarchy for everything that reads or writes a KeyDiff3D cache."""


class CacheError(Exception):
    """Base class of every cache error."""


class SchemaMismatchError(CacheError):
    """The store was written with another schema version, model or config."""


class StoreNotFoundError(CacheError):
    """The path holds no KeyDiff3D cache."""


class SampleNotDoneError(CacheError):
    """A sample was asked for whose status is not done."""


class StoreDamagedError(CacheError):
    """Files of the store are missing or unreadable (a zarr.json, a shard, a chunk)."""


class StoreInUseError(CacheError):
    """Another process holds the store's writer lock."""
