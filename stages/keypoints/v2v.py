"""A V2V-style 3D encoder-decoder: per-voxel features in, N keypoint heatmaps out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    groups = 8 if out_channels % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(),
        nn.Conv3d(out_channels, out_channels, 3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(),
    )


class V2VNet(nn.Module):
    """Encoder levels halve M; decoder levels upsample and concatenate the skip."""

    def __init__(self, in_channels: int, out_channels: int, level_channels: tuple[int, ...]):
        super().__init__()
        self.encoders = nn.ModuleList()
        previous = in_channels
        for channels in level_channels:
            self.encoders.append(_block(previous, channels))
            previous = channels
        self.decoders = nn.ModuleList(
            _block(level_channels[i + 1] + level_channels[i], level_channels[i])
            for i in reversed(range(len(level_channels) - 1))
        )
        self.output = nn.Conv3d(level_channels[0], out_channels, 1)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """volume (B, C, M, M, M). Returns heatmap logits (B, N, M, M, M)."""
        skips = []
        x = volume
        for level, encoder in enumerate(self.encoders):
            if level:
                x = F.max_pool3d(x, 2)
            x = encoder(x)
            skips.append(x)
        for decoder, skip in zip(self.decoders, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-3:], mode="trilinear")
            x = decoder(torch.cat([x, skip], dim=1))
        return self.output(x)
