"""Convert Stability AI's single-file `sv3d_p.safetensors` (sgm layout) to our diffusers layout.

Source layout (sgm `DiffusionEngine.state_dict()` for configs/inference/sv3d_p.yaml):

- `model.diffusion_model.*`: the `VideoUNet` -> `unet/` (`SV3DUNetModel`).
- `first_stage_model.decoder.*`: the frame decoder. The official SV3D-p config builds sgm's
  image `Decoder` here (no temporal layers); SVD's configs build the temporal
  `VideoDecoder`. Both convert to `vae/` (`AutoencoderKLTemporalDecoder`): an image
  decoder gets temporal layers that are switched off (see `IMAGE_DECODER_MIX_FACTOR`),
  so every frame is decoded on its own, exactly as sgm does.
- `conditioner.embedders.1.encoder.{encoder,quant_conv}.*`: the VAE encoder of the
  conditioning frame (an `AutoencoderKLModeOnly`) -> `vae/encoder`, `vae/quant_conv`.
- `conditioner.embedders.0.open_clip.model.visual.*`: OpenCLIP ViT-H/14 image tower ->
  `image_encoder/` (`CLIPVisionModelWithProjection`). Optional: without it an HF image
  encoder directory must be given.

Every other key must match one of `IGNORED_KEY_PATTERNS`, or the conversion fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

UNET_PREFIX = "model.diffusion_model."


DECODER_PREFIX = "first_stage_model.decoder."


VAE_ENCODER_PREFIX = "conditioner.embedders.1.encoder.encoder."


QUANT_CONV_PREFIX = "conditioner.embedders.1.encoder.quant_conv."


CLIP_PREFIX = "conditioner.embedders.0.open_clip.model.visual."


COMPONENTS = ("unet", "vae", "image_encoder")


IGNORED_KEY_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        r"conditioner\.embedders\.0\.open_clip\.model\.(?!visual\.)",
        "OpenCLIP text-tower leftovers (token/positional embedding, ln_final, "
        "text_projection, logit_scale); SV3D-p only uses the image tower",
    ),
    (
        r"conditioner\.embedders\.1\.encoder\.(decoder|post_quant_conv)\.",
        "decoder half of the conditioning autoencoder; sgm decodes frames with first_stage_model.decoder",
    ),
    (r"model_ema\.", "EMA shadow copy of the UNet"),
)
"""(regex matched at the start of a key, reason) for source keys deliberately dropped."""


IMAGE_DECODER_MIX_FACTOR = -1.0e4
"""mix_factor given to the temporal decoder's blenders when the source decoder is sgm's
image `Decoder`: sigmoid(-1e4) is exactly 0 in float16/32, so each block outputs its
spatial branch only. The temporal res-blocks also get zero convs (identity), and
`time_conv_out` the identity kernel. On CUDA with TF32 convolutions the identity
`time_conv_out` rounds pixels to ~1e-3; in float16 and on the CPU it is exact."""


def ignored_keys(keys: Iterable[str]) -> list[str]:
    """The keys that match `IGNORED_KEY_PATTERNS`."""
    patterns = [re.compile(p) for p, _ in IGNORED_KEY_PATTERNS]
    return [k for k in keys if any(p.match(k) for p in patterns)]
