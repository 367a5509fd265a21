"""The stage-two training loop (library side: no CLI, no progress bars; callbacks instead)."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cache_schema import CacheError
from stages.devices import resolve_device
from stages.keypoints.checkpoint import RUN_CONFIG, latest_checkpoint, save_checkpoint
from stages.keypoints.config import StageTwoConfig
from stages.keypoints.data import (
    CacheSummary,
    CacheTrainingSet,
    ErrorsAsValues,
    StepBatchSampler,
    keep_batch,
    summarise_caches,
)
from stages.keypoints.errors import TrainingError
from stages.keypoints.losses import StepOutputs, training_losses
from stages.keypoints.model import KeyDiff3DModel
from stages.keypoints.perceptual import build_perceptual_loss
from stages.keypoints.run_dir import METRICS, StartedRun, start_run_dir
from stages.keypoints.run_dir import RESUMABLE_FIELDS as RESUMABLE_FIELDS  # re-exported
from stages.threads import choose_threads, torch_threads

CONFIG = RUN_CONFIG


@dataclass(frozen=True)
class FitJob:
    """One training run."""

    caches: tuple[Path, ...]
    run_dir: Path
    config: StageTwoConfig
    device: str = "auto"
    """'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'."""
    resume: bool = False
    """Continue from the run directory's last checkpoint up to config.steps."""
    vgg_weights: Path | None = None
    """VGG16 ImageNet checkpoint; None looks in the torch hub cache."""
    threads: int | None = None
    """Torch intra-op threads while training; None: 1 on every machine
    (`stages.threads.choose_threads`). Runs at one thread count repeat bit for bit; another
    count splits some CPU reductions differently (losses agree to about 7 digits)."""


@dataclass
class FitSummary:
    start_step: int
    final_step: int
    seconds: float = 0.0
    wait_seconds: float = 0.0
    """Time the loop spent blocked on the data loader."""
    last_terms: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None

    @property
    def wait_fraction(self) -> float:
        return self.wait_seconds / self.seconds if self.seconds else 0.0


def frustum_half_extent(summary: CacheSummary) -> float:
    """The default half side of the voxel cube: the half-width of the view frustum at the
    orbit centre, radius * tan(fov / 2), which holds whatever the cameras frame."""
    return summary.camera_radius * math.tan(math.radians(summary.fov_deg) / 2.0)


def build_model(config: StageTwoConfig, caches: tuple[Path, ...]) -> tuple[KeyDiff3DModel, dict[str, Any]]:
    """The initialised model for these caches (seeded by config.seed) and the run's data record."""
    summary = summarise_caches(caches, config.num_views, config.feature_source)
    half_extent = config.volume_half_extent or frustum_half_extent(summary)
    # Seed inside a forked RNG state: building a model must not reseed the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = KeyDiff3DModel(
            image_size=summary.image_size,
            volume_half_extent=float(half_extent),
            feature_layer_channels=tuple(layer.channels for layer in summary.feature_layers),
            feature_source=config.feature_source,
            num_keypoints=config.num_keypoints,
            volume_size=config.volume_size,
            feature_channels=config.feature_channels,
            feature_size=config.feature_size,
            keypoint_channels=config.keypoint_channels,
            aggregation=config.aggregation,
            volume_channels=config.volume_channels,
            render_size=config.render_size,
            edge_sigma=config.edge_sigma,
            heatmap_sigma=config.heatmap_sigma,
            decoder_channels=config.decoder_channels,
            pixel_encoder=config.pixel_encoder,
            pixel_input_size=config.pixel_input_size,
            appearance_transport=config.appearance_transport,
            adjacency_init=config.adjacency_init,
            keypoint_spread=config.keypoint_spread,
            keypoint_spread_steps=config.keypoint_spread_steps,
            structure_heatmaps=config.structure_heatmaps,
            skeleton=config.skeleton,
        )
    record = {
        "caches": [str(Path(c).resolve()) for c in caches],
        "fingerprints": list(summary.fingerprints),
        "done_samples": summary.num_samples,
        "image_size": summary.image_size,
        "volume_half_extent": half_extent,
        "feature_layers": [layer.array_name for layer in summary.feature_layers],
    }
    return model, record


