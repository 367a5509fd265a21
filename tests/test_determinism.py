"""Training on the CPU gives the same bits in every process at a given thread count (and
agrees to rounding across counts); the default is one thread on every machine, so the same
command gives the same bits anywhere, and a user's --threads wins (issue 13, items 14, 15)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.main_cli import app as main_app
from pipeline.train_cli import app
from stages.errors import ConfigError
from stages.threads import DEFAULT_THREADS, choose_threads, torch_threads
from tests.fixtures.synthetic_caches import render_humanoid_cache

ROOT = Path(__file__).resolve().parents[1]
MODEL = "model/diffusion_pytorch_model.safetensors"
# The cpu preset at its render size (64 px: the edge-map backward sees 4 * 4 * 64^2 pixels,
# enough for torch to split it over 2 threads), with a small volume so a step takes a moment.
FIT = [
    "--features", "pixels", "--perceptual", "ssim", "--num-keypoints", "6", "--volume-size", "8",
    "--batch-size", "4", "--workers", "0", "--steps", "12", "--log-every", "1",
    "--checkpoint-every", "12", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    pytest.importorskip("pybullet")
    return render_humanoid_cache(tmp_path_factory.mktemp("determinism") / "humanoid.zarr", 8)


def _start_fit(cache: Path, run: Path, threads: int | None, omp: int = 2) -> subprocess.Popen:
    """`keydiff3d-train fit` in a fresh process (cwd: this checkout, so its packages load), with
    `--threads threads` (None: the default) and OMP_NUM_THREADS=omp in its environment."""
    command = [sys.executable, "-c", "from pipeline.train_cli import app; app()", "fit", str(cache)]
    env = {**os.environ, "OMP_NUM_THREADS": str(omp)}
    option = [] if threads is None else ["--threads", str(threads)]
    return subprocess.Popen(
        [*command, "--out", str(run), *FIT, *option],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _losses(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def _weights(run: Path) -> bytes:
    return (
        run / "checkpoints" / "step_00000012" / "model" / "diffusion_pytorch_model.safetensors"
    ).read_bytes()


def test_two_thread_fits_give_the_same_bits_and_the_default_is_one_thread_anywhere(cache, tmp_path):
    # The runs go one after the other: side by side on 2 cores they would oversubscribe them.
    runs = {name: tmp_path / name for name in ("two_a", "two_b", "one", "default")}
    for name, threads in (("two_a", 2), ("two_b", 2), ("one", 1), ("default", None)):
        process = _start_fit(cache, runs[name], threads)
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
    two = _losses(runs["two_a"])
    assert [r["step"] for r in two] == list(range(1, 13))
    assert _losses(runs["two_b"]) == two
    # The losses are floats as JSON keeps them; the weights are the bits themselves.
    assert _weights(runs["two_a"]) == _weights(runs["two_b"])
    # Another thread count splits some reductions elsewhere (the soft-argmax's sums over
    # voxels among them, from step 1): the losses agree to rounding only (README).
    one = _losses(runs["one"])
    for a, b in zip(one, two, strict=True):
        assert a.keys() == b.keys()
        assert all(a[k] == pytest.approx(b[k], rel=1e-3) for k in a)
    # The default is one thread on every machine, whatever OMP_NUM_THREADS says: the same bits.
    assert _losses(runs["default"]) == one
    assert _weights(runs["default"]) == _weights(runs["one"])


def test_the_default_is_one_thread_and_a_requested_count_wins():
    assert choose_threads(None) == DEFAULT_THREADS == 1
    assert choose_threads(3) == 3
    for bad in (0, -1, True):
        with pytest.raises(ConfigError, match="--threads must be >= 1"):
            choose_threads(bad)


def test_torch_threads_restores_the_previous_count():
    import torch

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("value", ["0", "-1"])
def test_cli_threads_out_of_range_is_one_line_and_exit_2(tmp_path, value):
    missing = tmp_path / "missing.zarr"  # refused before any cache is read
    fit = ["fit", str(missing), "--out", str(tmp_path / "r"), "--features", "pixels", "--threads", value]
    evaluate = ["eval", str(tmp_path / "run"), "--train-cache", str(missing), "--test-cache", str(missing)]
    demo = ["demo", "--out", str(tmp_path / "d"), "--threads", value]
    for application, args in (
        (app, fit),
        (app, [*evaluate, "--out", str(tmp_path / "e"), "--threads", value]),
        (main_app, demo),
    ):
        result = CliRunner().invoke(application, args)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert lines == [f"error: --threads must be >= 1 (or left out to choose), got {value}"]
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()


def test_help_documents_threads():
    for application, command in ((app, "fit"), (app, "eval"), (main_app, "demo")):
        result = CliRunner().invoke(application, [command, "--help"], terminal_width=200)
        assert "--threads" in result.output
