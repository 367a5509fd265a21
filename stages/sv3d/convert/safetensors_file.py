"""A safetensors checkpoint read lazily, its header checked up front."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from stages.errors import CheckpointConversionError


class SafetensorsFile(Mapping[str, Tensor]):
    """A safetensors file as a read-only mapping that loads each tensor on access.

    `shapes` comes from the header alone; `header_sha256` hashes the header's JSON bytes.
    Raises CheckpointConversionError naming the file if it is not a safetensors file.
    """

    def __init__(self, path: Path, dtype: torch.dtype | None = None):
        self.path = Path(path)
        self.dtype = dtype
        header, raw = _read_header(self.path)
        self.header_sha256 = hashlib.sha256(raw).hexdigest()
        self.metadata = header.pop("__metadata__", None) or {}
        self.shapes = {k: tuple(v["shape"]) for k, v in header.items()}
        self._handle = None

    def __enter__(self) -> SafetensorsFile:
        from safetensors import safe_open

        self._handle = safe_open(str(self.path), framework="pt", device="cpu")
        return self

    def __exit__(self, *exc) -> None:
        self._handle = None

    def __getitem__(self, key: str) -> Tensor:
        if key not in self.shapes:
            raise KeyError(key)
        if self._handle is None:
            raise RuntimeError("open the SafetensorsFile with `with` before reading tensors")
        tensor = self._handle.get_tensor(key)
        if self.dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        return tensor

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def _read_header(path: Path) -> tuple[dict[str, Any], bytes]:
    if not path.is_file():
        raise CheckpointConversionError(f"checkpoint {path} does not exist or is not a file")
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointConversionError(f"checkpoint {path} is not a safetensors file: only {size} bytes")
        (length,) = struct.unpack("<Q", prefix)
        if length < 2 or length > min(size - 8, 100 * 2**20):
            raise CheckpointConversionError(
                f"checkpoint {path} is not a safetensors file: header length {length} does not fit "
                f"a file of {size} bytes"
            )
        raw = f.read(length)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        for key, info in header.items():
            if key != "__metadata__" and not {"dtype", "shape", "data_offsets"} <= set(info):
                raise ValueError(f"entry {key!r} lacks dtype/shape/data_offsets")
    except (ValueError, TypeError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointConversionError(f"checkpoint {path} is not a safetensors file: {err}") from err
    return header, raw
