"""Loading a local SV3D-p diffusers directory, and its identity for cache keys.

Layout (as `SV3DPipeline.save_pretrained` writes, and as a converted official
checkpoint must be): unet/, vae/, image_encoder/, feature_extractor/, scheduler/.
Nothing is ever fetched from the network.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
from diffusers.models.attention_processor import AttnProcessor2_0
from transformers import CLIPVisionModelWithProjection

from stages.config import MODEL_DTYPES
from stages.errors import ConfigError, ModelLoadError
from stages.sv3d.hub_logging import quiet_hub_logging
from stages.sv3d.pipeline import CLIPImageProcessor, SV3DPipeline
from stages.sv3d.unet import SV3DUNetModel
from stages.sv3d.weight_digests import weight_digests

ATTENTION_BACKENDS = ("auto", "xformers", "sdpa")
COMPONENT_CONFIGS = {
    "unet": "config.json",
    "vae": "config.json",
    "image_encoder": "config.json",
    "feature_extractor": "preprocessor_config.json",
    "scheduler": "scheduler_config.json",
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt")
_WEIGHTED = ("unet", "vae", "image_encoder")


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """'auto' is float16 on CUDA and float32 elsewhere; otherwise the named dtype."""
    if name not in MODEL_DTYPES:
        raise ConfigError(f"model dtype must be one of {MODEL_DTYPES}, got {name!r}")
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    return getattr(torch, name)


def load_sv3d_pipeline(
    model_dir: str | Path,
    device: str | torch.device,
    dtype: torch.dtype | str = "auto",
    attention: str = "auto",
) -> SV3DPipeline:
    """Load every component from its local subfolder onto `device` in `dtype`.

    attention: 'auto' uses xformers when it imports and the device is CUDA, else
    PyTorch SDPA. The backend used is in `pipeline.attention_backend`.
    """
    root = _check_layout(model_dir)
    device = torch.device(device)
    if isinstance(dtype, str):
        dtype = resolve_dtype(dtype, device)
    backend = _choose_attention(attention, device)

    try:
        with quiet_hub_logging():
            # torch_dtype at load time lets diffusers keep any fp32-only modules in fp32.
            unet = SV3DUNetModel.from_pretrained(
                root, subfolder="unet", local_files_only=True, torch_dtype=dtype
            )
            vae = AutoencoderKLTemporalDecoder.from_pretrained(
                root, subfolder="vae", local_files_only=True, torch_dtype=dtype
            )
            image_encoder = CLIPVisionModelWithProjection.from_pretrained(
                root / "image_encoder", local_files_only=True, dtype=dtype
            )
            feature_extractor = CLIPImageProcessor.from_pretrained(
                root / "feature_extractor", local_files_only=True
            )
            scheduler = EulerDiscreteScheduler.from_pretrained(
                root, subfolder="scheduler", local_files_only=True
            )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"cannot load SV3D-p from {root}: {err}") from err
    _check_scheduler(scheduler, root)

    pipe = SV3DPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        image_encoder=image_encoder.eval(),
        feature_extractor=feature_extractor,
        scheduler=scheduler,
    )
    pipe.to(device)
    for model in (pipe.unet, pipe.vae):
        if backend == "xformers":
            model.enable_xformers_memory_efficient_attention()
        else:
            model.set_attn_processor(AttnProcessor2_0())
    pipe.attention_backend = backend
    return pipe


def load_sv3d_skeleton(model_dir: str | Path) -> SV3DPipeline:
    """The pipeline's structure without its weights (UNet and VAE on the meta device).

    Enough for `feature_layer_shapes`, `native_resolution` and `sampler_sigmas`, so a
    coordinator can lay out a store without loading gigabytes it will not run.
    """
    root = _check_layout(model_dir)
    try:
        with quiet_hub_logging(), torch.device("meta"):
            unet = SV3DUNetModel.from_config(SV3DUNetModel.load_config(root / "unet"))
            vae = AutoencoderKLTemporalDecoder.from_config(
                AutoencoderKLTemporalDecoder.load_config(root / "vae")
            )
        scheduler = EulerDiscreteScheduler.from_pretrained(root, subfolder="scheduler", local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"cannot read the SV3D-p configs in {root}: {err}") from err
    _check_scheduler(scheduler, root)
    return SV3DPipeline(unet, vae, None, None, scheduler)


def model_identity(model_dir: str | Path) -> dict[str, Any]:
    """What identifies a model directory: its configs and the CONTENT of its weights.

    Returns {'path': resolved path, 'config_sha256': sha256 over every component's
    config file (relative name and bytes, sorted), 'weights': [{'file', 'bytes',
    'sha256'}]}. Weights of the same shapes but other values (a fine-tune) give another
    identity. The weight digests are cached beside the model (weight_digests.py), so
    only the first run on a model reads all of its bytes.
    """
    root = _check_layout(model_dir)
    digest = hashlib.sha256()
    configs = [root / "model_index.json"] if (root / "model_index.json").is_file() else []
    configs += [root / sub / name for sub, name in COMPONENT_CONFIGS.items()]
    for path in sorted(configs):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    files = [
        p
        for sub in _WEIGHTED
        for p in sorted((root / sub).iterdir())
        if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
    ]
    try:
        hashes = weight_digests(root, files)
    except OSError as exc:
        raise ModelLoadError(f"cannot read the weights of {root}: {exc}") from exc
    weights = []
    for path in files:
        name = path.relative_to(root).as_posix()
        weights.append({"file": name, "bytes": path.stat().st_size, "sha256": hashes[name]})
    return {"path": str(root), "config_sha256": digest.hexdigest(), "weights": weights}


def _check_layout(model_dir: str | Path) -> Path:
    """The resolved directory, after checking every subfolder, config and weight file."""
    root = Path(model_dir).expanduser().resolve()
    if not root.is_dir():
        raise ModelLoadError(f"model_dir {root} is not a directory")
    for sub, config in COMPONENT_CONFIGS.items():
        if not (root / sub).is_dir():
            raise ModelLoadError(f"model_dir {root} has no {sub}/ folder")
        if not (root / sub / config).is_file():
            raise ModelLoadError(f"model_dir {root} has no {sub}/{config}")
        if sub in _WEIGHTED and not any(p.name.endswith(WEIGHT_SUFFIXES) for p in (root / sub).iterdir()):
            raise ModelLoadError(f"model_dir {root} has no weight file in {sub}/")
    return root


def _choose_attention(attention: str, device: torch.device) -> str:
    if attention not in ATTENTION_BACKENDS:
        raise ConfigError(f"attention must be one of {ATTENTION_BACKENDS}, got {attention!r}")
    has_xformers = _xformers_available()
    if attention == "xformers" and not has_xformers:
        raise ModelLoadError(
            "attention='xformers' but xformers is not installed; install it with "
            "`pip install -e .[gpu]` or use attention='sdpa'"
        )
    if attention == "xformers" and device.type != "cuda":
        raise ModelLoadError(f"attention='xformers' needs a CUDA device, got {device}")
    if attention == "auto":
        return "xformers" if has_xformers and device.type == "cuda" else "sdpa"
    return attention


def _xformers_available() -> bool:
    try:
        import xformers  # noqa: F401
    except Exception:  # a broken build fails in many ways; all mean "use SDPA"
        return False
    return True


def _check_scheduler(scheduler: EulerDiscreteScheduler, root: Path) -> None:
    """SV3D-p samples v with EDM (Karras) sigmas and c_noise timesteps; anything else
    would run without error and produce garbage."""
    cfg = scheduler.config
    wanted = {"prediction_type": "v_prediction", "timestep_type": "continuous", "use_karras_sigmas": True}
    wrong = {k: cfg.get(k) for k, v in wanted.items() if cfg.get(k) != v}
    if wrong:
        raise ModelLoadError(f"{root}/scheduler/scheduler_config.json must have {wanted}, got {wrong}")
