"""Atomic checkpoints: model (save_pretrained), optimiser tensors (safetensors) and JSON state.

A checkpoint is written into a temporary directory that is renamed into place, and
`latest.json` is replaced by rename after that: a killed run never leaves a checkpoint
that looks complete but is not. Each checkpoint records the SHA-256 of its files
(checkpoint_files.py) and every loader checks them, so a damaged file is refused by name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from stages.keypoints.checkpoint_files import (
    ALL_FILES,
    MODEL_FILES,
    check_checkpoint,
    checkpoint_problem,
    write_digests,
    write_json_atomically,
)
from stages.keypoints.errors import TrainingError
from stages.keypoints.model import KeyDiff3DModel

LATEST = "latest.json"
RUN_CONFIG = "config.json"
"""The resolved training config of a run directory (stage_two and data sections)."""


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(
    run_dir: Path, step: int, model: KeyDiff3DModel, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> Path:
    """Write checkpoint `step` and point latest.json at it. Returns its directory."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    partial = root / f".step_{step:08d}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial / "model", safe_serialization=True)
    tensors, skeleton = _split_optimizer_state(optimizer.state_dict())
    save_file(tensors, str(partial / "optimizer.safetensors"))
    write_json_atomically(partial / "trainer_state.json", {**state, "step": step, "optimizer": skeleton})
    write_digests(partial)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    write_json_atomically(root / LATEST, {"step": step, "dir": final.name})
    return final


@dataclass(frozen=True)
class CheckpointChoice:
    """The checkpoint a run continues or predicts from."""

    path: Path | None
    """None when the run has no checkpoint at all."""
    note: str | None = None
    """Why this is not the checkpoint latest.json names (None when it is)."""


_STEP_DIR = re.compile(r"step_\d{8}")


def choose_checkpoint(run_dir: Path) -> CheckpointChoice:
    """The checkpoint latest.json names; without a usable latest.json, the newest complete one.

    latest.json is replaced last, so it is missing only if someone removed it, and names a
    missing folder only if someone deleted that: the run's other checkpoints are still good,
    and restarting from step 0 would throw them away. The checkpoint latest.json names is
    returned unchecked: its loader refuses it by name if it is damaged.
    """
    root = checkpoint_dir(run_dir)
    pointer = root / LATEST
    if not root.is_dir():
        return CheckpointChoice(None)
    if pointer.is_file():
        try:
            target = root / str(json.loads(pointer.read_text())["dir"])
        except (ValueError, KeyError, TypeError) as exc:
            why = f"{pointer} is unreadable ({exc})"
        else:
            if target.is_dir():
                return CheckpointChoice(target)
            why = f"{pointer} names {target.name}, which is missing"
    else:
        why = f"{pointer} is missing"
    candidates = sorted((p for p in root.iterdir() if _STEP_DIR.fullmatch(p.name)), reverse=True)
    skipped = []
    for candidate in candidates:
        problem = checkpoint_problem(candidate)
        if problem is None:
            also = f"; skipped {'; '.join(skipped)}" if skipped else ""
            return CheckpointChoice(
                candidate, f"{why}: using {candidate.name}, the newest complete checkpoint{also}"
            )
        skipped.append(problem)
    if skipped:
        raise TrainingError(f"{why}, and no checkpoint in {root} is complete ({skipped[0]})")
    if pointer.is_file():
        raise TrainingError(f"{why}, and {root} holds no other checkpoint")
    return CheckpointChoice(None)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a run continues from (see choose_checkpoint), or None when it has none."""
    return choose_checkpoint(run_dir).path


def load_model(checkpoint: Path, device: torch.device | str = "cpu") -> KeyDiff3DModel:
    """The model of a checkpoint directory (or of any save_pretrained directory)."""
    path = Path(checkpoint)
    if (path / "model").is_dir():
        check_checkpoint(path, MODEL_FILES)
        path = path / "model"
    if not (path / "config.json").is_file():
        raise TrainingError(f"{path}: not a saved KeyDiff3D model (no config.json)")
    try:
        model = KeyDiff3DModel.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise TrainingError(f"{path}: cannot load the model ({_first_line(exc)})") from exc
    return model.to(device)


def latest_step(run_dir: Path) -> int:
    """The step of the run's last checkpoint, 0 when it has none."""
    checkpoint = latest_checkpoint(run_dir)
    return int(_read_state(checkpoint)["step"]) if checkpoint else 0


@dataclass(frozen=True, eq=False)
class TrainedRun:
    """A run's last checkpoint, loaded for prediction."""

    model: KeyDiff3DModel
    """In eval mode, on the device it was loaded to."""
    num_views: int
    """K, the cached views the model reads (input first)."""
    checkpoint: Path
    note: str | None = None
    """Why this is not the checkpoint latest.json names (None when it is)."""


def load_run(run_dir: Path, device: torch.device | str = "cpu") -> TrainedRun:
    """The last checkpoint of a `keydiff3d-train fit` run directory, ready to predict."""
    run_dir = Path(run_dir)
    choice = choose_checkpoint(run_dir)
    checkpoint = choice.path
    if checkpoint is None:
        raise TrainingError(f"{run_dir}: no checkpoint (run `keydiff3d-train fit` first)")
    config_path = run_dir / RUN_CONFIG
    if not config_path.is_file():
        raise TrainingError(f"{run_dir}: not a training run directory (no {RUN_CONFIG})")
    num_views = int(json.loads(config_path.read_text())["stage_two"]["num_views"])
    return TrainedRun(load_model(checkpoint, device).eval(), num_views, checkpoint, choice.note)


def restore_checkpoint(
    checkpoint: Path, model: KeyDiff3DModel, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Load a checkpoint's weights and optimiser state in place; return its JSON state (step, seed, ...)."""
    checkpoint = Path(checkpoint)
    check_checkpoint(checkpoint, ALL_FILES)
    model.load_state_dict(_read_tensors(checkpoint / "model" / SAFETENSORS_WEIGHTS_NAME))
    state = _read_state(checkpoint)
    tensors = _read_tensors(checkpoint / "optimizer.safetensors")
    try:
        optimizer.load_state_dict(_join_optimizer_state(tensors, state.pop("optimizer")))
    except (KeyError, ValueError, TypeError) as exc:
        raise TrainingError(f"{checkpoint}: optimizer state does not fit this run ({exc!r})") from exc
    return state


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file; a damaged one (checkpoints from before digests) is refused by name."""
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise TrainingError(f"{path}: unreadable safetensors file ({_first_line(exc)})") from exc


def _read_state(checkpoint: Path) -> dict[str, Any]:
    path = Path(checkpoint) / "trainer_state.json"
    try:
        state = json.loads(path.read_text())
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"{path}: unreadable trainer state ({exc!r})") from exc
    return state


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for param_id, values in state["state"].items():
        per_param[str(param_id)] = {}
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{param_id}.{key}"] = value.detach().cpu().contiguous()
                per_param[str(param_id)][key] = "tensor"
            else:
                per_param[str(param_id)][key] = value
    return tensors, {"state": per_param, "param_groups": state["param_groups"]}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], skeleton: dict[str, Any]) -> dict[str, Any]:
    state = {
        int(param_id): {
            key: tensors[f"{param_id}.{key}"] if value == "tensor" else value for key, value in values.items()
        }
        for param_id, values in skeleton["state"].items()
    }
    return {"state": state, "param_groups": skeleton["param_groups"]}
