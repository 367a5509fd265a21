"""The README cannot rot: its commands parse with the real command lines, its Python
snippets and its quick-look block run as written."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from pipeline.cache_cli import app as cache_app
from pipeline.generate import GenerateJob, run_generate
from pipeline.main_cli import app as main_app
from pipeline.train_cli import app as train_app
from stages.config import GenerationConfig, OrbitConfig
from stages.keypoints.config import PRESETS

try:  # recent typer ships its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:
    from click import exceptions as click_exceptions

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_python_snippets_run(tmp_path, tiny_model_dir, good_images, monkeypatch):
    config = GenerationConfig(orbit=OrbitConfig(num_frames=8), num_inference_steps=2, decode_chunk_size=8)
    run_generate(GenerateJob(good_images, tiny_model_dir, tmp_path / "example.zarr", config, progress=False))
    snippets = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(snippets) >= 2
    monkeypatch.chdir(tmp_path)
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), {})


def readme_commands() -> list[str]:
    """Every shell command of the README's bash blocks: continuations joined, comments and
    prompts dropped, `&&` chains split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split("&&")]
    return commands


def parse_with_cli(words: list[str]) -> None:
    """Parse a keydiff3d command line with the real typer app: unknown options, missing
    arguments and bad values raise click errors; nothing runs."""
    apps = {"keydiff3d": main_app, "keydiff3d-cache": cache_app, "keydiff3d-train": train_app}
    group = typer.main.get_command(apps[words[0]])
    context, rest = group.context_class(group, info_name=words[0]), words[1:]
    # Typer ships its own click, so groups are told apart by what they do, not by class.
    while hasattr(group, "list_commands"):  # `keydiff3d manipulate rig` nests one more level
        command = group.get_command(context, rest[0])
        assert command is not None, f"{' '.join(words)}: no command {rest[0]!r}"
        context = command.context_class(command, info_name=rest[0], parent=context)
        rest, group = rest[1:], command
    group.make_context(context.info_name, rest, parent=context.parent)


def test_every_readme_command_is_known_and_each_keydiff3d_command_parses():
    commands = readme_commands()
    nox_sessions = set(re.findall(r"@nox\.session\ndef (\w+)", (ROOT / "noxfile.py").read_text()))
    dask_help = {
        kind: subprocess.run(["dask", kind, "--help"], capture_output=True, text=True).stdout
        for kind in ("scheduler", "worker")
    }
    parsed = 0
    for command in commands:
        words = [w for w in shlex.split(command) if not re.fullmatch(r"[A-Z_]+=\S*", w)]
        program = words[0]
        if program.startswith("keydiff3d"):
            parse_with_cli(words)
            parsed += 1
        elif program == "nox":
            assert words[1] == "-s" and words[2] in nox_sessions, command
        elif program in ("python", "python3") and words[1].endswith(".py"):
            assert (ROOT / words[1]).is_file(), command
        elif program == "dask":
            assert all(w in dask_help[words[1]] for w in words if w.startswith("--")), command
        else:
            # Environment set-up, run as written by .ci/run and the fresh-clone check.
            assert program in (".", "python3", "pip") and (
                program != "python3" or words[1:3] == ["-m", "venv"]
            )
    assert parsed >= 20


def test_the_quick_look_block_runs_as_written(tmp_path):
    block = re.search(r"## A quick look at stage one.*?```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert block is not None
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.group(1)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "predictions" / "keypoints.json").read_text())
    (prediction,) = record["predictions"]
    # fit's default preset is cpu: one 2D point per keypoint it discovers.
    assert len(prediction["keypoints_2d"]) == PRESETS["cpu"].num_keypoints
    assert (tmp_path / "example-preview.png").is_file()


def test_the_pipeline_figure_draws(tmp_path):
    spec = importlib.util.spec_from_file_location("pipeline_figure", ROOT / "docs" / "pipeline_figure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.draw(tmp_path / "pipeline.png").stat().st_size > 20_000


def test_the_synthetic_world_figure_draws(tmp_path):
    pytest.importorskip("pybullet")
    path = ROOT / "docs" / "synthetic_world_figure.py"
    spec = importlib.util.spec_from_file_location("synthetic_world_figure", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.draw(tmp_path / "world.png", samples=1, resolution=48).stat().st_size > 10_000


@pytest.mark.parametrize(
    "words",
    [
        ["keydiff3d-train", "fit", "x.zarr", "--out", "r", "--no-such-option"],
        ["keydiff3d-train", "fit", "x.zarr"],
        ["keydiff3d", "manipulate", "no-such-command"],
        ["keydiff3d", "demo", "--minutes", "ten"],
    ],
)
def test_the_command_check_refuses_what_the_cli_refuses(words):
    with pytest.raises((click_exceptions.ClickException, AssertionError)):
        parse_with_cli(words)
