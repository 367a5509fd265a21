"""Which files a store must hold, checked on disk before zarr is trusted with them.

zarr reads a missing chunk or shard as the array's fill value, so a deleted file of a
done sample reads as zeros, not as an error; and it parses a node's zarr.json only
when the node is first opened, so a damaged one surfaces as a stray JSON or key error
deep inside a read. These helpers name the file instead.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import zarr
from zarr.core.chunk_grids import RegularChunkGrid

from cache_schema.errors import StoreDamagedError


def read_node_json(node_dir: Path, node_type: str) -> dict:
    """The parsed zarr.json of one node, or StoreDamagedError naming the node's folder."""
    meta = node_dir / "zarr.json"
    try:
        node = json.loads(meta.read_text())
    except FileNotFoundError:
        raise _damaged(node_dir, "no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(node_dir, f"not readable JSON: {exc}") from None
    if not isinstance(node, dict) or node.get("zarr_format") != 3 or node.get("node_type") != node_type:
        found = node.get("node_type") if isinstance(node, dict) else type(node).__name__
        raise _damaged(node_dir, f"expected a zarr v3 {node_type}, found {found!r}")
    return node


def check_array_nodes(root: Path, names: list[str]) -> None:
    """Every array's zarr.json, and those of the groups above it (e.g. features/), parse."""
    groups = sorted({"/".join(name.split("/")[:i]) for name in names for i in range(1, name.count("/") + 1)})
    for group in groups:
        read_node_json(root / group, "group")
    for name in names:
        read_node_json(root / name, "array")


def shard_keys(array: zarr.Array, start: int, stop: int) -> list[str]:
    """Store keys (relative to the array's folder) of the files that hold samples [start, stop).

    Derived from the array's own metadata: its chunk grid is the shard shape for a
    sharded array (one file per shard, inner chunks inside) and the chunk shape
    otherwise, and its chunk key encoding turns grid coordinates into a key ('c/1/0/0').
    """
    chunk_grid = array.metadata.chunk_grid
    if not isinstance(chunk_grid, RegularChunkGrid):  # the only grid zarr 3 writes; says so to mypy
        raise StoreDamagedError(f"array {array.path}: chunk grid {type(chunk_grid).__name__} is not regular")
    grid = chunk_grid.chunk_shape
    along_samples = range(start // grid[0], (stop - 1) // grid[0] + 1)
    others = [range(-(-size // step)) for size, step in zip(array.shape[1:], grid[1:], strict=True)]
    return [array.metadata.encode_chunk_key(coords) for coords in itertools.product(along_samples, *others)]


def _damaged(node_dir: Path, why: str) -> StoreDamagedError:
    return StoreDamagedError(f"{node_dir}: damaged or missing zarr.json ({why})")
