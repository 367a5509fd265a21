"""Stage one for `keydiff3d predict`: the run's own settings, and a check, before any image is
generated, that the --model directory makes views and features the run's model can read.

Stage one is the slow part of predict (minutes per image with real SV3D-p weights), so a
model directory of the wrong size must be refused from its configs alone, not after it ran.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.backends import SV3DBackendSpec
from stages.config import GenerationConfig
from stages.keypoints.checkpoint import RUN_CONFIG, TrainedRun
from stages.keypoints.errors import TrainingError
from stages.keypoints.run_stage_one import StageOneSettings, StageOneUnknown, read_stage_one


@dataclass(frozen=True)
class StageOneChoice:
    """The settings predict runs stage one with, and why, when that is worth telling the user."""

    config: GenerationConfig
    settings: StageOneSettings | None
    """What the run recorded; None for an older run whose settings are unknown."""
    notes: tuple[str, ...] = ()


def choose_stage_one(run_dir: Path, defaults_if_unknown: bool = False) -> StageOneChoice:
    """The run's stage-one settings (stage_one.json, or an older run's training cache).

    defaults_if_unknown: for an older run whose training cache is gone, use the SV3D-p
    defaults instead of refusing (right for runs trained on synthetic renders, which have
    no SV3D settings to copy)."""
    run_dir = Path(run_dir)
    try:
        caches = json.loads((run_dir / RUN_CONFIG).read_text())["data"]["caches"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"{run_dir / RUN_CONFIG}: unreadable run config ({exc!r})") from exc
    try:
        settings = read_stage_one(run_dir, list(caches))
    except StageOneUnknown:
        if not defaults_if_unknown:
            raise
        note = f"{run_dir}: stage-one settings unknown; using the SV3D-p defaults (--stage-one-defaults)"
        return StageOneChoice(GenerationConfig(), None, (note,))
    if settings.is_render:
        note = (
            f"{run_dir} was trained on synthetic renders (--backend render), which have no SV3D-p "
            "settings to copy: stage one uses the SV3D-p defaults at the model's own image size"
        )
        return StageOneChoice(settings.generation_config(), settings, (note,))
    return StageOneChoice(settings.generation_config(), settings)


def check_model_fits_run(
    model_dir: Path, choice: StageOneChoice, run: TrainedRun, run_dir: Path
) -> list[str]:
    """Refuse a model directory whose views or features the run's model cannot read, from its
    configs alone (no weights loaded, nothing generated). Returns notes (a different model
    of the same shapes is allowed: its features are merely not the ones the run learned on)."""
    # Only the model's configs are read (load_sv3d_skeleton): no device is touched.
    spec = SV3DBackendSpec(str(Path(model_dir).resolve()), choice.config, device="cpu")
    size = spec.resolved_config().resolution
    trained = run.model.config
    if size != trained.image_size:
        how = "at its own size" if choice.config.resolution is None else "with the run's settings"
        raise TrainingError(
            f"--model {model_dir} makes {size} px views {how}, but {run_dir} was trained on "
            f"{trained.image_size} px views: predict with the model and settings its training cache "
            "was made with"
        )
    if trained.feature_source == "diffusion":
        layers = spec.feature_layers()
        if tuple(layer.channels for layer in layers) != tuple(trained.feature_layer_channels):
            made = [f"{layer.name}:{layer.channels}" for layer in layers]
            raise TrainingError(
                f"--model {model_dir} stores feature layers {made} (name:channels), but {run_dir} was "
                f"trained on features of {list(trained.feature_layer_channels)} channels: predict with "
                "the model its training cache was made with"
            )
    recorded = _sv3d_fingerprint(choice.settings)
    if recorded is not None and spec.model_record()["fingerprint"] != recorded:
        return [
            f"--model {model_dir} is not the SV3D-p model {run_dir}'s training cache was made with "
            "(other configs or weight files); its views and features may differ from the ones trained on"
        ]
    return []


def _sv3d_fingerprint(settings: StageOneSettings | None) -> str | None:
    """The fingerprint of the SV3D-p model the run's views or features came from, if any."""
    if settings is None:
        return None
    model = settings.model.get("features_model") if settings.is_render else settings.model
    return None if not isinstance(model, dict) else model.get("fingerprint")
