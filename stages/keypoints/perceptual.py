"""Perceptual reconstruction loss of stage two: L1 between VGG16 ImageNet features.

KeyDiff3D's reconstruction term is lambda_vgg * || psi(I_hat) - psi(I) ||_1 with psi the
features of an ImageNet VGG16. torchvision cannot be installed next to our CPU torch
(its wheels pull a CUDA build), so `VGG16Features` rebuilds the convolutional part of
torchvision's VGG16 (configuration "D") with the same module indices, which makes
torchvision's own checkpoint `vgg16-397923af.pth` load into it key for key.

The weights are never downloaded here (the project runs offline): `find_vgg16_weights`
looks in the standard torch hub cache and otherwise says how to provide them. The
weight-free alternative is the SSIM loss, chosen explicitly with `--perceptual ssim`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from stages.keypoints.errors import PerceptualWeightsMissing, ShapeError
from stages.keypoints.ssim import SSIMLoss

VGG16_FILENAME = "vgg16-397923af.pth"
"""torchvision's ImageNet VGG16 checkpoint; 397923af is the start of its SHA-256."""
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILENAME}"
"""Where torchvision downloads that checkpoint from."""

VGG16_CONFIG_D: tuple[int | str, ...] = (
    *(64, 64, "M"),
    *(128, 128, "M"),
    *(256, 256, 256, "M"),
    *(512, 512, 512, "M"),
    *(512, 512, 512, "M"),
)
"""VGG configuration "D": output channels of each 3x3 conv, "M" for a 2x2 max pool."""

VGG16_LAST_INDEX = 30
"""Index of the last module of torchvision's `vgg16().features` (the fifth pool)."""

DEFAULT_TAPS: tuple[int, ...] = (3, 8, 15, 22)
"""relu1_2, relu2_2, relu3_3, relu4_3 in torchvision's `features` indices."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel RGB mean the ImageNet weights were trained with."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation the ImageNet weights were trained with."""

PERCEPTUAL_KINDS = ("vgg", "ssim")
"""Values accepted by `build_perceptual_loss` (and the `--perceptual` option)."""