def build_optimizer(model: KeyDiff3DModel, config: StageTwoConfig) -> torch.optim.AdamW:
    """AdamW over the keypoint network (lr) and the reconstruction network (lr_reconstruction).

    With adjacency_lr_scale != 1 the edge logits get their own group at lr * scale and no
    weight decay: decay at such a rate would pull every logit back to 0, where all edges
    are equally present."""
    separate = config.adjacency_lr_scale != 1.0
    groups = [
        {"params": model.keypoint_parameters(with_adjacency=not separate), "lr": config.lr},
        {"params": model.reconstruction_parameters(), "lr": config.lr_reconstruction},
    ]
    if separate:
        groups.append(
            {"params": [model.adjacency], "lr": config.lr * config.adjacency_lr_scale, "weight_decay": 0.0}
        )
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def learning_rate_factor(schedule: str, step: int, steps: int) -> float:
    """The multiplier of every base learning rate at 0-based `step` of `steps`.

    'constant': 1. 'cosine': 0.5 (1 + cos(pi step / steps)), 1 at step 0 and falling
    towards 0 at the last step. A pure function of the step, so a resumed run continues
    on the same curve."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / steps))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")


def apply_learning_rate(optimizer: torch.optim.Optimizer, schedule: str, step: int, steps: int) -> None:
    """Set every group's lr to its base lr times the schedule's factor. The base lr is the
    group's lr when first seen here, kept in the group (so saved with the optimizer and
    restored on resume)."""
    if schedule == "constant":
        return
    factor = learning_rate_factor(schedule, step, steps)
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("base_lr", group["lr"]) * factor


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of one step's augmentation: a function of (seed, step) only."""
    state = np.random.SeedSequence([seed, step]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def fit(
    job: FitJob,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    on_checkpoint: Callable[[int, Path, dict[str, torch.Tensor], StepOutputs, KeyDiff3DModel], None]
    | None = None,
    notice: Callable[[str], None] | None = None,
) -> FitSummary:
    """Train (or resume) up to job.config.steps; checkpoints every config.checkpoint_every steps.

    progress(step, terms) is called after every step; on_checkpoint(step, directory, batch,
    outputs, model) after every checkpoint (for previews); notice(line) when a resumed run
    cannot use the checkpoint latest.json names and says which one it resumes from, or when
    a new run restarts one that stopped before its first checkpoint.

    A new run that fails (or is interrupted) before its first checkpoint removes what it
    wrote, so the same command can simply be run again (stages/keypoints/run_dir.py).
    """
    with torch_threads(choose_threads(job.threads)):
        return _fit(job, progress, on_checkpoint, notice)


def _fit(
    job: FitJob,
    progress: Callable[[int, dict[str, float]], None] | None,
    on_checkpoint: Callable[[int, Path, dict[str, torch.Tensor], StepOutputs, KeyDiff3DModel], None] | None,
    notice: Callable[[str], None] | None,
) -> FitSummary:
    config = job.config
    run_dir = Path(job.run_dir)
    device = torch.device(resolve_device(job.device))
    perceptual = build_perceptual_loss(config.perceptual, job.vgg_weights).to(device)
    model, record = build_model(config, tuple(job.caches))
    optimizer = build_optimizer(model, config)
    resolved = {"stage_two": config.to_dict(), "data": record}
    started = start_run_dir(
        run_dir, job.resume, resolved, job.caches[0], model, optimizer, notice or (lambda line: None)
    )
    try:
        return _train(job, started, model, optimizer, perceptual, device, progress, on_checkpoint)
    except BaseException:
        # Ctrl-C or an error before the first checkpoint: a fresh run's files would only make
        # the next fit refuse the folder, so they go (a run with a checkpoint is kept).
        started.undo_if_no_checkpoint()
        raise


def _train(
    job: FitJob,
    started: StartedRun,
    model: KeyDiff3DModel,
    optimizer: torch.optim.Optimizer,
    perceptual: torch.nn.Module,
    device: torch.device,
    progress: Callable[[int, dict[str, float]], None] | None,
    on_checkpoint: Callable[[int, Path, dict[str, torch.Tensor], StepOutputs, KeyDiff3DModel], None] | None,
) -> FitSummary:
    """The training loop from started.start_step up to job.config.steps."""
    config, run_dir, start = job.config, started.run_dir, started.start_step
    model.to(device).train()
    _move_optimizer_state(optimizer, device)
    summary = FitSummary(start_step=start, final_step=start)
    if start >= config.steps:
        return summary

    dataset = CacheTrainingSet(
        job.caches,
        config.num_views,
        config.render_size,
        config.feature_source == "diffusion",
        feature_view_size=model.config.pixel_input_size,
        in_memory=config.loader_in_memory,
    )
    loader = torch.utils.data.DataLoader(
        ErrorsAsValues(dataset),
        batch_sampler=StepBatchSampler(len(dataset), config.batch_size, config.seed, start, config.steps),
        num_workers=config.loader_workers,
        collate_fn=keep_batch,
        pin_memory=device.type == "cuda",
    )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and config.mixed_precision
        else contextlib.nullcontext()
    )
    metrics = (run_dir / METRICS).open("a")
    tic = time.perf_counter()
    batches = iter(loader)
    try:
        for step in range(start, config.steps):
            wait = time.perf_counter()
            loaded = next(batches)
            if isinstance(loaded, CacheError):  # raised in a loader worker (ErrorsAsValues)
                raise loaded
            batch = {k: v.to(device, non_blocking=True) for k, v in loaded.items()}
            summary.wait_seconds += time.perf_counter() - wait
            model.fade_spread_prior(step)
            with autocast:
                terms, outputs = training_losses(
                    model, perceptual, batch, config, step_generator(config.seed, step)
                )
            values = {name: float(value.detach()) for name, value in terms.items()}
            for name, value in values.items():
                if not math.isfinite(value):
                    raise TrainingError(
                        f"step {step + 1}: loss term '{name}' is {value}; stopping (last checkpoint: "
                        f"{latest_checkpoint(run_dir)})"
                    )
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            apply_learning_rate(optimizer, config.lr_schedule, step, config.steps)
            optimizer.step()
            done = step + 1
            summary.final_step, summary.last_terms = done, values
            if done % config.log_every == 0 or done == config.steps:
                metrics.write(
                    json.dumps({"step": done, **values, "seconds": time.perf_counter() - tic}) + "\n"
                )
                metrics.flush()
            if progress is not None:
                progress(done, values)
            if done % config.checkpoint_every == 0 or done == config.steps:
                state = {"seed": config.seed, "terms": values}
                summary.checkpoint = save_checkpoint(run_dir, done, model, optimizer, state)
                if on_checkpoint is not None:
                    on_checkpoint(done, summary.checkpoint, batch, outputs, model)
    finally:
        metrics.close()
        summary.seconds = time.perf_counter() - tic
    return summary


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for values in optimizer.state.values():
        for key, value in values.items():
            if torch.is_tensor(value) and key != "step":
                values[key] = value.to(device)
