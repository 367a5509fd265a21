"""Shared fixtures: offline hub, a tiny SV3D-p model on disk, example images."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from 2 threads, and spinning OpenMP threads slow to a
    crawl when other processes share the 2 cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from stages.sv3d.tiny import save_tiny_sv3d

    return save_tiny_sv3d(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture
def good_images(tmp_path):
    from tests.fixtures.images import write_good_images

    folder = tmp_path / "images"
    write_good_images(folder)
    return folder
