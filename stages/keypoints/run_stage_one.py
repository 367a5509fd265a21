"""The stage-one settings a run was trained on, kept in the run directory (stage_one.json).

`predict` must run stage one on new images exactly as the training cache was made (same
orbit, tau, sampler steps, resolution, feature layers), or the keypoint model reads views
and features it never saw. Those settings live in the cache's metadata, but caches are
large and often deleted once a run is trained; so `fit` copies them into the run when it
starts, and `predict` reads them from there. Runs written before this file existed fall
back to their first training cache, and are refused by name when that is gone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cache_schema import CacheError, CacheStore, FeatureLayerSpec
from stages.config import GenerationConfig
from stages.keypoints.checkpoint_files import write_json_atomically
from stages.keypoints.errors import TrainingError

STAGE_ONE = "stage_one.json"
STAGE_ONE_VERSION = 1
RENDER_BACKEND = "render"
_RECOVER = (
    "the run predates stage_one.json, so its stage-one settings are unknown; put the cache back to "
    "predict with its settings, or pass --stage-one-defaults if it was a synthetic (--backend render) "
    "cache"
)


class StageOneUnknown(TrainingError):
    """A run from before stage_one.json whose training cache is gone: its settings are unknown."""


@dataclass(frozen=True)
class StageOneSettings:
    """What stage one made the run's training data with."""

    backend: str
    """'sv3d' (diffusion on image files) or 'render' (the synthetic world)."""
    generation: dict[str, Any]
    """GenerationConfig.to_dict() of the training cache (resolution and model dtype resolved)."""
    image_size: int
    """Side of the cached views, pixels."""
    feature_layers: tuple[FeatureLayerSpec, ...]
    """The UNet decoder layers the cache stored (name, channels, height, width); () for none."""
    model: dict[str, Any]
    """The cache's model record (SV3D-p: path, config hash, weight files, fingerprint)."""
    cache: str
    """The training cache these settings were copied from."""
    fingerprint: str
    """That cache's fingerprint."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STAGE_ONE_VERSION,
            "backend": self.backend,
            "generation": self.generation,
            "image_size": self.image_size,
            "feature_layers": [
                {"name": f.name, "channels": f.channels, "height": f.height, "width": f.width}
                for f in self.feature_layers
            ],
            "model": self.model,
            "cache": self.cache,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageOneSettings:
        return cls(
            backend=str(data["backend"]),
            generation=dict(data["generation"]),
            image_size=int(data["image_size"]),
            feature_layers=tuple(FeatureLayerSpec(**layer) for layer in data["feature_layers"]),
            model=dict(data["model"]),
            cache=str(data["cache"]),
            fingerprint=str(data["fingerprint"]),
        )

    @property
    def is_render(self) -> bool:
        return self.backend == RENDER_BACKEND

    def generation_config(self) -> GenerationConfig:
        """The settings to run stage one with on new images.

        A render-backend cache has no SV3D settings to copy (its views were rendered, not
        generated): the SV3D-p defaults are the documented choice, and the model's image
        size check reports a run rendered at another size."""
        if self.is_render:
            return GenerationConfig()
        return GenerationConfig.from_dict(self.generation)


def settings_of_cache(cache: Path) -> StageOneSettings:
    """The stage-one settings recorded in a cache's metadata."""
    store = CacheStore.open(cache)
    metadata = store.metadata
    return StageOneSettings(
        backend=str(metadata.source.get("backend", "sv3d")),
        generation=metadata.generation,
        image_size=metadata.layout.image_size,
        feature_layers=tuple(metadata.layout.feature_layers),
        model=metadata.model,
        cache=str(Path(cache).resolve()),
        fingerprint=metadata.fingerprint,
    )


def write_stage_one(run_dir: Path, cache: Path) -> Path:
    """Copy the cache's stage-one settings into run_dir/stage_one.json (atomically, by rename)."""
    path = Path(run_dir) / STAGE_ONE
    write_json_atomically(path, settings_of_cache(cache).to_dict())
    return path


def read_stage_one(run_dir: Path, run_caches: list[str]) -> StageOneSettings:
    """The run's stage-one settings: stage_one.json, or for an older run its first training cache.

    run_caches is the run config's data.caches. An older run whose cache is gone is refused:
    predicting with guessed settings would give keypoints from views the model never saw,
    with nothing to tell the user so."""
    run_dir = Path(run_dir)
    path = run_dir / STAGE_ONE
    if path.is_file():
        try:
            return StageOneSettings.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError, CacheError) as exc:
            raise TrainingError(
                f"{path} is unreadable ({exc!r}); remove it to fall back to the training cache's settings"
            ) from exc
    if not run_caches:
        raise TrainingError(f"{run_dir}: the run names no training cache and has no {STAGE_ONE}")
    cache = Path(run_caches[0])
    if not cache.exists():
        raise StageOneUnknown(
            f"{run_dir} has no {STAGE_ONE} and its training cache {cache} is gone: {_RECOVER}"
        )
    try:
        return settings_of_cache(cache)
    except (CacheError, OSError) as exc:
        raise StageOneUnknown(
            f"{run_dir} has no {STAGE_ONE} and its training cache cannot be opened ({exc}): {_RECOVER}"
        ) from exc
