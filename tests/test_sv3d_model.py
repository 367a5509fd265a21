"""SV3D-p model, pipeline, loading and schedule on the tiny random model (CPU, offline)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel

from stages.errors import ConfigError, ModelLoadError
from stages.sv3d import (
    CaptureStep,
    SV3DUNetModel,
    build_tiny_sv3d,
    camera_vector,
    ddpm_sigma,
    load_sv3d_pipeline,
    model_identity,
    resolve_dtype,
    select_capture_step,
    triangle_guidance_scales,
)

FRAMES = 5
STEPS = 3


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_sv3d(seed=0)


def _image(size: int = 64) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1]: a dark square on white, deterministic."""
    image = torch.ones(1, 3, size, size)
    image[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = -0.5
    return image


def _cameras(num_frames: int = FRAMES) -> tuple[np.ndarray, np.ndarray]:
    polars = np.full(num_frames, np.deg2rad(80.0))
    azimuths = np.deg2rad(np.mod(np.arange(1, num_frames + 1) * 360.0 / num_frames, 360.0))
    return polars, azimuths


def _run(pipe, seed: int = 0, size: int = 64, **kwargs):
    polars, azimuths = _cameras(kwargs.pop("num_frames", FRAMES))
    generator = torch.Generator().manual_seed(seed)
    kwargs.setdefault("num_inference_steps", STEPS)
    return pipe(_image(size), polars, azimuths, generator, **kwargs)


# --------------------------------------------------------------------------- UNet


def test_unet_state_dict_keys_equal_svd_unet(pipe):
    ours_only = ("camera_embed_dims", "resnet_eps")
    config = {k: v for k, v in pipe.unet.config.items() if not k.startswith("_") and k not in ours_only}
    svd = UNetSpatioTemporalConditionModel(**config)
    ours = {k: tuple(v.shape) for k, v in pipe.unet.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in svd.state_dict().items()}
    assert ours == theirs


def test_unet_rejects_mismatched_camera_dims():
    with pytest.raises(ConfigError, match="projection_class_embeddings_input_dim"):
        SV3DUNetModel(camera_embed_dims=(256, 512, 512), projection_class_embeddings_input_dim=768)


def test_camera_vector_is_cos_then_sin():
    x = torch.tensor([[0.7]])
    out = camera_vector(x, 2 * x, 3 * x, (4, 4, 4))
    freqs = np.exp(-math.log(10000.0) * np.arange(2) / 2)
    expected = np.concatenate(
        [np.concatenate([np.cos(v * freqs), np.sin(v * freqs)]) for v in (0.7, 1.4, 2.1)]
    )
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_camera_embedding_is_per_frame(pipe):
    unet = pipe.unet
    polars = torch.full((2, 4), 1.4)
    azimuths = torch.linspace(0.0, 5.0, 8).reshape(2, 4)
    cond_aug = torch.full((2,), 1e-5)
    with torch.no_grad():
        before = unet.embed_conditioning(0.3, cond_aug, polars, azimuths, torch.float32)
        moved = azimuths.clone()
        moved[1, 2] += 1.0
        after = unet.embed_conditioning(0.3, cond_aug, polars, moved, torch.float32)
    assert before.shape == (8, unet.time_embedding.linear_2.out_features)
    changed = (before - after).abs().amax(dim=1) > 0
    # Rows are (batch, frame) with the frame varying fastest: only row 1 * 4 + 2 moves.
    assert changed.tolist() == [False] * 6 + [True, False]


def test_unet_forward_shape_and_bad_inputs(pipe):
    unet = pipe.unet
    b, v, h = 2, 3, 8
    sample = torch.randn(b, v, 8, h, h)
    hidden = torch.randn(b, 1, unet.config.cross_attention_dim)
    angles = torch.zeros(b, v)
    with torch.no_grad():
        out = unet(sample, 0.3, hidden, torch.zeros(b), angles, angles).sample
    assert out.shape == (b, v, 4, h, h)
    with pytest.raises(ValueError, match="polars_rad"):
        unet(sample, 0.3, hidden, torch.zeros(b), torch.zeros(b, v + 1), angles)
    with pytest.raises(ValueError, match="sample"):
        unet(sample[:, :, :4], 0.3, hidden, torch.zeros(b), angles, angles)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        unet(sample, 0.3, hidden[:, :, :3], torch.zeros(b), angles, angles)


# --------------------------------------------------------------------------- pipeline


@pytest.mark.parametrize("size", [64, 48])
def test_pipeline_shapes_and_features(pipe, size):
    calls = []
    out = _run(
        pipe,
        size=size,
        capture_step=1,
        capture_frames=[4, 0],
        progress=lambda done, total: calls.append((done, total)),
    )
    assert out.frames.shape == (FRAMES, 3, size, size)
    assert out.frames.dtype == torch.float32
    assert 0.0 <= out.frames.min() and out.frames.max() <= 1.0
    shapes = pipe.feature_layer_shapes(size)
    assert set(out.features) == set(shapes) == set(pipe.feature_layer_names)
    for name, feature in out.features.items():
        assert feature.shape == (2, *shapes[name]), name
        assert feature.dtype == torch.float32 and feature.device.type == "cpu"
    assert out.capture.step_index == 1 and out.capture.mapping == "index"
    assert calls == [(i, STEPS) for i in range(1, STEPS + 1)]


def test_pipeline_native_resolution(pipe):
    assert pipe.native_resolution == 64
    assert pipe.feature_layer_shapes(64)["up_blocks.3"] == (32, 8, 8)


def test_pipeline_deterministic_per_seed(pipe):
    a = _run(pipe, seed=3, capture_step=0, feature_layers=["up_blocks.1"])
    b = _run(pipe, seed=3, capture_step=0, feature_layers=["up_blocks.1"])
    c = _run(pipe, seed=4, capture_step=0, feature_layers=["up_blocks.1"])
    assert torch.equal(a.frames, b.frames)
    assert torch.equal(a.features["up_blocks.1"], b.features["up_blocks.1"])
    assert list(a.features) == ["up_blocks.1"]
    assert not torch.allclose(a.frames, c.frames)


def test_pipeline_without_capture_has_no_features(pipe):
    out = _run(pipe, capture_step=None)
    assert out.features == {} and out.capture is None


def test_pipeline_takes_capture_step_from_select(pipe):
    sigmas = pipe.sampler_sigmas(STEPS)
    step = select_capture_step(sigmas, tau=1000, mapping="trajectory")
    out = _run(pipe, capture_step=step, feature_layers=["up_blocks.0"])
    assert out.capture == step and out.capture.step_index == 0
    other = select_capture_step(pipe.sampler_sigmas(STEPS + 2), tau=500, mapping="trajectory")
    with pytest.raises(ConfigError, match="sigma"):
        _run(pipe, capture_step=other)


def test_pipeline_bad_inputs(pipe):
    polars, azimuths = _cameras()
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="image"):
        pipe(_image()[0], polars, azimuths, gen, num_inference_steps=1)
    with pytest.raises(ValueError, match="image"):
        pipe(_image().repeat(2, 1, 1, 1), polars, azimuths, gen, num_inference_steps=1)
    with pytest.raises(ValueError, match="multiples"):
        pipe(_image(60), polars, azimuths, gen, num_inference_steps=1)
    with pytest.raises(ValueError, match="azimuths_rad"):
        pipe(_image(), polars[:-1], azimuths, gen, num_inference_steps=1)
    with pytest.raises(ConfigError, match="capture_step"):
        _run(pipe, capture_step=STEPS)
    with pytest.raises(ConfigError, match="feature_layers"):
        _run(pipe, capture_step=0, feature_layers=["mid_block"])
    with pytest.raises(ConfigError, match="capture_frames"):
        _run(pipe, capture_step=0, capture_frames=[FRAMES])


