"""SV3D-p orbit generation with decoder-feature capture at one sampler step, and the
same decoder features of given views at one noise level (`features_of_views`).

Follows sgm's `simple_video_sample.py` for SV3D-p: EDM Euler sampling of v, triangle
classifier-free guidance over the orbit, zeroed image conditioning in the
unconditional half, and VAE latents of the conditioning image that are not scaled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import transformers.utils.logging as transformers_logging
from diffusers import AutoencoderKLTemporalDecoder, DiffusionPipeline, EulerDiscreteScheduler
from transformers import CLIPVisionModelWithProjection

try:  # transformers >= 5: the plain name needs torchvision and warns when falling back
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # pragma: no cover - transformers < 5
    from transformers import CLIPImageProcessor  # type: ignore[assignment,no-redef]

from stages.errors import ConfigError
from stages.sv3d.schedule import CaptureStep, triangle_guidance_scales
from stages.sv3d.unet import SV3DUNetModel

# Private in diffusers, but it is the exact resize SVD's pipeline applies before CLIP.
# Importing that module makes transformers warn about torchvision once; we never use
# the torchvision processor, so the notice is muted for the import only.
_verbosity = transformers_logging.get_verbosity()
transformers_logging.set_verbosity_error()
try:
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (  # noqa: E402
        _resize_with_antialiasing,
    )
finally:
    transformers_logging.set_verbosity(_verbosity)


ArrayLike = np.ndarray | torch.Tensor | Sequence[float]


@dataclass
class SV3DOutput:
    """One generated orbit."""

    frames: torch.Tensor
    """(V, 3, H, W) float32 CPU in [0, 1]."""
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    """{'up_blocks.i': (K, C, h, w) float32 CPU}, conditional branch, capture_frames only."""
    capture: CaptureStep | None = None
    """The step the features were taken at; None when nothing was captured."""


class SV3DPipeline(DiffusionPipeline):
    """Image -> orbit of V views with SV3D-p, optionally capturing UNet decoder features."""

    model_cpu_offload_seq = "image_encoder->unet->vae"

    def __init__(
        self,
        unet: SV3DUNetModel,
        vae: AutoencoderKLTemporalDecoder,
        image_encoder: CLIPVisionModelWithProjection,
        feature_extractor: CLIPImageProcessor,
        scheduler: EulerDiscreteScheduler,
    ):
        super().__init__()
        self.register_modules(
            unet=unet,
            vae=vae,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            scheduler=scheduler,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.attention_backend: str | None = None
        self.set_progress_bar_config(disable=True)

    @property
    def native_resolution(self) -> int:
        """Square image size the UNet was configured for, pixels."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def feature_layer_names(self) -> tuple[str, ...]:
        return tuple(f"up_blocks.{i}" for i in range(len(self.unet.up_blocks)))

    def feature_layer_shapes(self, resolution: int) -> dict[str, tuple[int, int, int]]:
        """(C, h, w) of every up-block output for square images of `resolution` pixels.

        Computed from the config alone: each down-sampling conv (k3, s2, p1) gives
        ceil(h / 2), and each up-block returns to the size of the skip it meets.
        """
        if resolution % self.vae_scale_factor:
            raise ConfigError(f"resolution must be a multiple of {self.vae_scale_factor}, got {resolution}")
        sizes = [resolution // self.vae_scale_factor]
        for _ in range(len(self.unet.down_blocks) - 1):
            sizes.append(math.ceil(sizes[-1] / 2))
        channels = list(reversed(self.unet.config.block_out_channels))
        n = len(self.unet.up_blocks)
        return {
            name: (channels[i], sizes[max(n - 2 - i, 0)], sizes[max(n - 2 - i, 0)])
            for i, name in enumerate(self.feature_layer_names)
        }

    def sampler_sigmas(self, num_inference_steps: int) -> np.ndarray:
        """The (S + 1,) sigmas the sampler will use, ending with 0 (for `select_capture_step`)."""
        scheduler = EulerDiscreteScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device="cpu")
        return scheduler.sigmas.numpy().astype(np.float64)

    @torch.no_grad()
    def __call__(
        self,
        image: torch.Tensor,
        polars_rad: ArrayLike,
        azimuths_rad: ArrayLike,
        generator: torch.Generator,
        num_inference_steps: int = 50,
        min_guidance_scale: float = 1.0,
        max_guidance_scale: float = 2.5,
        cond_aug: float = 1e-5,
        capture_step: int | CaptureStep | None = None,
        capture_frames: Sequence[int] | None = None,
        feature_layers: Sequence[str] | None = None,
        decode_chunk_size: int = 14,
        progress: Callable[[int, int], None] | None = None,
    ) -> SV3DOutput:
        """Generate the orbit.

        Args:
            image: (1, 3, H, W) in [-1, 1], white background (moved to the pipeline device).
            polars_rad: (V,) polar angle of every frame, radians.
            azimuths_rad: (V,) azimuth of every frame relative to the input view, radians.
            generator: CPU generator; every random number is drawn from it in float32 on
                the CPU, so results do not depend on the device.
            capture_step: step index (or a `CaptureStep` from `select_capture_step` on
                `sampler_sigmas`) whose UNet call is captured; None captures nothing.
            capture_frames: frames to keep features for; None keeps all V.
            feature_layers: names like 'up_blocks.1'; None takes every up-block.
            progress: called as progress(done, total) after every step.

        Returns:
            `SV3DOutput` with frames (V, 3, H, W) and features {name: (K, C, h, w)}.
        """
        device = self._execution_device
        dtype = self.unet.dtype

        # 0. check inputs
        polars = _as_frames(polars_rad, "polars_rad")
        azimuths = _as_frames(azimuths_rad, "azimuths_rad")
        num_frames = polars.shape[0]
        self._check_inputs(image, azimuths, num_frames, generator, num_inference_steps, decode_chunk_size)
        layers = self._check_layers(feature_layers)
        frames_kept = list(range(num_frames)) if capture_frames is None else list(capture_frames)
        if any(not 0 <= f < num_frames for f in frames_kept) or not frames_kept:
            raise ConfigError(f"capture_frames must be non-empty in [0, {num_frames}), got {frames_kept}")

        image = image.to(device)

        # 1-2. CLIP embedding of the clean image and VAE latents of the noise-augmented
        # image; zeros for the unconditional half
        image_embeddings, image_latents = self._condition_on_image(image, num_frames, cond_aug, generator)
        image_embeddings = torch.cat([torch.zeros_like(image_embeddings), image_embeddings])
        image_latents = torch.cat([torch.zeros_like(image_latents), image_latents])

        # 3. per-frame camera conditioning, identical in both CFG halves
        polars_t, azimuths_t, cond_aug_t = self._camera_conditioning(polars, azimuths, cond_aug, batch=2)

        # 4. timesteps (c_noise = 0.25 log sigma) of the EDM Euler sampler
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        capture = self._resolve_capture(capture_step, num_inference_steps)

        # 5. initial latents: randn * sqrt(sigma_max^2 + 1)
        h, w = image.shape[-2] // self.vae_scale_factor, image.shape[-1] // self.vae_scale_factor
        shape = (1, num_frames, self.vae.config.latent_channels, h, w)
        latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        latents = (latents * self.scheduler.init_noise_sigma).to(device=device, dtype=dtype)

        # 6. triangle guidance over the orbit, (1, V, 1, 1, 1)
        scales = triangle_guidance_scales(num_frames, min_guidance_scale, max_guidance_scale)
        guidance = torch.tensor(scales, device=device, dtype=dtype).view(1, num_frames, 1, 1, 1)

        # 7. denoising loop
        features: dict[str, torch.Tensor] = {}
        for i, t in enumerate(timesteps):
            latent_model_input = self.scheduler.scale_model_input(torch.cat([latents] * 2), t)
            latent_model_input = torch.cat([latent_model_input, image_latents], dim=2)

            hooks = []
            if capture is not None and i == capture.step_index:
                hooks = self._register_capture_hooks(layers, frames_kept, num_frames, features)
            try:
                v_pred = self.unet(
                    latent_model_input,
                    t,
                    encoder_hidden_states=image_embeddings,
                    cond_aug=cond_aug_t,
                    polars_rad=polars_t,
                    azimuths_rad=azimuths_t,
                    return_dict=False,
                )[0]
            finally:
                for hook in hooks:
                    hook.remove()

            v_uncond, v_cond = v_pred.chunk(2)
            v_pred = v_uncond + guidance * (v_cond - v_uncond)
            latents = self.scheduler.step(v_pred, t, latents).prev_sample
            if progress is not None:
                progress(i + 1, len(timesteps))

        # 8. decode decode_chunk_size frames at a time with the temporal decoder
        frames = self._decode_latents(latents[0], decode_chunk_size)
        self.maybe_free_model_hooks()
        return SV3DOutput(frames=frames, features=features, capture=capture)

    @torch.no_grad()
    def features_of_views(
        self,
        views: torch.Tensor,
        polars_rad: ArrayLike,
        azimuths_rad: ArrayLike,
        sigma: float,
        generator: torch.Generator,
        cond_aug: float = 1e-5,
        feature_layers: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Decoder features of GIVEN views (rendered or real) at noise level sigma.

        DIFT-style: the views are encoded into clean latents, noised to `sigma` with the
        EDM forward process, and passed through ONE conditional UNet call conditioned on
        view 0 exactly as `__call__` conditions on its input image; the up-block outputs
        of that call are the features. No sampling, no guidance, no decoding.

        Args:
            views: (V, 3, H, W) in [-1, 1], white background; view 0 is the conditioning
                (input) view.
            polars_rad: (V,) polar angle of every view, radians.
            azimuths_rad: (V,) azimuth of every view relative to view 0, radians.
            sigma: EDM noise level, e.g. `CaptureStep.sigma` of the sampler step tau maps to.
            generator: CPU generator; draws the conditioning noise (1, 3, H, W), then the
                latent noise (V, c, h, w), in float32 on the CPU.
            feature_layers: names like 'up_blocks.1'; None takes every up-block.

        Returns:
            {'up_blocks.i': (V, C, h, w) float32 CPU}.
        """
        device = self._execution_device
        dtype = self.unet.dtype

        # 0. check inputs
        polars = _as_frames(polars_rad, "polars_rad")
        azimuths = _as_frames(azimuths_rad, "azimuths_rad")
        num_frames = polars.shape[0]
        if not isinstance(views, torch.Tensor) or views.ndim != 4 or views.shape[:2] != (num_frames, 3):
            shape = tuple(views.shape) if isinstance(views, torch.Tensor) else type(views).__name__
            raise ValueError(
                f"views must be a ({num_frames}, 3, H, W) tensor (V from polars_rad), got {shape}"
            )
        if views.shape[-2] % self.vae_scale_factor or views.shape[-1] % self.vae_scale_factor:
            raise ValueError(
                f"views H and W must be multiples of {self.vae_scale_factor}, got {tuple(views.shape[-2:])}"
            )
        if azimuths.shape[0] != num_frames:
            raise ValueError(f"azimuths_rad has {azimuths.shape[0]} frames, polars_rad has {num_frames}")
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise ValueError("generator must be a CPU torch.Generator")
        if not math.isfinite(sigma) or sigma <= 0:
            raise ConfigError(f"sigma must be a finite number > 0, got {sigma}")
        layers = self._check_layers(feature_layers)

        # Contiguous: a channels-last input (a transposed render) would take other conv
        # kernels and give features that differ in the last bits for the same pixels.
        views = views.to(device).contiguous()

        # 1-2. conditioning on view 0, as in __call__, conditional branch only
        image_embeddings, image_latents = self._condition_on_image(views[:1], num_frames, cond_aug, generator)

        # 3. per-frame camera conditioning
        polars_t, azimuths_t, cond_aug_t = self._camera_conditioning(polars, azimuths, cond_aug, batch=1)

        # 4. clean latents of every view: VAE mode, scaled into the UNet's latent space
        # (the inverse of `_decode_latents`)
        clean = self._encode_vae_image(views.float()).float() * self.vae.config.scaling_factor

        # 5. EDM forward process x = x0 + sigma * eps
        noise = torch.randn(clean.shape, generator=generator, dtype=torch.float32)
        noisy = clean + sigma * noise.to(device)

        # 6. the sampler's input scaling c_in = 1 / sqrt(sigma^2 + 1) and timestep
        # c_noise = 0.25 log sigma (EulerDiscreteScheduler with continuous timesteps)
        latent_model_input = (noisy / math.sqrt(sigma**2 + 1.0)).to(dtype)[None]
        latent_model_input = torch.cat([latent_model_input, image_latents], dim=2)
        timestep = torch.tensor(0.25 * math.log(sigma), device=device, dtype=torch.float32)

        # 7. one UNet call, capturing the up-blocks
        features: dict[str, torch.Tensor] = {}
        hooks = self._register_capture_hooks(layers, list(range(num_frames)), num_frames, features)
        try:
            self.unet(
                latent_model_input,
                timestep,
                encoder_hidden_states=image_embeddings,
                cond_aug=cond_aug_t,
                polars_rad=polars_t,
                azimuths_rad=azimuths_t,
                return_dict=False,
            )
        finally:
            for hook in hooks:
                hook.remove()
        self.maybe_free_model_hooks()
        return features

    def _check_inputs(self, image, azimuths, num_frames, generator, num_steps, chunk) -> None:
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[:2] != (1, 3):
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image must be a (1, 3, H, W) tensor, got {shape}")
        if image.shape[-2] % self.vae_scale_factor or image.shape[-1] % self.vae_scale_factor:
            raise ValueError(
                f"image H and W must be multiples of {self.vae_scale_factor}, got {tuple(image.shape[-2:])}"
            )
        if azimuths.shape[0] != num_frames:
            raise ValueError(f"azimuths_rad has {azimuths.shape[0]} frames, polars_rad has {num_frames}")
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise ValueError("generator must be a CPU torch.Generator")
        if num_steps < 1:
            raise ConfigError(f"num_inference_steps must be >= 1, got {num_steps}")
        if chunk < 1:
            raise ConfigError(f"decode_chunk_size must be >= 1, got {chunk}")

    def _check_layers(self, feature_layers: Sequence[str] | None) -> list[str]:
        names = self.feature_layer_names
        layers = list(names) if feature_layers is None else list(feature_layers)
        unknown = [n for n in layers if n not in names]
        if unknown or not layers:
            raise ConfigError(f"feature_layers must be non-empty, from {names}; got {layers}")
        return layers

    def _resolve_capture(self, capture_step: int | CaptureStep | None, num_steps: int) -> CaptureStep | None:
        """The capture step checked against the scheduler's sigmas just set."""
        if capture_step is None:
            return None
        index = capture_step if isinstance(capture_step, int) else capture_step.step_index
        if not 0 <= index < num_steps:
            raise ConfigError(f"capture_step must be in [0, {num_steps}), got {index}")
        sigma = float(self.scheduler.sigmas[index])
        if isinstance(capture_step, CaptureStep):
            # A step chosen for another number of steps would silently mean another sigma.
            if not math.isclose(capture_step.sigma, sigma, rel_tol=1e-4):
                raise ConfigError(
                    f"capture_step.sigma={capture_step.sigma} does not match the sampler's "
                    f"sigma {sigma} at step {index} of {num_steps}"
                )
            return capture_step
        return CaptureStep(index, sigma, 0.25 * math.log(sigma), None, None, "index")

    def _register_capture_hooks(self, layers, frames_kept, num_frames, features) -> list:
        """Hooks storing each layer's output of the LAST batch entry, kept frames only.

        The last entry is the conditional half of a CFG batch [uncond, cond], or the only
        entry of a batch of one (`features_of_views`).
        """
        handles = []
        for name in layers:
            block = self.unet.up_blocks[int(name.split(".")[1])]

            def hook(module, args, output, name=name):
                # (B * V, C, h, w) with the batch outermost.
                cond = output.unflatten(0, (-1, num_frames))[-1]
                features[name] = cond[frames_kept].float().cpu()

            handles.append(block.register_forward_hook(hook))
        return handles

    def _condition_on_image(
        self, image: torch.Tensor, num_frames: int, cond_aug: float, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditional branch's image conditioning, as sgm builds it for SV3D-p.

        image: (1, 3, H, W) in [-1, 1] on the execution device. Draws the (1, 3, H, W)
        conditioning noise from `generator` (the first draw of a call, so both callers
        condition identically on the same image and seed). Returns the CLIP embedding
        (1, 1, D) of the clean image and the VAE latents (1, V, c, h, w) of the
        noise-augmented image, mode, NOT scaled, repeated over the V frames.
        """
        device, dtype = self._execution_device, self.unet.dtype
        image_embeddings = self._encode_image(image, device).to(dtype)
        noise = torch.randn(image.shape, generator=generator, dtype=torch.float32)
        cond_image = image.float() + cond_aug * noise.to(device)
        image_latents = self._encode_vae_image(cond_image).to(dtype)
        return image_embeddings, image_latents.unsqueeze(1).repeat(1, num_frames, 1, 1, 1)

    def _camera_conditioning(
        self, polars: torch.Tensor, azimuths: torch.Tensor, cond_aug: float, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-frame polars, azimuths and cond_aug (V,) -> three (B, V) float32 tensors."""
        device = self._execution_device
        num_frames = polars.shape[0]
        polars_t = polars.to(device).float()[None].repeat(batch, 1)
        azimuths_t = azimuths.to(device).float()[None].repeat(batch, 1)
        cond_aug_t = torch.full((batch, num_frames), float(cond_aug), device=device)
        return polars_t, azimuths_t, cond_aug_t

    def _encode_image(self, image: torch.Tensor, device: torch.device) -> torch.Tensor:
        """CLIP image embedding of a (1, 3, H, W) [-1, 1] image -> (1, 1, D)."""
        crop = self.feature_extractor.crop_size
        size = (crop["height"], crop["width"])
        pixels = _resize_with_antialiasing(image.float(), size)
        pixels = (pixels + 1.0) / 2.0
        mean = torch.tensor(self.feature_extractor.image_mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.feature_extractor.image_std, device=device).view(1, 3, 1, 1)
        pixels = ((pixels - mean) / std).to(dtype=self.image_encoder.dtype)
        return self.image_encoder(pixels).image_embeds.unsqueeze(1)

    def _encode_vae_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, c, h, w) latent mode, upcasting an fp16 VAE as SVD does."""
        upcast = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        if upcast:
            self.vae.to(dtype=torch.float32)
        try:
            latents = self.vae.encode(image.to(self.vae.dtype)).latent_dist.mode()
        finally:
            if upcast:
                self.vae.to(dtype=torch.float16)
        return latents

    def _decode_latents(self, latents: torch.Tensor, chunk: int) -> torch.Tensor:
        """(V, c, h, w) latents -> (V, 3, H, W) float32 CPU in [0, 1]."""
        latents = latents / self.vae.config.scaling_factor
        frames = []
        for start in range(0, latents.shape[0], chunk):
            part = latents[start : start + chunk].to(self.vae.dtype)
            frames.append(self.vae.decode(part, num_frames=part.shape[0]).sample.float().cpu())
        return ((torch.cat(frames) + 1.0) / 2.0).clamp(0.0, 1.0)


def _as_frames(values: ArrayLike, name: str) -> torch.Tensor:
    """(V,) float32 CPU tensor from numpy, a tensor or a sequence."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    t = torch.from_numpy(np.array(values, dtype=np.float32))
    if t.ndim != 1 or t.shape[0] < 1:
        raise ValueError(f"{name} must be (V,) with V >= 1, got {tuple(t.shape)}")
    return t
