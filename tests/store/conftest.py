"""The store the tests here damage: rendered once per module, copied for each test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.store.helpers import generate


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A finished 4-sample render store, 2 samples per shard: what a fresh run writes."""
    pytest.importorskip("pybullet")
    out = tmp_path_factory.mktemp("pristine") / "c.zarr"
    result = generate(out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def store(pristine, tmp_path) -> Path:
    """A fresh copy of the pristine store, for a test to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "c.zarr"))
