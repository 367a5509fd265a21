"""Which files make a checkpoint complete, and their SHA-256 digests (digests.json).

A checkpoint directory holds model/ (save_pretrained), optimizer.safetensors and
trainer_state.json; digests.json, written last, lists a SHA-256 of each of them. Flipped
bytes inside a safetensors file's tensor data load without complaint, so only a digest
tells a damaged checkpoint from a good one. Checkpoints written before digests existed
have no digests.json: they are checked for their files only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from diffusers.utils import SAFETENSORS_WEIGHTS_NAME

from stages.file_digests import sha256_file
from stages.keypoints.errors import TrainingError

DIGESTS = "digests.json"
MODEL_FILES = (f"model/{SAFETENSORS_WEIGHTS_NAME}", "model/config.json")
"""What prediction needs of a checkpoint."""
ALL_FILES = (*MODEL_FILES, "optimizer.safetensors", "trainer_state.json")
"""What resuming needs of a checkpoint."""


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """Written to `path.partial` and renamed: a killed writer never leaves half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(partial, path)


def write_digests(checkpoint: Path) -> None:
    """Record the SHA-256 of every file of ALL_FILES in checkpoint/digests.json."""
    checkpoint = Path(checkpoint)
    record = {"sha256": {name: sha256_file(checkpoint / name) for name in ALL_FILES}}
    write_json_atomically(checkpoint / DIGESTS, record)


def checkpoint_problem(checkpoint: Path, files: tuple[str, ...] = ALL_FILES) -> str | None:
    """Why `files` of this checkpoint cannot be trusted (one line naming the file), or None."""
    checkpoint = Path(checkpoint)
    for name in files:
        if not (checkpoint / name).is_file():
            return f"{checkpoint / name} is missing"
    digests_path = checkpoint / DIGESTS
    if not digests_path.is_file():
        # Written before digests existed: its files, and that its state parses, are all we can check.
        if "trainer_state.json" in files:
            try:
                json.loads((checkpoint / "trainer_state.json").read_text())["step"]
            except (ValueError, KeyError, TypeError) as exc:
                return f"{checkpoint / 'trainer_state.json'} is unreadable ({exc!r})"
        return None
    try:
        digests = json.loads(digests_path.read_text())["sha256"]
        expected = {name: str(digests[name]) for name in files}
    except (ValueError, KeyError, TypeError) as exc:
        return f"{digests_path} is unreadable or incomplete ({exc})"
    for name in files:
        if sha256_file(checkpoint / name) != expected[name]:
            return f"{checkpoint / name} does not match its SHA-256 in {DIGESTS}: the file is damaged"
    return None


def check_checkpoint(checkpoint: Path, files: tuple[str, ...] = ALL_FILES) -> None:
    """Raise TrainingError (one line naming the file) unless `files` are present and intact."""
    problem = checkpoint_problem(checkpoint, files)
    if problem is not None:
        raise TrainingError(f"checkpoint {problem}")
