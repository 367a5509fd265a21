"""Picklable recipes that build a stage-one backend once per process (dask worker or local).

A spec is what travels to dask workers; the heavy object it builds (a loaded SV3D-p
pipeline, a pybullet client) stays in the worker and serves every task it runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from cache_schema import FeatureLayerSpec, GroundTruthSpec, digest
from stages.config import GenerationConfig
from stages.devices import resolve_device
from stages.sources import ImageSource
from stages.stage_one import ImageSampleMaker

SampleMaker = Callable[[str], tuple[dict, float]]

_BUILT: dict[str, Any] = {}
_DESCRIBED: dict[str, Any] = {}


class BackendSpec(Protocol):
    """What the runner needs of a backend recipe."""

    def key(self) -> str: ...

    def resolved_config(self) -> GenerationConfig: ...

    def feature_layers(self) -> tuple[FeatureLayerSpec, ...]: ...

    def ground_truth(self) -> GroundTruthSpec | None: ...

    def model_record(self) -> dict[str, Any]: ...

    def source_record(self) -> dict[str, Any]: ...

    def capture_record(self) -> dict[str, Any] | None: ...

    def sample_maker(self, items: list[Any]) -> tuple[list[str], SampleMaker]: ...

    def uses_gpu(self) -> bool: ...


def _once(cache: dict[str, Any], key: str, build: Callable[[], Any]) -> Any:
    if key not in cache:
        cache[key] = build()
    return cache[key]


@dataclass(frozen=True)
class SV3DBackendSpec:
    """Everything a worker needs to build the SV3D backend."""

    model_dir: str
    config: GenerationConfig
    device: str = "auto"
    attention: str = "auto"
    torch_threads: int = 0
    """Intra-op threads per process; 0 leaves torch's default."""
    dataset_ground_truth: GroundTruthSpec | None = None
    """Ground truth that the image sources carry (a dataset reader's); None for plain images."""
    dataset_record: dict[str, Any] | None = None
    """The dataset reader's source record (stages.datasets.selection.dataset_record)."""

    def key(self) -> str:
        # The dataset fields change what is written, not the backend a worker builds.
        fields = dataclasses.asdict(self)
        return digest({k: v for k, v in fields.items() if not k.startswith("dataset_")})

    def _dtype_config(self) -> GenerationConfig:
        from stages.sv3d.loading import resolve_dtype

        dtype = resolve_dtype(self.config.model_dtype, torch.device(resolve_device(self.device)))
        return dataclasses.replace(self.config, model_dtype=str(dtype).replace("torch.", ""))

    def describe(self) -> Any:
        """The backend's structure (size, feature layers, capture step) without weights."""
        from stages.sv3d.backend import SV3DBackend
        from stages.sv3d.loading import load_sv3d_skeleton

        return _once(
            _DESCRIBED,
            self.key(),
            lambda: SV3DBackend(
                load_sv3d_skeleton(self.model_dir), self._dtype_config(), torch.device("cpu")
            ),
        )

    def resolved_config(self) -> GenerationConfig:
        """The config with 'auto' fields replaced by what this device and model use."""
        return dataclasses.replace(self._dtype_config(), resolution=self.describe().image_size())

    def feature_layers(self) -> tuple[FeatureLayerSpec, ...]:
        return self.describe().feature_layers()

    def ground_truth(self) -> GroundTruthSpec | None:
        return self.dataset_ground_truth

    def capture_record(self) -> dict[str, Any] | None:
        return self.describe().capture_record()

    def source_record(self) -> dict[str, Any]:
        return {"backend": "sv3d", **(self.dataset_record or {})}

    def build(self) -> Any:
        from stages.sv3d.backend import SV3DBackend
        from stages.sv3d.loading import load_sv3d_pipeline

        if self.torch_threads > 0:
            torch.set_num_threads(self.torch_threads)
        device = torch.device(resolve_device(self.device))
        config = self._dtype_config()
        pipe = load_sv3d_pipeline(
            self.model_dir, device=device, dtype=getattr(torch, config.model_dtype), attention=self.attention
        )
        return SV3DBackend(pipe, config, device)

    def sample_maker(self, items: list[ImageSource]) -> tuple[list[str], SampleMaker]:
        backend = _once(_BUILT, self.key(), self.build)
        return [s.sample_id for s in items], ImageSampleMaker(
            backend, self.config, items, self.dataset_ground_truth
        )

    def model_record(self) -> dict[str, Any]:
        from stages.sv3d.loading import model_identity

        identity = model_identity(self.model_dir)
        # The path is provenance, not content: moving a model must not orphan its caches.
        content = {k: v for k, v in identity.items() if k not in ("path", "model_dir")}
        return {**identity, "fingerprint": digest(content)}

    def uses_gpu(self) -> bool:
        return resolve_device(self.device).startswith("cuda")


