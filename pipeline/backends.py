"""Picklable recipes that build a stage-one backend once per process (dask worker or local)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cache_schema import digest
from stages.config import GenerationConfig
from stages.stage_one import ViewBackend

_BUILT: dict[str, ViewBackend] = {}


def resolve_device(name: str) -> str:
    """'auto' is CUDA when present, else CPU; anything else is checked."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return name


@dataclass(frozen=True)
class SV3DBackendSpec:
    """Everything a worker needs to build the SV3D backend."""

    model_dir: str
    config: GenerationConfig
    device: str = "auto"
    attention: str = "auto"
    torch_threads: int = 0
    """Intra-op threads per process; 0 leaves torch's default."""

    def key(self) -> str:
        return digest(dataclasses.asdict(self))

    def resolved_config(self) -> GenerationConfig:
        """The config with 'auto' fields replaced by what this device will use."""
        from stages.sv3d.loading import resolve_dtype

        dtype = resolve_dtype(self.config.model_dtype, torch.device(resolve_device(self.device)))
        return dataclasses.replace(self.config, model_dtype=str(dtype).replace("torch.", ""))

    def build(self) -> ViewBackend:
        from stages.sv3d.backend import SV3DBackend
        from stages.sv3d.loading import load_sv3d_pipeline

        if self.torch_threads > 0:
            torch.set_num_threads(self.torch_threads)
        device = torch.device(resolve_device(self.device))
        config = self.resolved_config()
        pipe = load_sv3d_pipeline(
            self.model_dir, device=device, dtype=getattr(torch, config.model_dtype), attention=self.attention
        )
        return SV3DBackend(pipe, config, device)

    def describe(self) -> ViewBackend:
        """The backend's structure (sizes, feature layers, capture step) without weights."""
        from stages.sv3d.backend import SV3DBackend
        from stages.sv3d.loading import load_sv3d_skeleton

        return SV3DBackend(load_sv3d_skeleton(self.model_dir), self.resolved_config(), torch.device("cpu"))

    def model_record(self) -> dict[str, Any]:
        from stages.sv3d.loading import model_identity

        identity = model_identity(self.model_dir)
        # The path is provenance, not content: moving a model must not orphan its caches.
        content = {k: v for k, v in identity.items() if k not in ("path", "model_dir")}
        return {**identity, "fingerprint": digest(content)}

    def uses_gpu(self) -> bool:
        return resolve_device(self.device).startswith("cuda")


def get_backend(spec: SV3DBackendSpec) -> ViewBackend:
    """The backend for `spec`, built at most once per process."""
    key = spec.key()
    if key not in _BUILT:
        _BUILT[key] = spec.build()
    return _BUILT[key]


def model_dir_exists(model_dir: str) -> Path:
    path = Path(model_dir)
    if not path.is_dir():
        raise FileNotFoundError(
            f"--model {model_dir}: no such directory (create a tiny one with "
            "`keydiff3d-cache make-tiny-model DIR` or convert SV3D-p with `convert-sv3d`)"
        )
    return path