def test_build_tiny_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    build_tiny_sv3d(seed=1)
    assert torch.equal(state, torch.random.get_rng_state())


# --------------------------------------------------------------------------- loading


def test_save_load_round_trip(pipe, tiny_model_dir):
    loaded = load_sv3d_pipeline(tiny_model_dir, "cpu", "float32")
    assert loaded.attention_backend == "sdpa"
    assert type(loaded.unet) is SV3DUNetModel
    for name in ("unet", "vae", "image_encoder"):
        saved, restored = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert saved.keys() == restored.keys()
        assert all(torch.equal(saved[k], restored[k]) for k in saved), name
    for name in ("unet", "vae", "scheduler"):
        assert _public(getattr(loaded, name).config) == _public(getattr(pipe, name).config)
    a = _run(pipe, seed=7, capture_step=1)
    b = _run(loaded, seed=7, capture_step=1)
    # Equal weights at other memory addresses take other SIMD paths on the CPU, so
    # outputs agree to rounding (~1e-4 after 3 steps), not bit for bit.
    assert torch.allclose(a.frames, b.frames, atol=1e-3)
    for name in a.features:
        assert torch.allclose(a.features[name], b.features[name], atol=1e-3)


def test_load_errors(tiny_model_dir, tmp_path):
    if _has_xformers():
        pytest.skip("xformers is installed")
    with pytest.raises(ModelLoadError, match=r"pip install -e \.\[gpu\]"):
        load_sv3d_pipeline(tiny_model_dir, "cpu", "float32", attention="xformers")
    with pytest.raises(ConfigError, match="attention"):
        load_sv3d_pipeline(tiny_model_dir, "cpu", "float32", attention="flash")
    with pytest.raises(ModelLoadError, match="not a directory"):
        load_sv3d_pipeline(tmp_path / "missing", "cpu")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelLoadError, match="vae/"):
        load_sv3d_pipeline(broken, "cpu")


