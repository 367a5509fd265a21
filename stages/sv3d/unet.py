"""SV3D-p's denoiser: SVD's spatio-temporal UNet with a per-frame camera embedding.

The blocks are diffusers' `UNetSpatioTemporalConditionModel` unchanged, so the
state-dict keys are SVD's and checkpoints convert with SVD's key naming. Only the
vector conditioning differs: SVD embeds (fps, motion bucket, noise aug) once per
video, while SV3D-p embeds (cond_aug, polar, azimuth) once per FRAME
(sgm `ConcatTimestepEmbedderND`, adm_in_channels 1280 = 256 + 512 + 512).

One numeric detail is restored after the parent builds its blocks: sgm's res blocks
(`VideoResBlock`, spatial and `time_stack`) normalise with GroupNorm eps 1e-5, while
diffusers builds those of `CrossAttnDownBlockSpatioTemporal` (hard-coded) and of every up
block (`get_up_block` drops `resnet_eps`) with 1e-6. The attention blocks' GroupNorm is
1e-6 and the output norm 1e-5 in both, so those are left alone.
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.resnet import SpatioTemporalResBlock
from diffusers.models.unets.unet_spatio_temporal_condition import (
    UNetSpatioTemporalConditionModel,
    UNetSpatioTemporalConditionOutput,
)

from stages.errors import ConfigError


def camera_vector(
    cond_aug: torch.Tensor,
    polars_rad: torch.Tensor,
    azimuths_rad: torch.Tensor,
    embed_dims: tuple[int, int, int],
) -> torch.Tensor:
    """Sinusoidal embeddings of the per-frame conditioning, concatenated.

    Same as sgm's `ConcatTimestepEmbedderND` (cos first, max_period 10000).

    Args:
        cond_aug: (B, V) conditioning-noise level.
        polars_rad: (B, V) polar angle, radians (90 deg - elevation).
        azimuths_rad: (B, V) azimuth relative to the input view, radians.
        embed_dims: sinusoid sizes of (cond_aug, polar, azimuth).

    Returns:
        (B * V, sum(embed_dims)) float32, frame index varying fastest.
    """
    parts = [
        get_timestep_embedding(x.flatten().float(), int(dim), flip_sin_to_cos=True, downscale_freq_shift=0)
        for x, dim in zip((cond_aug, polars_rad, azimuths_rad), embed_dims, strict=True)
    ]
    return torch.cat(parts, dim=-1)


class SV3DUNetModel(UNetSpatioTemporalConditionModel):
    """SVD's VideoUNet conditioned per frame on camera angles (SV3D-p).

    Config: every argument of `UNetSpatioTemporalConditionModel` (with SV3D-p's
    defaults) plus `camera_embed_dims` and `resnet_eps`, the GroupNorm eps of every
    spatial and temporal res block (sgm: 1e-5; a config written before the field
    existed loads with that default). `addition_time_embed_dim` is kept only so the
    parent builds unchanged; SV3D-p does not use it.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = 72,
        in_channels: int = 8,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        addition_time_embed_dim: int = 256,
        projection_class_embeddings_input_dim: int = 1280,
        layers_per_block: int | tuple[int] = 2,
        cross_attention_dim: int | tuple[int] = 1024,
        transformer_layers_per_block: int | tuple[int, tuple[tuple]] = 1,
        num_attention_heads: int | tuple[int, ...] = (5, 10, 20, 20),
        num_frames: int = 21,
        camera_embed_dims: tuple[int, int, int] = (256, 512, 512),
        resnet_eps: float = 1e-5,
    ):
        camera_embed_dims = tuple(int(d) for d in camera_embed_dims)
        if len(camera_embed_dims) != 3 or any(d <= 0 or d % 2 for d in camera_embed_dims):
            raise ConfigError(
                f"camera_embed_dims must be 3 positive even sizes (cond_aug, polar, azimuth), "
                f"got {camera_embed_dims}"
            )
        if sum(camera_embed_dims) != projection_class_embeddings_input_dim:
            raise ConfigError(
                f"projection_class_embeddings_input_dim must equal sum(camera_embed_dims)="
                f"{sum(camera_embed_dims)}, got {projection_class_embeddings_input_dim}"
            )
        if (
            isinstance(resnet_eps, bool)
            or not isinstance(resnet_eps, int | float)
            or not (math.isfinite(resnet_eps) and 0 < resnet_eps < 1)
        ):
            raise ConfigError(f"resnet_eps must be a number in (0, 1), got {resnet_eps!r}")
        super().__init__(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            addition_time_embed_dim=addition_time_embed_dim,
            projection_class_embeddings_input_dim=projection_class_embeddings_input_dim,
            layers_per_block=layers_per_block,
            cross_attention_dim=cross_attention_dim,
            transformer_layers_per_block=transformer_layers_per_block,
            num_attention_heads=num_attention_heads,
            num_frames=num_frames,
        )
        # eps holds no weight, so setting it afterwards keeps every state-dict key.
        for _, norm in res_block_norms(self):
            norm.eps = float(resnet_eps)

    def embed_conditioning(
        self,
        timestep: torch.Tensor | float,
        cond_aug: torch.Tensor,
        polars_rad: torch.Tensor,
        azimuths_rad: torch.Tensor,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Time embedding plus the per-frame camera embedding.

        Args:
            timestep: scalar or (B,) c_noise values.
            cond_aug: (B, V) or (B,).
            polars_rad: (B, V).
            azimuths_rad: (B, V).
            dtype: compute dtype of the embedding MLPs.

        Returns:
            (B * V, time_embed_dim), frame index varying fastest.
        """
        batch_size, num_frames = polars_rad.shape
        device = polars_rad.device
        timesteps = torch.as_tensor(timestep, device=device).float().reshape(-1)
        timesteps = timesteps.expand(batch_size)
        if cond_aug.ndim == 1:
            cond_aug = cond_aug[:, None].expand(batch_size, num_frames)

        # `Timesteps` and the sinusoids are float32; the MLPs may run in fp16.
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype))
        emb = emb.repeat_interleave(num_frames, dim=0)
        camera = camera_vector(cond_aug, polars_rad, azimuths_rad, self.config.camera_embed_dims)
        return emb + self.add_embedding(camera.to(dtype))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        cond_aug: torch.Tensor,
        polars_rad: torch.Tensor,
        azimuths_rad: torch.Tensor,
        return_dict: bool = True,
    ) -> UNetSpatioTemporalConditionOutput | tuple[torch.Tensor]:
        """Predict v for every frame.

        Args:
            sample: (B, V, C_in, h, w) scaled noisy latents concatenated with the
                conditioning latents.
            timestep: scalar or (B,) c_noise = 0.25 * log(sigma).
            encoder_hidden_states: (B, 1, D) CLIP image embedding.
            cond_aug: (B, V) or (B,) conditioning-noise level.
            polars_rad: (B, V) polar angles, radians.
            azimuths_rad: (B, V) azimuths relative to the input view, radians.

        Returns:
            (B, V, C_out, h, w) in `UNetSpatioTemporalConditionOutput.sample`.
        """
        self._check_inputs(sample, timestep, encoder_hidden_states, cond_aug, polars_rad, azimuths_rad)
        batch_size, num_frames = sample.shape[:2]

        # 1. time + per-frame camera embedding, (B*V, time_embed_dim)
        emb = self.embed_conditioning(timestep, cond_aug, polars_rad, azimuths_rad, sample.dtype)
        sample = sample.flatten(0, 1)
        encoder_hidden_states = encoder_hidden_states.repeat_interleave(num_frames, dim=0)
        image_only_indicator = torch.zeros(batch_size, num_frames, dtype=sample.dtype, device=sample.device)

        # 2. the parent's blocks, exactly as in its forward
        up_factor = 2**self.num_upsamplers
        forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])
        upsample_size = None
        sample = self.conv_in(sample)
        down_block_res_samples = (sample,)
        for block in self.down_blocks:
            kwargs = {"encoder_hidden_states": encoder_hidden_states} if _has_xattn(block) else {}
            sample, res_samples = block(
                hidden_states=sample, temb=emb, image_only_indicator=image_only_indicator, **kwargs
            )
            down_block_res_samples += res_samples

        sample = self.mid_block(
            hidden_states=sample,
            temb=emb,
            encoder_hidden_states=encoder_hidden_states,
            image_only_indicator=image_only_indicator,
        )

        for i, block in enumerate(self.up_blocks):
            res_samples = down_block_res_samples[-len(block.resnets) :]
            down_block_res_samples = down_block_res_samples[: -len(block.resnets)]
            if i < len(self.up_blocks) - 1 and forward_upsample_size:
                upsample_size = down_block_res_samples[-1].shape[2:]
            kwargs = {"encoder_hidden_states": encoder_hidden_states} if _has_xattn(block) else {}
            sample = block(
                hidden_states=sample,
                temb=emb,
                res_hidden_states_tuple=res_samples,
                upsample_size=upsample_size,
                image_only_indicator=image_only_indicator,
                **kwargs,
            )

        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        sample = sample.reshape(batch_size, num_frames, *sample.shape[1:])
        if not return_dict:
            return (sample,)
        return UNetSpatioTemporalConditionOutput(sample=sample)

    def _check_inputs(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        cond_aug: torch.Tensor,
        polars_rad: torch.Tensor,
        azimuths_rad: torch.Tensor,
    ) -> None:
        in_channels = self.config.in_channels
        if sample.ndim != 5 or sample.shape[2] != in_channels:
            raise ValueError(f"sample must be (B, V, {in_channels}, h, w), got {tuple(sample.shape)}")
        b, v = sample.shape[:2]
        t_shape = tuple(torch.as_tensor(timestep).shape)
        if t_shape not in ((), (1,), (b,)):
            raise ValueError(f"timestep must be a scalar or ({b},), got {t_shape}")
        dim = self.config.cross_attention_dim
        dim = dim if isinstance(dim, int) else dim[0]
        if tuple(encoder_hidden_states.shape) != (b, 1, dim):
            raise ValueError(
                f"encoder_hidden_states must be ({b}, 1, {dim}), got {tuple(encoder_hidden_states.shape)}"
            )
        if tuple(cond_aug.shape) not in ((b,), (b, v)):
            raise ValueError(f"cond_aug must be ({b},) or ({b}, {v}), got {tuple(cond_aug.shape)}")
        for name, x in (("polars_rad", polars_rad), ("azimuths_rad", azimuths_rad)):
            if tuple(x.shape) != (b, v):
                raise ValueError(f"{name} must be ({b}, {v}), got {tuple(x.shape)}")


def res_block_norms(unet: torch.nn.Module) -> list[tuple[str, torch.nn.GroupNorm]]:
    """(name, GroupNorm) of norm1 and norm2 of every spatial and temporal res block, in
    the down, mid and up blocks: the norms sgm builds with `normalization` (eps 1e-5)."""
    norms = []
    for name, module in unet.named_modules():
        if isinstance(module, SpatioTemporalResBlock):
            for part in ("spatial_res_block", "temporal_res_block"):
                for norm in ("norm1", "norm2"):
                    norms.append((f"{name}.{part}.{norm}", getattr(getattr(module, part), norm)))
    return norms


def _has_xattn(block: torch.nn.Module) -> bool:
    return bool(getattr(block, "has_cross_attention", False))
