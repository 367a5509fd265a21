"""Versions of the synthetic world, readable without pybullet (store reports read them).

1: a random colour per link. 2: colours per body-part class, a face, a chest badge, a
quadruped head, textures and random light (stages/synthetic/appearance.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

WORLD_VERSIONS = (1, 2)
LATEST_WORLD_VERSION = 2
"""What new caches get unless told otherwise."""


def world_version(world: Mapping[str, Any]) -> int:
    """The version of a store's source metadata `world`; stores written before versions
    existed have none and are version 1."""
    return int(world.get("version", 1))
