"""Per-view 2D features for lifting: diffusion hyperfeatures, or a small CNN over the views."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stages.keypoints.errors import ShapeError


class HyperfeatureAggregator(nn.Module):
    """F = sum_l w_l * B_l(f_l): a 1x1 bottleneck per cached decoder layer, upsampled, mixed.

    Upsampling after the bottleneck equals upsampling before it (a 1x1 conv commutes
    with bilinear interpolation) and is cheaper.
    """

    def __init__(self, layer_channels: tuple[int, ...], out_channels: int, out_size: int):
        super().__init__()
        self.out_size = out_size
        self.bottlenecks = nn.ModuleList(nn.Conv2d(c, out_channels, kernel_size=1) for c in layer_channels)
        self.mix_weights = nn.Parameter(torch.full((len(layer_channels),), 1.0 / len(layer_channels)))

    def forward(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """layers: L tensors (B, V, C_l, h_l, w_l). Returns (B, V, C', h, w), h = w = out_size."""
        if len(layers) != len(self.bottlenecks):
            raise ShapeError(f"layers: expected {len(self.bottlenecks)} feature layers, got {len(layers)}")
        total = None
        for weight, bottleneck, layer in zip(self.mix_weights, self.bottlenecks, layers, strict=True):
            if layer.ndim != 5:
                raise ShapeError(f"layers: expected (B, V, C, h, w) tensors, got {tuple(layer.shape)}")
            b, v = layer.shape[:2]
            reduced = bottleneck(layer.flatten(0, 1).float())
            reduced = F.interpolate(reduced, size=(self.out_size, self.out_size), mode="bilinear")
            total = weight * reduced if total is None else total + weight * reduced
        assert total is not None
        return total.unflatten(0, (b, v))


class PixelEncoder(nn.Module):
    """A small trainable CNN over the views, for caches without diffusion features."""

    def __init__(self, out_channels: int, out_size: int):
        super().__init__()
        self.out_size = out_size
        mid = max(out_channels // 2, 16)
        self.layers = nn.Sequential(
            nn.Conv2d(3, mid, 3, padding=1),
            nn.GroupNorm(8, mid),
            nn.ReLU(),
            nn.Conv2d(mid, out_channels, 3, stride=2, padding=1),
            nn.GroupNorm(8, out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.GroupNorm(8, out_channels),
            nn.ReLU(),
        )

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        """views (B, V, 3, H, W) in [0, 1]. Returns (B, V, C', h, w), h = w = out_size."""
        if views.ndim != 5 or views.shape[2] != 3:
            raise ShapeError(f"views: expected (B, V, 3, H, W), got {tuple(views.shape)}")
        b, v = views.shape[:2]
        out = self.layers(views.flatten(0, 1) * 2.0 - 1.0)
        out = F.interpolate(out, size=(self.out_size, self.out_size), mode="bilinear")
        return out.unflatten(0, (b, v))


class _DilatedResidual(nn.Module):
    """x + conv3x3(dilation d)(x): widens the receptive field at a fixed resolution."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.norm = nn.GroupNorm(8, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.norm(self.conv(x)))


class DeepPixelEncoder(nn.Module):
    """Views -> features with a receptive field wider than the figure.

    Two stride-2 convs bring the view to a quarter of its side, then residual convs
    dilated 1, 2, 4 and 8 see about 127 input pixels: enough to know which arm a pixel
    belongs to from where the head and the other limbs are. The shallow encoder sees
    13 pixels, which tells an arm from the background but not left from right.
    """

    def __init__(self, out_channels: int, out_size: int):
        super().__init__()
        self.out_size = out_size
        mid = max(out_channels // 2, 16)
        self.stem = nn.Sequential(
            nn.Conv2d(3, mid, 3, stride=2, padding=1),
            nn.GroupNorm(8, mid),
            nn.ReLU(),
            nn.Conv2d(mid, out_channels, 3, stride=2, padding=1),
            nn.GroupNorm(8, out_channels),
            nn.ReLU(),
        )
        self.context = nn.Sequential(*(_DilatedResidual(out_channels, d) for d in (1, 2, 4, 8)))

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        """views (B, V, 3, H, W) in [0, 1]. Returns (B, V, C', h, w), h = w = out_size."""
        if views.ndim != 5 or views.shape[2] != 3:
            raise ShapeError(f"views: expected (B, V, 3, H, W), got {tuple(views.shape)}")
        b, v = views.shape[:2]
        out = self.context(self.stem(views.flatten(0, 1) * 2.0 - 1.0))
        out = F.interpolate(out, size=(self.out_size, self.out_size), mode="bilinear")
        return out.unflatten(0, (b, v))


class KeypointHead(nn.Module):
    """phi_kp: per-view keypoint features plus one view-attention logit per pixel."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1),
            nn.GroupNorm(8, in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, out_channels + 1, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, V, C', h, w). Returns (B, V, C + 1, h, w); the last channel is the logit."""
        b, v = features.shape[:2]
        return self.layers(features.flatten(0, 1)).unflatten(0, (b, v))
