"""The reconstruction network: a view from the input's appearance and that view's structure."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
        nn.GroupNorm(8, out_channels),
        nn.LeakyReLU(0.2),
    )


class AppearanceEncoder(nn.Module):
    """The input view at 1/8 resolution, plus a global appearance code."""

    def __init__(self, channels: int):
        super().__init__()
        self.layers = nn.Sequential(
            _conv(3, channels),
            _conv(channels, channels * 2, stride=2),
            _conv(channels * 2, channels * 4, stride=2),
            _conv(channels * 4, channels * 4, stride=2),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) in [0, 1]. Returns (B, 4 C_d, H / 8, W / 8)."""
        return self.layers(image * 2.0 - 1.0)


class ViewDecoder(nn.Module):
    """A U-Net over the structure maps of one view, fed the input's appearance at its bottleneck.

    The appearance features come from the input view, not view k, so their spatial layout
    does not match view k's: the global average is broadcast too, so colour reaches every
    part of the figure wherever it moved.
    """

    def __init__(self, structure_channels: int, channels: int):
        super().__init__()
        self.down1 = _conv(structure_channels, channels)
        self.down2 = _conv(channels, channels * 2, stride=2)
        self.down3 = _conv(channels * 2, channels * 4, stride=2)
        self.down4 = _conv(channels * 4, channels * 4, stride=2)
        self.middle = _conv(channels * 4 * 3, channels * 4)
        self.up3 = _conv(channels * 4 + channels * 4, channels * 2)
        self.up2 = _conv(channels * 2 + channels * 2, channels)
        self.up1 = _conv(channels + channels, channels)
        self.output = nn.Conv2d(channels, 3, 1)

    def forward(self, structure: torch.Tensor, appearance: torch.Tensor) -> torch.Tensor:
        """structure (B, V, S, H, W); appearance (B, 4 C_d, H / 8, W / 8). Returns (B, V, 3, H, W)."""
        b, v = structure.shape[:2]
        s1 = self.down1(structure.flatten(0, 1))
        s2 = self.down2(s1)
        s3 = self.down3(s2)
        s4 = self.down4(s3)
        local = appearance.repeat_interleave(v, dim=0)
        pooled = local.mean(dim=(2, 3), keepdim=True).expand_as(local)
        x = self.middle(torch.cat([s4, local, pooled], dim=1))
        x = self.up3(torch.cat([F.interpolate(x, scale_factor=2.0), s3], dim=1))
        x = self.up2(torch.cat([F.interpolate(x, scale_factor=2.0), s2], dim=1))
        x = self.up1(torch.cat([F.interpolate(x, scale_factor=2.0), s1], dim=1))
        return torch.sigmoid(self.output(x)).unflatten(0, (b, v))


class AppearanceTransport(nn.Module):
    """Each keypoint's appearance where it projects in view 0, painted where it projects in view k.

    The decoder otherwise sees the input's appearance only at its 1/8-resolution bottleneck,
    so nothing tells it which colour belongs at a keypoint: a keypoint that moves between
    parts from view to view costs nothing. Painting makes it cost: a keypoint whose
    projections land on the same part in every view carries that part's colour to the right
    place, and one that slides off it paints the wrong colour there.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.layers = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, view0: torch.Tensor, uv0: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
        """view0 (B, 3, H, W) in [0, 1]; uv0 (B, N, 2) pixels of the keypoints in view 0;
        heatmaps (B, V, N, H, W) of the keypoints in every view. Returns (B, V, T, H, W)."""
        features = self.layers(view0 * 2.0 - 1.0)
        size = torch.tensor(view0.shape[-1:-3:-1], dtype=uv0.dtype, device=uv0.device)
        grid = (uv0 / size * 2.0 - 1.0).unsqueeze(1)  # (B, 1, N, 2), align_corners=False
        sampled = F.grid_sample(features, grid, align_corners=False, padding_mode="border")[:, :, 0]
        # (B, T, N) -> per view, sum_n heatmap_n * feature_n, normalised where heatmaps overlap.
        painted = torch.einsum("bvnhw,btn->bvthw", heatmaps, sampled)
        return painted / heatmaps.sum(dim=2, keepdim=True).clamp_min(1.0)
