"""Perceptual loss of stage two: VGG16 features in torchvision's key format, and the SSIM fallback."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stages.keypoints.errors import PerceptualWeightsMissing, ShapeError
from stages.keypoints.perceptual import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG16_FILENAME,
    PerceptualLoss,
    VGG16Features,
    build_perceptual_loss,
    find_vgg16_weights,
    load_vgg16_features,
    save_random_vgg16_checkpoint,
)
from stages.keypoints.ssim import SSIM_C1, SSIMLoss, ssim_loss

TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
TORCHVISION_POOL_INDICES = (4, 9, 16, 23, 30)


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    return save_random_vgg16_checkpoint(tmp_path_factory.mktemp("vgg") / VGG16_FILENAME, seed=0)


@pytest.fixture(scope="module")
def extractor(random_checkpoint):
    return load_vgg16_features(random_checkpoint)


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    # An earlier torch.hub.set_dir in this process would take precedence over $TORCH_HOME.
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return home


def images(seed: int, batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_parameter_names_are_torchvision_features_keys():
    model = VGG16Features(max_layer=30, taps=(29,))
    expected = {f"features.{i}.{kind}" for i in TORCHVISION_CONV_INDICES for kind in ("weight", "bias")}
    assert set(model.state_dict()) == expected
    assert all(isinstance(model.features[i], nn.MaxPool2d) for i in TORCHVISION_POOL_INDICES)
    relus = set(range(31)) - set(TORCHVISION_CONV_INDICES) - set(TORCHVISION_POOL_INDICES)
    assert all(isinstance(model.features[i], nn.ReLU) for i in relus)
    assert model.features[28].weight.shape == (512, 512, 3, 3)


def test_random_checkpoint_has_torchvision_layout(random_checkpoint):
    state_dict = torch.load(random_checkpoint, weights_only=True)
    assert state_dict["features.0.weight"].shape == (64, 3, 3, 3)
    assert state_dict["features.28.bias"].shape == (512,)
    assert {key for key in state_dict if key.startswith("classifier.")}
    assert len([key for key in state_dict if key.startswith("features.")]) == 26


def test_loaded_extractor_is_frozen_and_built_to_the_deepest_tap(extractor):
    assert not extractor.training
    assert not any(p.requires_grad for p in extractor.parameters())
    assert len(extractor.features) == 23


def test_taps_have_expected_shapes(extractor):
    outputs = extractor(images(0))
    assert [tuple(o.shape) for o in outputs] == [
        (2, 64, 32, 32),
        (2, 128, 16, 16),
        (2, 256, 8, 8),
        (2, 512, 4, 4),
    ]


def test_first_tap_equals_hand_computed_relu1_2(random_checkpoint, extractor):
    state_dict = torch.load(random_checkpoint, weights_only=True)
    x = images(1)
    normalised = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )
    hidden = F.relu(
        F.conv2d(normalised, state_dict["features.0.weight"], state_dict["features.0.bias"], padding=1)
    )
    expected = F.relu(
        F.conv2d(hidden, state_dict["features.2.weight"], state_dict["features.2.bias"], padding=1)
    )
    torch.testing.assert_close(extractor(x)[0], expected)


def test_shallow_taps_load_only_what_they_need(random_checkpoint):
    model = load_vgg16_features(random_checkpoint, taps=(3,))
    assert set(model.state_dict()) == {
        "features.0.weight",
        "features.0.bias",
        "features.2.weight",
        "features.2.bias",
    }


def test_bad_image_shape_names_the_argument(extractor):
    with pytest.raises(ShapeError, match="images: expected"):
        extractor(torch.rand(2, 1, 32, 32))
    with pytest.raises(ShapeError, match=">= 8"):
        extractor(torch.rand(1, 3, 4, 32))


def test_bad_taps_raise():
    with pytest.raises(ValueError, match="taps"):
        VGG16Features(taps=(2,))  # a conv, not a ReLU
    with pytest.raises(ValueError, match="taps"):
        VGG16Features(max_layer=10, taps=(3, 15))


def small_state_dict() -> dict[str, torch.Tensor]:
    return {
        "features.0.weight": torch.zeros(64, 3, 3, 3),
        "features.0.bias": torch.zeros(64),
        "features.2.weight": torch.zeros(64, 64, 3, 3),
        "features.2.bias": torch.zeros(64),
    }


def test_legacy_serialisation_loads(tmp_path):
    # vgg16-397923af.pth predates torch's zip format; weights_only loading must still read it.
    path = tmp_path / "legacy.pth"
    torch.save(small_state_dict(), path, _use_new_zipfile_serialization=False)
    model = load_vgg16_features(path, taps=(3,))
    assert model.features[2].weight.shape == (64, 64, 3, 3)


def test_missing_key_is_named_with_the_file(tmp_path):
    state_dict = small_state_dict()
    del state_dict["features.2.bias"]
    path = tmp_path / "broken.pth"
    torch.save(state_dict, path)
    with pytest.raises(PerceptualWeightsMissing, match="features.2.bias") as error:
        load_vgg16_features(path, taps=(3,))
    assert str(path) in str(error.value)


def test_wrong_shape_is_named_with_the_file(tmp_path):
    state_dict = small_state_dict()
    state_dict["features.2.weight"] = torch.zeros(64, 32, 3, 3)
    path = tmp_path / "wrong.pth"
    torch.save(state_dict, path)
    with pytest.raises(ShapeError, match=r"features.2.weight.*\(64, 64, 3, 3\).*\(64, 32, 3, 3\)") as error:
        load_vgg16_features(path, taps=(3,))
    assert str(path) in str(error.value)


def test_unreadable_file_raises(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(PerceptualWeightsMissing, match="garbage.pth"):
        load_vgg16_features(path)


def test_missing_weights_message_says_how_to_provide_them(empty_torch_home):
    hub_path = empty_torch_home / "hub" / "checkpoints" / VGG16_FILENAME
    with pytest.raises(PerceptualWeightsMissing) as error:
        find_vgg16_weights()
    message = str(error.value)
    for needed in (
        str(hub_path),
        "--vgg-weights",
        "--perceptual ssim",
        "IMAGENET1K_V1",
        "download.pytorch.org",
    ):
        assert needed in message


def test_find_honours_torch_home(empty_torch_home):
    hub_path = empty_torch_home / "hub" / "checkpoints" / VGG16_FILENAME
    hub_path.parent.mkdir(parents=True)
    hub_path.write_bytes(b"")
    assert find_vgg16_weights() == hub_path


def test_find_explicit_path(tmp_path, random_checkpoint):
    assert find_vgg16_weights(random_checkpoint) == random_checkpoint
    absent = tmp_path / "nowhere.pth"
    with pytest.raises(PerceptualWeightsMissing, match="nowhere.pth"):
        find_vgg16_weights(absent)


def test_perceptual_loss_zero_for_identical_positive_for_different(extractor):
    loss = PerceptualLoss(extractor)
    x = images(2)
    assert loss(x, x.clone()).item() == 0.0
    assert loss(x, images(3)).item() > 0.0


def test_perceptual_gradient_reaches_prediction_only(extractor):
    loss = PerceptualLoss(extractor)
    prediction = images(4).requires_grad_(True)
    target = images(5).requires_grad_(True)
    loss(prediction, target).backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0
    assert torch.isfinite(prediction.grad).all()
    assert target.grad is None
    assert all(p.grad is None for p in extractor.parameters())


def test_layer_weights_select_taps(extractor):
    prediction, target = images(6), images(7)
    only_first = PerceptualLoss(extractor, layer_weights=(2.0, 0.0, 0.0, 0.0))(prediction, target)
    expected = (extractor(prediction)[0] - extractor(target)[0]).abs().mean()
    torch.testing.assert_close(only_first, expected)
    with pytest.raises(ValueError, match="layer_weights"):
        PerceptualLoss(extractor, layer_weights=(1.0, 1.0))


def test_perceptual_loss_rejects_mismatched_shapes(extractor):
    with pytest.raises(ShapeError, match="target"):
        PerceptualLoss(extractor)(images(0), images(0, size=16))


def test_ssim_zero_for_identical_and_monotonic_in_noise():
    generator = torch.Generator().manual_seed(8)
    clean = torch.rand(2, 3, 32, 32, generator=generator)
    noise = torch.randn(2, 3, 32, 32, generator=generator)
    assert abs(ssim_loss(clean, clean.clone()).item()) < 1e-5
    losses = [ssim_loss((clean + level * noise).clamp(0, 1), clean).item() for level in (0.02, 0.1, 0.3)]
    assert 0 < losses[0] < losses[1] < losses[2]


def test_ssim_of_constant_images_matches_hand_computation():
    a, b = 0.2, 0.6
    prediction = torch.full((1, 1, 8, 8), a, dtype=torch.float64)
    target = torch.full((1, 1, 8, 8), b, dtype=torch.float64)
    # No variance: only the luminance term is left.
    expected = 1 - (2 * a * b + SSIM_C1) / (a**2 + b**2 + SSIM_C1)
    assert ssim_loss(prediction, target, window=3).item() == pytest.approx(expected, rel=1e-9)


def test_ssim_gradcheck():
    generator = torch.Generator().manual_seed(9)
    prediction = torch.rand(1, 2, 9, 9, generator=generator, dtype=torch.float64, requires_grad=True)
    target = torch.rand(1, 2, 9, 9, generator=generator, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: ssim_loss(p, target, window=7), (prediction,))


def test_ssim_bad_input():
    with pytest.raises(ShapeError, match="target"):
        ssim_loss(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 8))
    with pytest.raises(ShapeError, match="window 7"):
        ssim_loss(torch.rand(1, 3, 6, 16), torch.rand(1, 3, 6, 16))
    with pytest.raises(ValueError, match="window"):
        SSIMLoss(window=4)


def test_build_vgg_without_weights_never_falls_back(empty_torch_home):
    with pytest.raises(PerceptualWeightsMissing, match="--perceptual ssim"):
        build_perceptual_loss("vgg", None)


def test_build_both_kinds_share_the_call_signature(random_checkpoint):
    vgg = build_perceptual_loss("vgg", random_checkpoint)
    ssim = build_perceptual_loss("ssim", None)
    assert isinstance(vgg, PerceptualLoss) and isinstance(ssim, SSIMLoss)
    x, y = images(10), images(11)
    for loss in (vgg, ssim):
        assert loss(x, y).ndim == 0 and loss(x, y).item() > 0


def test_build_rejects_unknown_kind_and_ssim_with_weights(random_checkpoint):
    with pytest.raises(ValueError, match=r"kind: expected one of \('vgg', 'ssim'\), got 'lpips'"):
        build_perceptual_loss("lpips", None)
    with pytest.raises(ValueError, match="weights_path"):
        build_perceptual_loss("ssim", random_checkpoint)
