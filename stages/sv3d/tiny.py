"""A tiny, randomly initialised SV3D-p of the real classes, for tests and dry runs.

64 px images, a 4-level VAE (factor 8 as the real one, latents 8x8), a 4-level UNet
like the real one, and a 32 px CLIP. Channels are 32 because diffusers' GroupNorms have
32 groups. Latents of 8x8 rather than 16x16 keep 21 frames x 50 steps within seconds
on 2 CPU cores. Outputs are noise-like; it exercises shapes, I/O and determinism.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from stages.errors import OutputExistsError
from stages.sv3d.convert.configs import CLIP_MEAN, CLIP_STD, SCHEDULER_CONFIG
from stages.sv3d.hub_logging import quiet_hub_logging
from stages.sv3d.pipeline import CLIPImageProcessor, SV3DPipeline
from stages.sv3d.unet import SV3DUNetModel
from stages.sv3d.weight_digests import is_digest_cache_file

TINY_RESOLUTION = 64
_CLIP_SIZE = 32
_EMBED_DIM = 32
TINY_MARKER = "keydiff3d_tiny_model.json"
"""Written into every tiny model folder: only a folder holding it may be replaced by another."""
_TINY_ENTRIES = frozenset(
    {"model_index.json", "unet", "vae", "image_encoder", "feature_extractor", "scheduler", TINY_MARKER}
)


def build_tiny_sv3d(seed: int = 0) -> SV3DPipeline:
    """A seeded tiny SV3D-p pipeline on the CPU in float32; global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = SV3DUNetModel(
            sample_size=TINY_RESOLUTION // 8,
            block_out_channels=(32, 32, 32, 32),
            layers_per_block=1,
            cross_attention_dim=_EMBED_DIM,
            num_attention_heads=(2, 2, 2, 2),
            camera_embed_dims=(16, 32, 32),
            projection_class_embeddings_input_dim=80,
            addition_time_embed_dim=16,
        )
        vae = AutoencoderKLTemporalDecoder(
            down_block_types=("DownEncoderBlock2D",) * 4,
            block_out_channels=(32, 32, 32, 32),
            layers_per_block=1,
            latent_channels=4,
            sample_size=TINY_RESOLUTION,
        )
        clip_config = CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=_CLIP_SIZE,
            patch_size=8,
            projection_dim=_EMBED_DIM,
        )
        image_encoder = CLIPVisionModelWithProjection(clip_config)
    # SVD's preprocessor config except the size, which follows the tiny CLIP.
    feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": _CLIP_SIZE},
        crop_size={"height": _CLIP_SIZE, "width": _CLIP_SIZE},
        do_center_crop=True,
        do_normalize=True,
        do_rescale=True,
        do_resize=True,
        do_convert_rgb=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        resample=3,
        rescale_factor=1 / 255,
    )
    scheduler = EulerDiscreteScheduler(**SCHEDULER_CONFIG)
    pipe = SV3DPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        image_encoder=image_encoder.eval(),
        feature_extractor=feature_extractor,
        scheduler=scheduler,
    )
    return pipe


def save_tiny_sv3d(out_dir: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the tiny model in the layout `load_sv3d_pipeline` reads (safetensors).

    An existing non-empty out_dir is refused: it may be a converted real SV3D-p, which has
    the same layout. With overwrite, a folder that this function wrote (its marker file
    and nothing but a tiny model's entries) is deleted first; any other folder is refused.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} is a file, not a model folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"{out} is not empty; pass --overwrite to replace a tiny model written here"
            )
        check_replaceable_tiny_model(out)
        shutil.rmtree(out)
    with quiet_hub_logging():
        build_tiny_sv3d(seed).save_pretrained(out, safe_serialization=True)
    # The marker goes last: a folder with it holds a whole tiny model.
    (out / TINY_MARKER).write_text(json.dumps({"written_by": "save_tiny_sv3d", "seed": seed}) + "\n")
    return out


def check_replaceable_tiny_model(out: Path) -> None:
    """Raise OutputExistsError unless `out` holds a tiny model this module wrote and nothing else."""
    out = Path(out)
    if not (out / TINY_MARKER).is_file():
        raise OutputExistsError(
            f"{out} is not a tiny model written by make-tiny-model (no {TINY_MARKER}); "
            "refusing to delete it: choose another folder or remove it yourself"
        )
    # The weight digests model_identity caches beside any model (or a killed write's temp file).
    foreign = sorted(
        p.name for p in out.iterdir() if p.name not in _TINY_ENTRIES and not is_digest_cache_file(p.name)
    )
    if foreign:
        raise OutputExistsError(
            f"{out} also holds {foreign}, which a tiny model does not; refusing to delete it"
        )