def _vgg16_modules(max_layer: int) -> list[nn.Module]:
    """torchvision's VGG16 `features` modules with indices 0..max_layer, in order."""
    modules: list[nn.Module] = []
    in_channels = 3
    for entry in VGG16_CONFIG_D:
        if entry == "M":
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            assert isinstance(entry, int)
            modules += [nn.Conv2d(in_channels, entry, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = entry
    assert len(modules) == VGG16_LAST_INDEX + 1
    return modules[: max_layer + 1]


class VGG16Features(nn.Module):
    """The convolutional part of torchvision's VGG16, returning the activations of chosen ReLUs.

    Parameter names are exactly those of torchvision's `vgg16().features` (`features.0.weight`,
    ..., conv layers at indices 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), so its
    checkpoint loads unchanged. The ImageNet normalisation lives in non-persistent buffers,
    so the state dict holds nothing but those keys.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, max_layer: int = 22, taps: tuple[int, ...] = DEFAULT_TAPS) -> None:
        """
        Args:
            max_layer: last `features` index built (22 = relu4_3, the deepest default tap;
                23 would add the fourth pool, which has no parameters).
            taps: indices of the ReLU modules whose outputs `forward` returns, increasing.
        """
        super().__init__()
        if not 0 <= max_layer <= VGG16_LAST_INDEX:
            raise ValueError(f"max_layer: expected an index in [0, {VGG16_LAST_INDEX}], got {max_layer}")
        self.features = nn.Sequential(*_vgg16_modules(max_layer))
        relu_indices = [i for i, m in enumerate(self.features) if isinstance(m, nn.ReLU)]
        if not taps or list(taps) != sorted(set(taps)) or not set(taps) <= set(relu_indices):
            raise ValueError(
                f"taps: expected increasing ReLU indices among {relu_indices} (max_layer {max_layer}), "
                f"got {taps}"
            )
        self.taps = tuple(taps)
        # Each pool before the deepest tap halves H and W; below 1 pixel the maps are empty.
        self._pools_used = sum(isinstance(m, nn.MaxPool2d) for m in list(self.features)[: self.taps[-1]])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Activations at the taps.

        Args:
            images: (B, 3, H, W) RGB in [0, 1]; H and W at least 2 ** (pools before the last tap).

        Returns:
            One (B, C_t, H / 2**p_t, W / 2**p_t) map per tap (floor division), where p_t is the
            number of pools before tap t; for the default taps C_t = 64, 128, 256, 512 and
            p_t = 0, 1, 2, 3.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ShapeError(f"images: expected (B, 3, H, W), got shape {tuple(images.shape)}")
        min_size = 2**self._pools_used
        if min(images.shape[-2:]) < min_size:
            raise ShapeError(
                f"images: expected H and W >= {min_size} for taps {self.taps}, got {tuple(images.shape)}"
            )
        x = (images - self.mean) / self.std
        outputs = []
        for index, module in enumerate(list(self.features)[: self.taps[-1] + 1]):
            x = module(x)
            if index in self.taps:
                outputs.append(x)
        return outputs


def _weights_advice(hub_path: Path) -> str:
    return (
        "Provide torchvision's ImageNet VGG16 weights in one of these ways:\n"
        "  - on a machine with internet run\n"
        "      python -c \"import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')\"\n"
        f"    which puts {VGG16_FILENAME} in that machine's torch hub cache ($TORCH_HOME/hub/checkpoints),"
        f" and copy it to {hub_path}\n"
        f"  - or download {VGG16_URL} and copy it to {hub_path}\n"
        "  - or pass --vgg-weights PATH\n"
        "  - or choose --perceptual ssim explicitly (an SSIM loss that needs no weights)."
    )


def find_vgg16_weights(explicit: Path | None = None) -> Path:
    """Path of the VGG16 ImageNet checkpoint.

    Args:
        explicit: a path given by the user; it must exist. When None, the standard torchvision
            cache `torch.hub.get_dir() / "checkpoints" / VGG16_FILENAME` is used (it follows
            `$TORCH_HOME`).

    Raises:
        PerceptualWeightsMissing: the file is not there; the message says how to provide it.
    """
    hub_path = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME
    if explicit is not None:
        explicit = Path(explicit)
        if not explicit.is_file():
            raise PerceptualWeightsMissing(
                f"explicit (--vgg-weights): {explicit} is not a file.\n{_weights_advice(hub_path)}"
            )
        return explicit
    if not hub_path.is_file():
        raise PerceptualWeightsMissing(
            f"VGG16 weights for the perceptual loss not found at {hub_path}.\n{_weights_advice(hub_path)}"
        )
    return hub_path


def load_vgg16_features(
    path: Path,
    taps: tuple[int, ...] = DEFAULT_TAPS,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> VGG16Features:
    """A frozen `VGG16Features` (eval mode, no parameter requires grad) with weights from `path`.

    Args:
        path: a torchvision-format VGG16 state dict; `classifier.*` keys and layers deeper than
            the last tap are ignored.
        taps: ReLU indices to return; the network is built up to the deepest one.
        device: where the module's parameters go.
        dtype: floating dtype of the parameters.

    Raises:
        PerceptualWeightsMissing: the file is absent or unreadable, or a needed key is missing.
        ShapeError: a needed tensor has the wrong shape.
    """
    path = Path(path)
    if not path.is_file():
        raise PerceptualWeightsMissing(f"path: {path} is not a file")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        raise PerceptualWeightsMissing(
            f"path: {path} cannot be read as a torch state dict: {error}"
        ) from error
    if not isinstance(state_dict, Mapping):
        raise PerceptualWeightsMissing(f"path: {path} holds a {type(state_dict).__name__}, not a state dict")
    model = VGG16Features(max_layer=max(taps), taps=taps)
    needed = {}
    for key, expected in model.state_dict().items():
        if key not in state_dict:
            raise PerceptualWeightsMissing(f"{path}: key {key!r} is missing; is it a torchvision VGG16 file?")
        tensor = state_dict[key]
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected.shape:
            actual = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ShapeError(f"{path}: key {key!r}: expected shape {tuple(expected.shape)}, got {actual}")
        needed[key] = tensor
    model.load_state_dict(needed, strict=True)
    return model.requires_grad_(False).eval().to(device=device, dtype=dtype)


def save_random_vgg16_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write a randomly initialised VGG16 checkpoint in torchvision's key format. NOT ImageNet weights.

    All 13 conv layers at full size (about 59 MB), Kaiming-normal weights (fan out, as torchvision
    initialises them) and small random biases, from a private generator. Two deliberately tiny
    `classifier.*` entries stand in for the classifier, which loading must ignore. Meant for tests
    and smoke runs only: a loss on these features is not a perceptual loss.

    Returns:
        `path`, with parent folders created.
    """
    generator = torch.Generator().manual_seed(seed)
    state_dict: dict[str, torch.Tensor] = {}
    for index, module in enumerate(_vgg16_modules(VGG16_LAST_INDEX)):
        if isinstance(module, nn.Conv2d):
            out_channels, in_channels = module.out_channels, module.in_channels
            std = (2.0 / (out_channels * 9)) ** 0.5
            weight = torch.randn(out_channels, in_channels, 3, 3, generator=generator) * std
            state_dict[f"features.{index}.weight"] = weight
            state_dict[f"features.{index}.bias"] = torch.randn(out_channels, generator=generator) * 0.01
    state_dict["classifier.0.weight"] = torch.zeros(4, 8)
    state_dict["classifier.0.bias"] = torch.zeros(4)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, path)
    return path


class PerceptualLoss(nn.Module):
    """Weighted mean over taps of the mean absolute difference of VGG16 features.

    loss = sum_t w_t * mean|psi_t(prediction) - psi_t(target)| / sum_t w_t, where the inner mean
    runs over every element (B, C_t, h_t, w_t) of tap t. Averaging per element rather than
    summing keeps taps of different sizes on one scale and makes the value independent of
    batch size and resolution; equal weights by default.
    """

    def __init__(self, extractor: VGG16Features, layer_weights: tuple[float, ...] | None = None) -> None:
        """
        Args:
            extractor: frozen feature extractor, e.g. from `load_vgg16_features`.
            layer_weights: one non-negative weight per tap of the extractor; None for equal weights.
        """
        super().__init__()
        self.extractor = extractor
        if layer_weights is None:
            layer_weights = (1.0,) * len(extractor.taps)
        if len(layer_weights) != len(extractor.taps) or min(layer_weights) < 0 or sum(layer_weights) <= 0:
            raise ValueError(
                f"layer_weights: expected {len(extractor.taps)} non-negative weights with a positive sum "
                f"(one per tap {extractor.taps}), got {layer_weights}"
            )
        self.layer_weights = tuple(float(w) for w in layer_weights)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss; target features are computed without gradient.

        Args:
            prediction: (B, 3, H, W) RGB in [0, 1].
            target: (B, 3, H, W) RGB in [0, 1].
        """
        if prediction.ndim != 4 or prediction.shape[1] != 3:
            raise ShapeError(f"prediction: expected (B, 3, H, W), got shape {tuple(prediction.shape)}")
        if target.shape != prediction.shape:
            raise ShapeError(
                f"target: expected prediction's shape {tuple(prediction.shape)}, got {tuple(target.shape)}"
            )
        predicted_features = self.extractor(prediction)
        with torch.no_grad():
            target_features = self.extractor(target)
        differences = torch.stack(
            [
                (predicted - wanted).abs().mean()
                for predicted, wanted in zip(predicted_features, target_features, strict=True)
            ]
        )
        weights = differences.new_tensor(self.layer_weights)
        return (weights * differences).sum() / weights.sum()


def build_perceptual_loss(
    kind: str, weights_path: Path | None, *, device: torch.device | str = "cpu"
) -> nn.Module:
    """The reconstruction loss module chosen by `--perceptual`, called as loss(prediction, target).

    Args:
        kind: "vgg" (VGG16 features; the weights must be found, never a silent fallback) or
            "ssim" (1 - SSIM, no weights).
        weights_path: explicit VGG16 checkpoint for "vgg", or None to look in the torch hub
            cache; must be None for "ssim".
        device: where the VGG16 parameters go.

    Raises:
        PerceptualWeightsMissing: kind "vgg" and no weights found.
        ValueError: unknown kind, or weights given with "ssim".
    """
    if kind == "vgg":
        return PerceptualLoss(load_vgg16_features(find_vgg16_weights(weights_path), device=device))
    if kind == "ssim":
        if weights_path is not None:
            raise ValueError(f"weights_path: expected None with kind 'ssim' (no weights), got {weights_path}")
        return SSIMLoss()
    raise ValueError(f"kind: expected one of {PERCEPTUAL_KINDS}, got {kind!r}")
