"""Which torch device a run uses: one rule for stage one, stage two and evaluation."""

from __future__ import annotations

import torch

from stages.errors import ConfigError


def resolve_device(name: str) -> str:
    """'auto' is CUDA when present, else CPU; an explicit CUDA device must exist."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    return name
