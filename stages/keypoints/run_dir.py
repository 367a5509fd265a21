"""A training run directory: started, checked on --resume, and undone when a new run fails
before its first checkpoint.

A fresh `fit` writes config.json, stage_one.json and an empty metrics.jsonl, then trains.
If it stops before any checkpoint exists (a bad cache found in the first batch, a NaN
loss, Ctrl-C), those files are worth nothing, but config.json used to make the next
`fit` refuse the folder as "already holds a run". So a fresh fit that fails removes what
it wrote (and the folders it created, when nothing else got into them), and a fresh fit
on a folder whose run has no checkpoint at all (one killed too hard to clean up) starts
that run again. A run with any checkpoint is never removed or restarted.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stages.keypoints.checkpoint import (
    LATEST,
    RUN_CONFIG,
    checkpoint_dir,
    choose_checkpoint,
    restore_checkpoint,
)
from stages.keypoints.checkpoint_files import write_json_atomically
from stages.keypoints.errors import TrainingError
from stages.keypoints.run_stage_one import STAGE_ONE, write_stage_one

METRICS = "metrics.jsonl"
RESUMABLE_FIELDS = ("steps", "checkpoint_every", "log_every", "loader_workers")
"""Fields that may change between a run and its resumption: they do not change what is learned."""
_FRESH_FILES = (RUN_CONFIG, STAGE_ONE, METRICS)
"""What a fresh fit writes into its run directory before its first checkpoint."""


@dataclass(frozen=True)
class StartedRun:
    """A run directory ready to train in, and what to undo if training fails before a checkpoint."""

    run_dir: Path
    start_step: int
    fresh: bool
    """Started by this fit (not --resume): its files may be removed again."""
    created: tuple[Path, ...] = ()
    """Folders this fit created, deepest first (checkpoints/, run_dir, the parents it made)."""

    def undo_if_no_checkpoint(self) -> None:
        """After a failure: remove what a fresh fit wrote, unless a checkpoint exists by now.

        Only files this fit wrote and folders it created are removed, and a folder only when
        it is empty then: anything else in it (the user's own files) keeps it."""
        if not self.fresh or has_checkpoint(self.run_dir):
            return
        for name in _FRESH_FILES:
            for path in (self.run_dir / name, self.run_dir / f"{name}.partial"):
                path.unlink(missing_ok=True)
        # A checkpoint save cut short leaves only its .step_XXXXXXXX.partial folder.
        for partial in checkpoint_dir(self.run_dir).glob(".step_*.partial"):
            shutil.rmtree(partial, ignore_errors=True)
        for folder in self.created:
            if not folder.is_dir():  # checkpoints/ when the fit never got to save one
                continue
            try:
                folder.rmdir()  # only succeeds on an empty folder
            except OSError:
                break


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run holds a checkpoint or a latest.json (a complete one or a damaged one)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return False
    return any(p.name == LATEST or p.name.startswith("step_") for p in root.iterdir())


def start_run_dir(
    run_dir: Path,
    resume: bool,
    resolved: dict[str, Any],
    cache: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    notice: Callable[[str], None],
) -> StartedRun:
    """Write config.json and stage_one.json for a new run, or check a resumed one and
    restore its last checkpoint into model and optimizer.

    resolved: the run config ({'stage_two': ..., 'data': ...}); cache: the first training
    cache, whose stage-one settings the run keeps."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"--out {run_dir} is a file, not a run directory")
    if resume:
        return _resume(run_dir, resolved, cache, model, optimizer, notice)
    config_path = run_dir / RUN_CONFIG
    if config_path.exists():
        if has_checkpoint(run_dir) or not _is_run_config(config_path):
            raise TrainingError(
                f"{run_dir} already holds a run: pass --resume to continue it, or use a new --out"
            )
        notice(f"{run_dir} holds a run that stopped before its first checkpoint: starting it afresh")
    folders = (checkpoint_dir(run_dir), run_dir, *run_dir.parents)
    created = tuple(p for p in folders if not p.exists())
    started = StartedRun(run_dir, 0, fresh=True, created=created)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomically(config_path, resolved)
        write_stage_one(run_dir, cache)
        (run_dir / METRICS).write_text("")
    except BaseException:
        started.undo_if_no_checkpoint()
        raise
    return started


def _resume(
    run_dir: Path,
    resolved: dict[str, Any],
    cache: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    notice: Callable[[str], None],
) -> StartedRun:
    config_path = run_dir / RUN_CONFIG
    if not config_path.is_file():
        raise TrainingError(f"--resume: {run_dir} holds no run (no {RUN_CONFIG})")
    try:
        saved = json.loads(config_path.read_text())
        saved["stage_two"], saved["data"]["fingerprints"]
    except (ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"--resume: {config_path} is unreadable ({exc!r})") from exc
    current = json.loads(json.dumps(resolved["stage_two"]))
    changed = [k for k, v in saved["stage_two"].items() if k not in RESUMABLE_FIELDS and current.get(k) != v]
    if changed:
        raise TrainingError(
            f"--resume: {run_dir} was trained with different {changed}; only {RESUMABLE_FIELDS} may change"
        )
    if saved["data"]["fingerprints"] != resolved["data"]["fingerprints"]:
        raise TrainingError(f"--resume: {run_dir} was trained on other caches ({saved['data']['caches']})")
    choice = choose_checkpoint(run_dir)
    # Restore before touching the run directory: a refused checkpoint leaves it as it was.
    state = restore_checkpoint(choice.path, model, optimizer) if choice.path is not None else {"step": 0}
    write_json_atomically(config_path, {**saved, "stage_two": resolved["stage_two"]})
    if not (run_dir / STAGE_ONE).is_file():
        # A run from before stage_one.json: its caches are here now, so keep their settings.
        write_stage_one(run_dir, cache)
    if choice.note:
        notice(f"--resume: {choice.note}")
    if choice.path is None:
        (run_dir / METRICS).write_text("")
        return StartedRun(run_dir, 0, fresh=False)
    _truncate_metrics(run_dir / METRICS, state["step"])
    return StartedRun(run_dir, int(state["step"]), fresh=False)


def _is_run_config(path: Path) -> bool:
    """Whether config.json is a `fit` run config (not some other tool's config.json)."""
    try:
        saved = json.loads(path.read_text())
        return isinstance(saved, dict) and {"stage_two", "data"} <= saved.keys()
    except (OSError, ValueError):
        return False


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines past the checkpoint being resumed: they will be logged again."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))