@dataclass(frozen=True)
class RenderBackendSpec:
    """The synthetic world rendered with pybullet: a perfect multi-view generator."""

    world: Any
    """stages.synthetic.world.SyntheticWorldConfig (imported lazily: pybullet is optional)."""
    config: GenerationConfig
    features_model: str | None = None
    """Local SV3D-p model directory whose decoder features of the RENDERED kept views are
    stored (same layers, shapes, tau and dtype as the sv3d backend); None stores none."""
    device: str = "auto"
    """Where the features model runs (unused without one)."""
    attention: str = "auto"
    """Attention backend of the features model (unused without one)."""
    torch_threads: int = 0
    """Intra-op threads per process for the features model; 0 leaves torch's default."""

    def key(self) -> str:
        return digest(
            {
                "world": dataclasses.asdict(self.world),
                "config": self.config.to_dict(),
                "features": [self.features_model, self.device, self.attention, self.torch_threads],
            }
        )

    def _render_config(self) -> GenerationConfig:
        """Renders have no model: size defaults to 128 px, the radius fits the figure."""
        orbit = dataclasses.replace(
            self.config.orbit, radius=self.world.camera_radius(self.config.orbit.fov_deg)
        )
        return dataclasses.replace(self.config, orbit=orbit, resolution=self.config.resolution or 128)

    def features_spec(self) -> SV3DBackendSpec | None:
        """The SV3D backend recipe that gives the features, on the rendered image size."""
        if self.features_model is None:
            return None
        return SV3DBackendSpec(
            self.features_model, self._render_config(), self.device, self.attention, self.torch_threads
        )

    def resolved_config(self) -> GenerationConfig:
        """The render config; without a features model, no layers and a float32 'model'."""
        features = self.features_spec()
        if features is None:
            return dataclasses.replace(self._render_config(), feature_layers=(), model_dtype="float32")
        # Not features.resolved_config(): that would replace the size by the model's own.
        return features._dtype_config()

    def feature_layers(self) -> tuple[FeatureLayerSpec, ...]:
        features = self.features_spec()
        return () if features is None else features.feature_layers()

    def ground_truth(self) -> GroundTruthSpec | None:
        from stages.synthetic.world import ground_truth_spec

        return ground_truth_spec(self.world.category)

    def capture_record(self) -> dict[str, Any] | None:
        features = self.features_spec()
        return None if features is None else features.capture_record()

    def source_record(self) -> dict[str, Any]:
        return {"backend": "render", "world": self.world.to_dict()}

    def model_record(self) -> dict[str, Any]:
        import pybullet_data

        world = {k: v for k, v in self.world.to_dict().items() if k != "num_samples"}
        record = {"renderer": "pybullet ER_TINY_RENDERER", "data": str(pybullet_data.getDataPath())}
        content = {"world": world, "renderer": record["renderer"]}
        features = self.features_spec()
        if features is None:
            return {**record, "fingerprint": digest(content)}
        model = features.model_record()
        content["features_model"] = model["fingerprint"]
        return {**record, "path": model["path"], "features_model": model, "fingerprint": digest(content)}

    def build(self) -> Any:
        from stages.synthetic.world import SyntheticRenderer

        features = self.features_spec()
        # Loaded once per process, shared by every world rendered with the same model.
        model = None if features is None else _once(_BUILT, features.key(), features.build)
        return SyntheticRenderer(self.world, self.resolved_config(), model)

    def sample_maker(self, items: list[str]) -> tuple[list[str], SampleMaker]:
        return list(items), _once(_BUILT, self.key(), self.build)

    def uses_gpu(self) -> bool:
        features = self.features_spec()
        return features is not None and features.uses_gpu()


def weights_named_by_size_only(record: dict[str, Any]) -> bool:
    """Whether a stored model record names its weights by size only, as stores written
    before weight hashing do (model_identity now adds each file's sha256); the features
    model of a render store counts too."""
    weights = record.get("weights")
    if isinstance(weights, list) and not all(isinstance(w, dict) and "sha256" in w for w in weights):
        return True
    nested = record.get("features_model")
    return isinstance(nested, dict) and weights_named_by_size_only(nested)


def model_dir_exists(model_dir: str, option: str = "--model") -> Path:
    path = Path(model_dir)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{option} {model_dir}: no such directory (create a tiny one with "
            "`keydiff3d-cache make-tiny-model DIR` or convert SV3D-p with `convert-sv3d`)"
        )
    return path
