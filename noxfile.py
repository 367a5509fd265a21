"""Developer sessions: `nox -s tests` is the CI command."""

from __future__ import annotations

import shutil

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

# The CPU wheel of this release is what the project's machines have offline; installing
# it first keeps pip from resolving a multi-GB CUDA build for `torch`.
TORCH = "torch==2.13.0"
# three.js for the render_gltf session, from npm (node_modules under .three/).
THREE = "three@0.187.0"
# The Khronos glTF validator checks `keydiff3d manipulate export`'s files
# (tests/test_manipulation_gltf.py looks in .gltf-validator/); pinned.
GLTF_VALIDATOR = "gltf-validator@2.0.0-dev.3.10"


def install(session: nox.Session, extras: str = "dev,synthetic") -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole offline test suite on CPU in two workers (7.5 minutes on 2 cores, 10 with the install)."""
    install(session)
    if shutil.which("npm"):
        npm = ["npm", "install", "--prefix", ".gltf-validator", "--no-save", "--no-audit", "--no-fund"]
        session.run(*npm, GLTF_VALIDATOR, external=True)
    else:
        session.warn("npm not found: the glTF validator test will be skipped")
    # Two pytest workers, one torch thread each: most of the suite's time is single-threaded
    # (process starts, imports, tiny models), so two workers use both cores, whereas two
    # torch threads per worker would oversubscribe them. `-n 0` in posargs runs serially.
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    session.run("python", "-m", "pytest", "-q", "-n", "2", *session.posargs, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on the whole repository."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy on the cache format, the cameras, the stage-two geometry, the metrics and the rig."""
    install(session)
    session.run(
        "mypy",
        "cache_schema",
        "stages/cameras.py",
        "stages/config.py",
        "stages/keypoints/geometry.py",
        "stages/evaluation/metrics.py",
        "stages/rotations.py",
        "stages/manipulation/kinematics.py",
        "stages/manipulation/rig.py",
        "stages/manipulation/gaussians.py",
        "stages/manipulation/ply.py",
        "stages/manipulation/mesh.py",
        "stages/manipulation/gltf_export.py",
    )


@nox.session
def render_gltf(session: nox.Session) -> None:
    """`keydiff3d manipulate export` as a web viewer shows it: three.js's GLTFLoader in headless
    Chromium renders a synthetic humanoid's .glb at its keyframes from a cache camera, and its
    silhouette must match the project's render of the posed mesh (IoU >= 0.9; iou.json and PNGs in
    bench-results/render_gltf/). Needs npm and Chromium (Debian: apt install chromium). Arguments
    go to docs/render_gltf.py (e.g. --rig demo/rig.json --cache demo/test.zarr --sample 18 --pose ...)."""
    install(session)
    npm = ["npm", "install", "--prefix", ".three", "--no-save", "--no-audit", "--no-fund", THREE]
    session.run(*npm, external=True)
    args = session.posargs or ["--synthetic"]
    session.run("python", "docs/render_gltf.py", *args, env={"HF_HUB_OFFLINE": "1"})


@nox.session
def demo(session: nox.Session) -> None:
    """`keydiff3d demo --out demo`: render, train, evaluate, demo/report.md (15 minutes on 2 cores).
    Arguments go to the demo (e.g. --minutes 5)."""
    install(session)
    session.run("keydiff3d", "demo", "--out", "demo", *session.posargs, env={"HF_HUB_OFFLINE": "1"})


@nox.session
def bench(session: nox.Session) -> None:
    """Speed benchmarks: tables, and JSON in bench-results/ (stage_one.json, render.json,
    stage_two.json). Arguments go to bench_stage_one.py."""
    install(session)
    session.run("python", "benchmarks/bench_stage_one.py", *session.posargs, env={"HF_HUB_OFFLINE": "1"})
    session.run("python", "benchmarks/bench_render.py", env={"HF_HUB_OFFLINE": "1"})
    session.run("python", "benchmarks/bench_stage_two.py", env={"HF_HUB_OFFLINE": "1"})


@nox.session
def quality(session: nox.Session) -> None:
    """The quality benchmark (about 60 minutes on 2 idle cores): bench-results/quality.json and a table.
    Arguments go to bench_quality.py (e.g. --steps, --seeds, --train-samples)."""
    install(session)
    session.run("python", "benchmarks/bench_quality.py", *session.posargs, env={"HF_HUB_OFFLINE": "1"})
