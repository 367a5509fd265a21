"""Structural similarity (SSIM) as a loss: the weight-free `--perceptual ssim` fallback.

SSIM after Wang et al. 2004, computed per channel with a Gaussian window (sigma 1.5)
and averaged over channels, positions and the batch. Images are taken to lie in
[0, 1], so the stabilising constants are C1 = (0.01 * 1)^2 and C2 = (0.03 * 1)^2.
Only windows that lie wholly inside the image are used ("valid" filtering), so no
padding value leaks into the statistics at the borders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stages.keypoints.errors import ShapeError

SSIM_C1 = 0.01**2
"""Stabiliser of the luminance term for a data range of 1."""
SSIM_C2 = 0.03**2
"""Stabiliser of the contrast-structure term for a data range of 1."""
SSIM_SIGMA = 1.5
"""Standard deviation of the Gaussian window in pixels (Wang et al.)."""


def gaussian_window(window: int, channels: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Separable normalised Gaussian window for a depthwise conv, shape (C, 1, window, window)."""
    offsets = torch.arange(window, dtype=dtype, device=device) - (window - 1) / 2
    profile = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    profile = profile / profile.sum()
    kernel = profile[:, None] * profile[None, :]
    return kernel.expand(channels, 1, window, window).contiguous()


def _check_window(window: int) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window: expected an odd positive int, got {window!r}")


def _check_image_pair(prediction: torch.Tensor, target: torch.Tensor, window: int) -> None:
    _check_window(window)
    if prediction.ndim != 4:
        raise ShapeError(f"prediction: expected (B, C, H, W), got shape {tuple(prediction.shape)}")
    if target.shape != prediction.shape:
        raise ShapeError(
            f"target: expected the shape of prediction {tuple(prediction.shape)}, got {tuple(target.shape)}"
        )
    height, width = prediction.shape[-2:]
    if height < window or width < window:
        raise ShapeError(f"prediction: expected H and W >= window {window}, got (H, W) = ({height}, {width})")


def ssim_map(prediction: torch.Tensor, target: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Local SSIM of two image batches.

    Args:
        prediction: (B, C, H, W) in [0, 1].
        target: (B, C, H, W) in [0, 1].
        window: odd side of the Gaussian window; H and W must be at least this.

    Returns:
        (B, C, H - window + 1, W - window + 1) SSIM values in [-1, 1].
    """
    _check_image_pair(prediction, target, window)
    channels = prediction.shape[1]
    kernel = gaussian_window(window, channels, dtype=prediction.dtype, device=prediction.device)

    def local_mean(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, groups=channels)

    mean_p = local_mean(prediction)
    mean_t = local_mean(target)
    var_p = local_mean(prediction * prediction) - mean_p**2
    var_t = local_mean(target * target) - mean_t**2
    covariance = local_mean(prediction * target) - mean_p * mean_t
    luminance = (2 * mean_p * mean_t + SSIM_C1) / (mean_p**2 + mean_t**2 + SSIM_C1)
    contrast_structure = (2 * covariance + SSIM_C2) / (var_p + var_t + SSIM_C2)
    return luminance * contrast_structure


def ssim_loss(prediction: torch.Tensor, target: torch.Tensor, window: int = 7) -> torch.Tensor:
    """1 - mean SSIM: 0 for identical images, growing as they differ; differentiable.

    Args:
        prediction: (B, C, H, W) in [0, 1]; gradients flow to it (and to target if it requires them).
        target: (B, C, H, W) in [0, 1].
        window: odd side of the Gaussian window.

    Returns:
        A scalar tensor.
    """
    return 1 - ssim_map(prediction, target, window).mean()


class SSIMLoss(nn.Module):
    """`ssim_loss` as a module, with the same call signature as `PerceptualLoss`."""

    def __init__(self, window: int = 7) -> None:
        super().__init__()
        _check_window(window)
        self.window = window

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """prediction, target: (B, C, H, W) in [0, 1] -> scalar 1 - mean SSIM."""
        return ssim_loss(prediction, target, self.window)
