"""`convert_sv3d_checkpoint`: an sgm SV3D-p `.safetensors` -> our diffusers directory."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from stages.errors import CheckpointConversionError
from stages.sv3d.convert.configs import SCHEDULER_CONFIG, SV3DConfigs, feature_extractor_config
from stages.sv3d.convert.infer_configs import infer_configs
from stages.sv3d.convert.key_mapping import KeyMapping
from stages.sv3d.convert.safetensors_file import SafetensorsFile
from stages.sv3d.convert.sgm_layout import CLIP_PREFIX, COMPONENTS, ignored_keys
from stages.sv3d.convert.state_dicts import check_keys, conversion_plan, convert_component
from stages.sv3d.convert.target_modules import build_empty, check_shapes

CONVERTER_VERSION = "1.0"


def convert_sv3d_checkpoint(
    checkpoint: Path,
    out_dir: Path,
    image_encoder_dir: Path | None = None,
    dtype: torch.dtype | None = torch.float16,
    progress: Callable[[str], None] | None = None,
    unet_heads: int | Sequence[int] | None = None,
    clip_heads: int | None = None,
) -> Path:
    """Write the diffusers directory of an official sgm SV3D-p checkpoint; returns out_dir.

    Writes unet/, vae/, image_encoder/, feature_extractor/, scheduler/, model_index.json
    and, last, conversion.json (so a directory without it is an unfinished conversion).
    Every key and shape is checked before any weight is read. Components are then
    converted one at a time, each built on the meta device and handed the loaded
    tensors (`assign=True`), so peak memory is about one component: its source tensors
    plus the converted copy (9.3 GB RSS for the full fp32 file, most of it the UNet's
    memory-mapped source pages).

    Args:
        checkpoint: the single-file sgm `.safetensors`.
        out_dir: must not exist or be empty.
        image_encoder_dir: local `CLIPVisionModelWithProjection` directory, required
            when (and only when) the checkpoint has no OpenCLIP image tower; copied.
        dtype: floating dtype of the saved weights; None keeps the checkpoint's.
        progress: called with a short message after each step.
        unet_heads: UNet attention heads, one per level or one for all; None derives
            SV3D-p's (channels / 64) and refuses widths 64 does not divide.
        clip_heads: heads of the checkpoint's OpenCLIP tower; None derives ViT-H's
            (width / 80) and refuses widths 80 does not divide.

    The head counts used are in unet/config.json and image_encoder/config.json, and in
    conversion.json with whether they were given or derived.
    """
    say = progress or (lambda message: None)
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    source = SafetensorsFile(checkpoint, dtype=dtype)
    configs = infer_configs(source, unet_heads=unet_heads, clip_heads=clip_heads)
    plan = conversion_plan(configs)
    check_keys(source.shapes, plan)
    if configs.image_encoder is None and image_encoder_dir is None:
        raise CheckpointConversionError(
            f"checkpoint {checkpoint} has no OpenCLIP image tower ({CLIP_PREFIX}*); pass "
            f"image_encoder_dir, a local CLIPVisionModelWithProjection directory"
        )
    if configs.image_encoder is not None and image_encoder_dir is not None:
        raise CheckpointConversionError(
            f"checkpoint {checkpoint} has its own OpenCLIP image tower; image_encoder_dir="
            f"{image_encoder_dir} would be ignored, leave it out"
        )
    if image_encoder_dir is not None:
        _check_image_encoder_dir(Path(image_encoder_dir), configs)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CheckpointConversionError(f"out_dir {out_dir} already exists and is not empty")

    # Every key and shape is checked on meta tensors before any weight is read.
    meta = {k: torch.empty(shape, device="meta") for k, shape in source.shapes.items()}
    models: dict[str, torch.nn.Module] = {}
    for component in COMPONENTS:
        config = getattr(configs, component)
        if config is not None:
            models[component] = build_empty(component, config)
            converted, origins = convert_component(plan, component, meta)
            check_shapes(component, converted, models[component], origins)
    decoder = "temporal" if configs.temporal_decoder else "image"
    say(f"checked {checkpoint.name}: {len(source.shapes)} tensors, {decoder} decoder")

    work = out_dir.with_name(out_dir.name + ".partial")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        classes = _write_components(work, plan, models, source, say)
        if image_encoder_dir is not None:
            shutil.copytree(image_encoder_dir, work / "image_encoder")
            classes["image_encoder"] = ("transformers", "CLIPVisionModelWithProjection")
            say(f"copied image_encoder/ from {image_encoder_dir}")
        classes.update(_write_small_components(work))
        _write_model_index(work, classes)
        given = {"unet": unet_heads is not None, "image_encoder": clip_heads is not None}
        _write_record(work, checkpoint, source, configs, image_encoder_dir, dtype, given)
        if out_dir.exists():
            out_dir.rmdir()
        work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    say(f"done: {out_dir}")
    return out_dir


def _write_components(
    root: Path,
    plan: list[KeyMapping],
    models: dict[str, torch.nn.Module],
    source: SafetensorsFile,
    say: Callable[[str], None],
) -> dict[str, tuple[str, str]]:
    """Load, convert and save one component at a time into the meta-built models."""
    classes = {}
    for component in list(models):
        model = models.pop(component)
        with source:  # reopened per component, so its mapped pages are let go in between
            converted, _ = convert_component(plan, component, source)
        model.load_state_dict(converted, strict=True, assign=True)
        model.save_pretrained(root / component, safe_serialization=True)
        classes[component] = (type(model).__module__, type(model).__name__)
        del model, converted
        say(f"wrote {component}/")
    return classes


def _check_image_encoder_dir(src: Path, configs: SV3DConfigs) -> None:
    """Raise unless `src` holds a CLIP vision config and weights matching the unet."""
    from transformers import CLIPVisionConfig

    if not src.is_dir() or not (src / "config.json").is_file():
        raise CheckpointConversionError(f"image_encoder_dir {src} has no config.json")
    if not any(p.suffix in (".safetensors", ".bin") for p in src.iterdir()):
        raise CheckpointConversionError(f"image_encoder_dir {src} has no weight file")
    try:
        config = CLIPVisionConfig.from_pretrained(src, local_files_only=True)
    except (OSError, ValueError) as err:
        raise CheckpointConversionError(f"image_encoder_dir {src}: unreadable config ({err})") from err
    cross = configs.unet["cross_attention_dim"]
    if config.projection_dim != cross:
        raise CheckpointConversionError(
            f"image_encoder_dir {src}: projection_dim {config.projection_dim} must equal the "
            f"unet's cross_attention_dim {cross}"
        )


def _write_small_components(root: Path) -> dict[str, tuple[str, str]]:
    from diffusers import EulerDiscreteScheduler

    from stages.sv3d.pipeline import CLIPImageProcessor

    scheduler = EulerDiscreteScheduler(**SCHEDULER_CONFIG)
    scheduler.save_pretrained(root / "scheduler")
    processor = CLIPImageProcessor(**feature_extractor_config())
    processor.save_pretrained(root / "feature_extractor")
    return {
        "scheduler": ("diffusers", type(scheduler).__name__),
        "feature_extractor": ("transformers", type(processor).__name__),
    }


def _write_model_index(root: Path, classes: Mapping[str, tuple[str, str]]) -> None:
    import diffusers

    index: dict[str, Any] = {
        "_class_name": "SV3DPipeline",
        "_diffusers_version": diffusers.__version__,
    }
    for name in sorted(classes):
        module, cls = classes[name]
        library = module.split(".")[0] if module.split(".")[0] in ("diffusers", "transformers") else module
        index[name] = [library, cls]
    (root / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _write_record(
    root: Path,
    checkpoint: Path,
    source: SafetensorsFile,
    configs: SV3DConfigs,
    image_encoder_dir: Path | None,
    dtype: torch.dtype | None,
    heads_given: Mapping[str, bool],
) -> None:
    # Enough to repeat the conversion: the head counts cannot be read back from shapes.
    heads = {"unet": list(configs.unet["num_attention_heads"])}
    if configs.image_encoder is not None:
        heads["image_encoder"] = configs.image_encoder["num_attention_heads"]
    record = {
        "converter_version": CONVERTER_VERSION,
        "source_file": checkpoint.name,
        "source_bytes": checkpoint.stat().st_size,
        "source_header_sha256": source.header_sha256,
        "source_tensors": len(source.shapes),
        "ignored_tensors": len(ignored_keys(source.shapes)),
        "decoder": "temporal" if configs.temporal_decoder else "image (temporal layers switched off)",
        "image_encoder": "checkpoint" if image_encoder_dir is None else f"copied from {image_encoder_dir}",
        "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
        "attention_heads": heads,
        "attention_heads_source": {
            name: "given" if heads_given[name] else "derived from SV3D-p's head size" for name in heads
        },
    }
    (root / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
