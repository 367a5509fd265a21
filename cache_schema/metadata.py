"""What a store says about itself: schema version, layout, fingerprint and provenance."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from cache_schema.errors import CacheError, SchemaMismatchError
from cache_schema.layout import SCHEMA_VERSION, CacheLayout

ATTRS_KEY = "keydiff3d"


def canonical_json(payload: Any) -> str:
    """JSON with sorted keys and no whitespace: equal payloads give equal strings."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=_jsonable)


def digest(payload: Any) -> str:
    """SHA-256 hex digest of the canonical JSON of `payload`."""
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@dataclass(frozen=True)
class StoreMetadata:
    """Attributes of a KeyDiff3D store (under the group attribute 'keydiff3d')."""

    layout: CacheLayout
    generation: dict[str, Any]
    """The stage-one config that made the bytes (GenerationConfig.to_dict())."""
    model: dict[str, Any]
    """Model identity: path, config hash, weight files; for render backends, the source."""
    source: dict[str, Any]
    """Backend name and the inputs it read (folder, list file, synthetic world)."""
    cameras: dict[str, Any] = field(default_factory=dict)
    """The orbit and camera conventions of the stored views."""
    capture: dict[str, Any] | None = None
    """How tau became a sampler step (None when no features are stored)."""
    inputs_digest: str = ""
    """Digest of the sample ids, to refuse resuming onto a different input list."""
    schema_version: int = SCHEMA_VERSION

    @property
    def fingerprint(self) -> str:
        """Digest of everything that changes the stored bytes, and nothing else."""
        return digest(
            {
                "schema_version": self.schema_version,
                "generation": self.generation,
                "model": self.model.get("fingerprint", self.model),
                "source": self.source.get("fingerprint", self.source.get("backend")),
                "layout": {k: v for k, v in self.layout.to_dict().items() if k != "num_samples"},
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return json.loads(
            canonical_json(
                {
                    "schema_version": self.schema_version,
                    "fingerprint": self.fingerprint,
                    "layout": self.layout.to_dict(),
                    "generation": self.generation,
                    "model": self.model,
                    "source": self.source,
                    "cameras": self.cameras,
                    "capture": self.capture,
                    "inputs_digest": self.inputs_digest,
                }
            )
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "store") -> StoreMetadata:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SchemaMismatchError(
                f"{where}: schema_version is {version}, this version of keydiff3d reads "
                f"{SCHEMA_VERSION}; regenerate the cache with `keydiff3d-cache generate --overwrite`"
            )
        try:
            meta = cls(
                layout=CacheLayout.from_dict(data["layout"]),
                generation=data["generation"],
                model=data["model"],
                source=data["source"],
                cameras=data.get("cameras", {}),
                capture=data.get("capture"),
                inputs_digest=data.get("inputs_digest", ""),
                schema_version=version,
            )
        except (KeyError, TypeError) as exc:
            raise CacheError(f"{where}: malformed keydiff3d attributes ({exc})") from exc
        stored = data.get("fingerprint")
        if stored != meta.fingerprint:
            raise SchemaMismatchError(
                f"{where}: stored fingerprint {stored} does not match its own attributes "
                f"({meta.fingerprint}); the attributes were edited or damaged"
            )
        return meta
