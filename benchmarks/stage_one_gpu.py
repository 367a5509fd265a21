"""Stage-one benchmark section 5: the full-size SV3D-p on the GPU.

Seconds per image and peak GPU memory of SV3DBackend.generate (with feature capture) on
the full-size random-weight SV3D-p in fp16, once per attention backend (SDPA, and
xformers where importable). Skipped without CUDA. Run from bench_stage_one.py.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_common import print_notes, print_table  # noqa: E402
from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor2_0  # noqa: E402
from stage_one_common import EXAMPLE_IMAGES, FULL_RESOLUTION  # noqa: E402
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection  # noqa: E402

from stages.config import GenerationConfig, OrbitConfig  # noqa: E402
from stages.images import PreparedImage, load_image, prepare_image  # noqa: E402
from stages.sv3d.backend import SV3DBackend  # noqa: E402
from stages.sv3d.convert import (  # noqa: E402
    SCHEDULER_CONFIG,
    feature_extractor_config,
    sv3d_p_image_encoder_config,
    sv3d_p_unet_config,
    sv3d_p_vae_config,
)
from stages.sv3d.pipeline import CLIPImageProcessor, SV3DPipeline  # noqa: E402
from stages.sv3d.unet import SV3DUNetModel  # noqa: E402

# --------------------------------------------------------------------------- 5. GPU


def build_random_sv3d(
    device: torch.device,
    dtype: torch.dtype,
    unet_config: dict[str, Any],
    vae_config: dict[str, Any],
    image_encoder_config: dict[str, Any],
    seed: int = 0,
) -> SV3DPipeline:
    """SV3D-p of the given sizes with random weights, initialised directly on `device`."""
    cuda_devices = list(range(torch.cuda.device_count()))
    with torch.random.fork_rng(devices=cuda_devices), torch.device(device):
        torch.manual_seed(seed)
        unet = SV3DUNetModel.from_config(unet_config)
        vae = AutoencoderKLTemporalDecoder.from_config(vae_config)
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**image_encoder_config))
    pipe = SV3DPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        image_encoder=image_encoder.eval(),
        feature_extractor=CLIPImageProcessor(
            **feature_extractor_config(image_encoder_config.get("image_size", 224))
        ),
        scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG),
    )
    return pipe.to(device=device, dtype=dtype)


def set_attention(pipe: SV3DPipeline, attention: str) -> None:
    """As load_sv3d_pipeline does: xformers or PyTorch SDPA in the UNet and the VAE."""
    for model in (pipe.unet, pipe.vae):
        if attention == "xformers":
            model.enable_xformers_memory_efficient_attention()
        else:
            model.set_attn_processor(AttnProcessor2_0())
    pipe.attention_backend = attention


def time_generation(
    pipe: SV3DPipeline,
    config: GenerationConfig,
    prepared: PreparedImage,
    images: int,
    device: torch.device,
) -> dict[str, Any]:
    """Seconds per image of SV3DBackend.generate (with feature capture), after a 2-step warm-up."""
    backend = SV3DBackend(pipe, config, device)
    cuda = device.type == "cuda"
    warm = torch.from_numpy(prepared.image).float().div(127.5).sub(1.0)[None]
    pipe(
        warm,
        backend.polars_rad,
        backend.azimuths_rad,
        torch.Generator().manual_seed(0),
        num_inference_steps=2,
        decode_chunk_size=config.decode_chunk_size,
    )
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for i in range(images):
        tic = time.perf_counter()
        backend.generate(prepared, seed=i)
        if cuda:
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - tic)
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    return {"seconds": seconds, "s_per_image": float(np.mean(seconds)), "max_memory_allocated_bytes": peak}


def available_attention_backends() -> list[str]:
    backends = ["sdpa"]
    try:
        import xformers  # noqa: F401
    except Exception:  # a broken build fails in many ways; all mean "not available"
        return backends
    return backends + ["xformers"]


def bench_gpu(args: argparse.Namespace) -> dict[str, Any]:
    title = (
        f"5. GPU: full-size random-weight SV3D-p fp16, {FULL_RESOLUTION} px, "
        f"{args.gpu_frames} frames, {args.gpu_steps} steps"
    )
    if not torch.cuda.is_available():
        print(f"\n== {title}\nskipped: no CUDA")
        return {"skipped": "no CUDA"}
    device = torch.device("cuda")
    pipe = build_random_sv3d(
        device, torch.float16, sv3d_p_unet_config(), sv3d_p_vae_config(), sv3d_p_image_encoder_config()
    )
    config = GenerationConfig(
        orbit=OrbitConfig(num_frames=args.gpu_frames),
        resolution=FULL_RESOLUTION,
        num_inference_steps=args.gpu_steps,
        model_dtype="float16",
    )
    source = sorted(EXAMPLE_IMAGES.iterdir())[0]
    loaded = load_image(source, config.background_threshold, config.max_image_pixels)
    prepared = prepare_image(loaded, FULL_RESOLUTION, config.object_fraction)
    rows = []
    for attention in available_attention_backends():
        try:
            set_attention(pipe, attention)
            timing = time_generation(pipe, config, prepared, args.gpu_images, device)
            rows.append({"attention": attention, **timing})
        except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
            rows.append({"attention": attention, "error": f"{type(err).__name__}: {err}"})
        torch.cuda.empty_cache()
    print_table(
        title,
        ["attention", "s/image", "max_memory_allocated GiB", "runs s", "error"],
        [
            [
                r["attention"],
                r.get("s_per_image"),
                (r["max_memory_allocated_bytes"] / 2**30) if "max_memory_allocated_bytes" in r else None,
                " ".join(f"{s:.1f}" for s in r.get("seconds", [])),
                r.get("error", ""),
            ]
            for r in rows
        ],
    )
    notes = [
        "random weights: timing and memory only; outputs are meaningless",
        "per image = SV3DBackend.generate with feature capture, after a 2-step warm-up",
    ]
    if "xformers" not in available_attention_backends():
        notes.append("xformers is not importable: SDPA only")
    print_notes(notes)
    return {
        "device": torch.cuda.get_device_name(device),
        "resolution": FULL_RESOLUTION,
        "frames": args.gpu_frames,
        "steps": args.gpu_steps,
        "images": args.gpu_images,
        "rows": rows,
        "notes": notes,
    }
