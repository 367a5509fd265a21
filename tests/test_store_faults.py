"""A damaged or shared store (reliability issue): one writer at a time, missing shard files,
damaged zarr.json files and chunks that do not decode are named in one line, exit code 2.

Apart from tests/test_faults.py because every test here needs the synthetic renderer
(pybullet), whose absence must not skip those.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pybullet")

from typer.testing import CliRunner  # noqa: E402

from pipeline.cache_cli import app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# 4 samples, 2 per shard: shard 1 holds samples 2 and 3.
RENDER = ["--backend", "render", "--source", "synthetic:humanoid", "--num-samples", "4"]
SMALL = ["--resolution", "32", "--shard-size", "2", "--no-progress"]


def generate(out: Path, *extra: str):
    return CliRunner().invoke(app, ["generate", *RENDER, *SMALL, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pristine") / "c.zarr"
    result = generate(out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def store(pristine, tmp_path) -> Path:
    """A fresh copy of a finished 4-sample render store, for a test to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "c.zarr"))


def files_of(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


# -- 1. one writer per store ------------------------------------------------------------


def hold_lock_in_subprocess(out: Path) -> subprocess.Popen:
    """Another process holding the store's writer lock until it is killed."""
    code = (
        "import sys, time\n"
        "from pipeline.store_lock import hold_store_lock\n"
        f"with hold_store_lock({str(out)!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_and_a_killed_holder_does_not_block(store):
    before = files_of(store)
    holder = hold_lock_in_subprocess(store)
    try:
        for extra in ([], ["--overwrite"]):
            line = one_error_line(generate(store, *extra))
            assert line == (
                f"error: {store}: store is in use by PID {holder.pid} on {socket.gethostname()} "
                f"(lock {store}.lock)"
            )
        assert files_of(store) == before  # --overwrite deleted nothing
        # Readers take no lock.
        assert CliRunner().invoke(app, ["verify", str(store)]).exit_code == 0
        assert CliRunner().invoke(app, ["inspect", str(store)]).exit_code == 0
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the kernel drops the flock
        holder.wait()
    assert Path(f"{store}.lock").exists() and Path(f"{store}.lock.info").exists()  # left by the dead holder
    result = generate(store, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "4 done now" in result.output
    assert not Path(f"{store}.lock.info").exists()  # a clean release removes the holder record
