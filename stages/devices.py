"""Which torch device a run uses: one rule for stage one, stage two and evaluation."""

from __future__ import annotations

import re

import torch

from stages.errors import ConfigError

_CUDA = re.compile(r"cuda(:(\d+))?")


def resolve_device(name: str) -> str:
    """'auto' is CUDA when present, else CPU; 'cpu', 'cuda' and 'cuda:N' (which must exist)
    are taken as they are. Anything else is refused here, by name, rather than deep inside
    torch with a list of device types this project never runs on."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    match = _CUDA.fullmatch(name)
    if match is None:
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    if match.group(2) is not None and int(match.group(2)) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name
