"""Imports flow one way: cache_schema <- stages <- pipeline (STYLE.md convention 1)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "cache_schema": {
        "torch",
        "diffusers",
        "transformers",
        "stages",
        "pipeline",
        "typer",
        "dask",
        "distributed",
        "tqdm",
    },
    "stages": {"pipeline", "typer", "dask", "distributed", "tqdm"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_packages_only_import_downstream():
    offences = []
    for package, banned in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            bad = imported_roots(path) & banned
            if bad:
                offences.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert offences == []


def test_the_check_itself_catches_an_offence(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nfrom pipeline.runner import x\n")
    assert imported_roots(bad) == {"torch", "pipeline"}
