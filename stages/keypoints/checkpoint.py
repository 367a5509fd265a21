"""Atomic checkpoints: model (save_pretrained), optimiser tensors (safetensors) and JSON state.

A checkpoint is written into a temporary directory that is renamed into place, and
`latest.json` is replaced by rename after that: a killed run never leaves a checkpoint
that looks complete but is not.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file, save_file

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
    _write_json(partial / "trainer_state.json", {**state, "step": step, "optimizer": skeleton})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    _write_json(root / LATEST, {"step": step, "dir": final.name})
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The directory latest.json points to, or None when the run has no checkpoint."""
    pointer = checkpoint_dir(run_dir) / LATEST
    if not pointer.is_file():
        return None
    try:
        target = checkpoint_dir(run_dir) / json.loads(pointer.read_text())["dir"]
    except (ValueError, KeyError) as exc:
        raise TrainingError(f"{pointer}: unreadable checkpoint pointer ({exc})") from exc
    if not (target / "trainer_state.json").is_file():
        raise TrainingError(f"{pointer} points to {target}, which is incomplete or missing")
    return target


def load_model(checkpoint: Path, device: torch.device | str = "cpu") -> KeyDiff3DModel:
    """The model of a checkpoint directory (or of any save_pretrained directory)."""
    path = Path(checkpoint)
    path = path / "model" if (path / "model").is_dir() else path
    if not (path / "config.json").is_file():
        raise TrainingError(f"{path}: not a saved KeyDiff3D model (no config.json)")
    model = KeyDiff3DModel.from_pretrained(str(path), local_files_only=True)
    return model.to(device)


def latest_step(run_dir: Path) -> int:
    """The step of the run's last checkpoint, 0 when it has none."""
    checkpoint = latest_checkpoint(run_dir)
    return int(json.loads((checkpoint / "trainer_state.json").read_text())["step"]) if checkpoint else 0


@dataclass(frozen=True, eq=False)
class TrainedRun:
    """A run's last checkpoint, loaded for prediction."""

    model: KeyDiff3DModel
    """In eval mode, on the device it was loaded to."""
    num_views: int
    """K, the cached views the model reads (input first)."""
    checkpoint: Path


def load_run(run_dir: Path, device: torch.device | str = "cpu") -> TrainedRun:
    """The last checkpoint of a `keydiff3d-train fit` run directory, ready to predict."""
    run_dir = Path(run_dir)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise TrainingError(f"{run_dir}: no checkpoint (run `keydiff3d-train fit` first)")
    config_path = run_dir / RUN_CONFIG
    if not config_path.is_file():
        raise TrainingError(f"{run_dir}: not a training run directory (no {RUN_CONFIG})")
    num_views = int(json.loads(config_path.read_text())["stage_two"]["num_views"])
    return TrainedRun(load_model(checkpoint, device).eval(), num_views, checkpoint)


def restore_checkpoint(
    checkpoint: Path, model: KeyDiff3DModel, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Load a checkpoint's weights and optimiser state in place; return its JSON state (step, seed, ...)."""
    checkpoint = Path(checkpoint)
    model.load_state_dict(load_file(str(checkpoint / "model" / SAFETENSORS_WEIGHTS_NAME)))
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    tensors = load_file(str(checkpoint / "optimizer.safetensors"))
    optimizer.load_state_dict(_join_optimizer_state(tensors, state.pop("optimizer")))
    return state


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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(partial, path)
