"""Helpers of the store tests: render a small store, damage its files, read one-line errors.

No pybullet import here: test_input_listing borrows `one_error_line` and must not be
skipped where the renderer is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from pipeline.cache_cli import app

ROOT = Path(__file__).resolve().parents[2]
# 4 samples, 2 per shard: shard 1 holds samples 2 and 3.
RENDER = ["--backend", "render", "--source", "synthetic:humanoid", "--num-samples", "4"]
SMALL = ["--resolution", "32", "--shard-size", "2", "--no-progress"]


def generate(out: Path, *extra: str):
    return CliRunner().invoke(app, ["generate", *RENDER, *SMALL, "--out", str(out), *extra])


def files_of(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))


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


def shard_file(store: Path, name: str, shard: int) -> Path:
    """The one file of `shard` of array `name`, found on disk (not from a hard-coded layout)."""
    chunks = store / name / "c"
    found = [p for p in chunks.rglob("*") if p.is_file() and p.relative_to(chunks).parts[0] == str(shard)]
    assert len(found) == 1, found
    return found[0]