def test_model_identity_tracks_configs(tiny_model_dir, tmp_path):
    ident = model_identity(tiny_model_dir)
    assert ident == model_identity(tiny_model_dir)
    assert {w["file"].split("/")[0] for w in ident["weights"]} == {"unet", "vae", "image_encoder"}
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert model_identity(copy)["config_sha256"] == ident["config_sha256"]
    config = copy / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace("700.0", "80.0"))
    assert model_identity(copy)["config_sha256"] != ident["config_sha256"]


def test_resolve_dtype():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.float16
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ConfigError, match="dtype"):
        resolve_dtype("fp8", "cpu")


def _public(config) -> dict:
    """Config without diffusers' bookkeeping keys, tuples as lists (as JSON stores them)."""
    return json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))


def _has_xformers() -> bool:
    try:
        import xformers  # noqa: F401
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------- schedule


def test_ddpm_sigma_by_hand():
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    alphabar = np.cumprod(1.0 - betas)
    by_hand = np.sqrt((1.0 - alphabar) / alphabar)
    assert ddpm_sigma(500) == pytest.approx(by_hand[500], rel=1e-12)
    assert ddpm_sigma(0) == pytest.approx(by_hand[0], rel=1e-12)
    assert ddpm_sigma(1000) == pytest.approx(by_hand[999], rel=1e-12)
    assert ddpm_sigma(999) == ddpm_sigma(1000)
    with pytest.raises(ConfigError, match="tau"):
        ddpm_sigma(1001)


def test_triangle_guidance_scales():
    np.testing.assert_allclose(triangle_guidance_scales(5, 1.0, 2.5), [1.0, 1.75, 2.5, 1.75, 1.0])
    assert triangle_guidance_scales(21, 1.0, 2.5).argmax() == 10


def test_select_capture_step():
    sigmas = np.array([700.0, 50.0, 5.0, 0.5, 0.002, 0.0])
    ddpm = select_capture_step(sigmas, tau=500, mapping="ddpm")
    # ddpm_sigma(500) is about 2.2: nearest in log space among 50, 5, 0.5 is 5.
    assert ddpm.step_index == 2 and ddpm.sigma == 5.0
    assert ddpm.target_sigma == pytest.approx(ddpm_sigma(500))
    assert ddpm.timestep_c_noise == pytest.approx(0.25 * math.log(5.0))
    # The DDPM schedule tops out at sigma ~14.6, far below sigma_max=700.
    assert select_capture_step(sigmas, 1000, "ddpm").target_sigma == pytest.approx(14.6, abs=0.1)
    assert select_capture_step(sigmas, 1000, "ddpm").step_index == 2
    assert select_capture_step(sigmas, 0, "ddpm").step_index == 4
    assert select_capture_step(sigmas, 1000, "trajectory").step_index == 0
    assert select_capture_step(sigmas, 0, "trajectory").step_index == 4
    assert select_capture_step(sigmas, 500, "trajectory").step_index == 2
    assert select_capture_step(sigmas, 500, "trajectory").target_sigma is None
    assert CaptureStep.from_dict(ddpm.to_dict()) == ddpm
    with pytest.raises(ConfigError, match="mapping"):
        select_capture_step(sigmas, 500, "linear")
    with pytest.raises(ConfigError, match="sigmas"):
        select_capture_step(np.array([1.0]), 500, "ddpm")
