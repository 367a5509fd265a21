"""Diffusion features of rendered views: `features_of_views` and `--features-model`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stages.errors import ConfigError
from stages.sv3d import build_tiny_sv3d

FRAMES = 3
SIGMA = 2.5


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_sv3d(seed=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _views(size: int = 64) -> torch.Tensor:
    """(FRAMES, 3, H, W) in [-1, 1]: a differently placed dark square on white per view."""
    views = torch.ones(FRAMES, 3, size, size)
    for v in range(FRAMES):
        views[v, :, 8 + 8 * v : 40 + 8 * v, 16:48] = -0.5 + 0.2 * v
    return views


def _cameras() -> tuple[np.ndarray, np.ndarray]:
    return np.full(FRAMES, np.deg2rad(80.0)), np.deg2rad(np.arange(FRAMES) * 90.0)


def _record_unet_calls(pipe) -> tuple[list[dict], torch.utils.hooks.RemovableHandle]:
    calls: list[dict] = []

    def hook(module, args, kwargs):
        calls.append({"sample": args[0].clone(), "timestep": args[1], **kwargs})

    return calls, pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)


def test_features_of_views_conditions_as_the_pipeline_and_noises_the_views_to_sigma(pipe):
    views = _views()
    polars, azimuths = _cameras()
    calls, handle = _record_unet_calls(pipe)
    try:
        pipe(views[:1], polars, azimuths, torch.Generator().manual_seed(7), num_inference_steps=1)
        features = pipe.features_of_views(views, polars, azimuths, SIGMA, torch.Generator().manual_seed(7))
    finally:
        handle.remove()
    sampled, ours = calls
    latent_channels = pipe.vae.config.latent_channels
    # Same conditioning as the pipeline's conditional (second) CFG half.
    assert torch.equal(ours["encoder_hidden_states"][0], sampled["encoder_hidden_states"][1])
    assert torch.equal(ours["sample"][0, :, latent_channels:], sampled["sample"][1, :, latent_channels:])
    for key in ("polars_rad", "azimuths_rad", "cond_aug"):
        assert torch.equal(ours[key][0], sampled[key][1])
    # Noisy latents by hand: x0 = scaled VAE mode, eps = the draw after the cond noise.
    generator = torch.Generator().manual_seed(7)
    torch.randn((1, 3, 64, 64), generator=generator)
    clean = pipe._encode_vae_image(views) * pipe.vae.config.scaling_factor
    eps = torch.randn(clean.shape, generator=generator)
    expected = (clean + SIGMA * eps) / math.sqrt(SIGMA**2 + 1.0)
    torch.testing.assert_close(ours["sample"][0, :, :latent_channels], expected)
    assert float(ours["timestep"]) == pytest.approx(0.25 * math.log(SIGMA))
    shapes = pipe.feature_layer_shapes(64)
    assert {name: tuple(v.shape) for name, v in features.items()} == {
        name: (FRAMES, *shape) for name, shape in shapes.items()
    }
    assert all(torch.isfinite(v).all() for v in features.values())


def test_features_of_views_depend_on_seed_and_sigma_only_as_asked(pipe):
    views = _views()
    polars, azimuths = _cameras()

    def run(seed, sigma):
        generator = torch.Generator().manual_seed(seed)
        return pipe.features_of_views(
            views, polars, azimuths, sigma, generator, feature_layers=["up_blocks.1"]
        )

    a, b = run(0, SIGMA), run(0, SIGMA)
    assert list(a) == ["up_blocks.1"] and torch.equal(a["up_blocks.1"], b["up_blocks.1"])
    # A transposed render (channels-last memory) is the same pixels, hence the same features.
    generator = torch.Generator().manual_seed(0)
    channels_last = views.contiguous(memory_format=torch.channels_last)
    same = pipe.features_of_views(
        channels_last, polars, azimuths, SIGMA, generator, feature_layers=["up_blocks.1"]
    )
    assert torch.equal(same["up_blocks.1"], a["up_blocks.1"])
    assert not torch.equal(a["up_blocks.1"], run(1, SIGMA)["up_blocks.1"])
    assert not torch.equal(a["up_blocks.1"], run(0, 0.5)["up_blocks.1"])


def test_features_of_views_bad_inputs(pipe):
    views = _views()
    polars, azimuths = _cameras()
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"views must be a \(3, 3, H, W\)"):
        pipe.features_of_views(views[:2], polars, azimuths, SIGMA, generator)
    with pytest.raises(ValueError, match="views H and W must be multiples of 8"):
        pipe.features_of_views(views[..., :60], polars, azimuths, SIGMA, generator)
    with pytest.raises(ValueError, match="azimuths_rad has 2 frames"):
        pipe.features_of_views(views, polars, azimuths[:2], SIGMA, generator)
    with pytest.raises(ConfigError, match="sigma must be"):
        pipe.features_of_views(views, polars, azimuths, 0.0, generator)
    with pytest.raises(ConfigError, match="feature_layers"):
        pipe.features_of_views(views, polars, azimuths, SIGMA, generator, feature_layers=["mid_block"])
    with pytest.raises(ValueError, match="CPU torch.Generator"):
        pipe.features_of_views(views, polars, azimuths, SIGMA, None)


# --------------------------------------------------------------------------- render backend


def _render(tmp_path, name, model=None, n=4, seed=0):
    pytest.importorskip("pybullet")
    from pipeline.generate import GenerateJob, run_generate
    from stages.config import GenerationConfig
    from stages.synthetic.world import SyntheticWorldConfig

    job = GenerateJob(
        None,
        None,
        tmp_path / name,
        GenerationConfig(resolution=64, seed=seed),
        backend="render",
        world=SyntheticWorldConfig("humanoid", "train", num_samples=n, seed=seed),
        features_model=model,
        samples_per_shard=2,
        progress=False,
    )
    summary = run_generate(job)
    assert summary.done == n and not summary.failed and not summary.errors
    return job


def test_render_store_with_features_model_stores_the_sv3d_features_of_its_views(tmp_path, tiny_model_dir):
    from cache_schema import CacheReader
    from pipeline.backends import SV3DBackendSpec
    from pipeline.generate import plan
    from pipeline.store_report import verify_store
    from stages.config import GenerationConfig
    from stages.sources import sample_seed

    job = _render(tmp_path, "f.zarr", tiny_model_dir)
    reader = CacheReader(tmp_path / "f.zarr")
    meta = reader.store.metadata
    sv3d = SV3DBackendSpec(str(tiny_model_dir.resolve()), GenerationConfig(resolution=64))
    assert meta.layout.feature_layers == sv3d.feature_layers() and len(sv3d.feature_layers()) == 4
    assert meta.layout.feature_dtype == "float16"
    assert meta.capture == sv3d.capture_record() and meta.capture["tau"] == 500
    assert meta.model["path"] == str(tiny_model_dir.resolve())
    assert meta.model["features_model"]["config_sha256"]
    names = [layer.array_name for layer in meta.layout.feature_layers]
    data = reader.read_batch(range(4), ["views", *names])
    for layer, name in zip(meta.layout.feature_layers, names, strict=True):
        value = data[name]
        assert value.shape == (4, 4, layer.channels, layer.height, layer.width)
        assert value.dtype == np.float16 and np.isfinite(value).all() and np.abs(value).max() > 0
        assert not np.array_equal(value[0], value[1])
    # What is stored is the model's features of the stored views, seeded per sample.
    spec = plan(job)[0]
    model = spec.features_spec().build()
    sample_ids = reader.store.sample_ids()
    again = model.features_of_views(data["views"][2], sample_seed(0, str(sample_ids[2])))
    for layer, name in zip(meta.layout.feature_layers, names, strict=True):
        assert np.array_equal(again[layer.name].astype(np.float16), data[name][2])
    assert verify_store(tmp_path / "f.zarr")[0] == []

    _render(tmp_path, "f2.zarr", tiny_model_dir)
    from tests.test_generate import assert_same_store

    assert_same_store(tmp_path / "f.zarr", tmp_path / "f2.zarr")
    _render(tmp_path, "plain.zarr")
    plain = CacheReader(tmp_path / "plain.zarr")
    assert plain.store.metadata.layout.feature_layers == () and plain.store.metadata.capture is None
    assert plain.store.metadata.fingerprint != meta.fingerprint
    # Features never change the renders.
    assert np.array_equal(plain.read_batch(range(4), ["views"])["views"], data["views"])


def test_cli_features_model_shows_in_inspect_and_bad_uses_are_refused(tmp_path, tiny_model_dir):
    pytest.importorskip("pybullet")
    from typer.testing import CliRunner

    from pipeline.cache_cli import app

    runner = CliRunner()
    base = ["generate", "--backend", "render", "--source", "synthetic:quadruped", "--num-samples", "2"]
    base += ["--resolution", "64", "--no-progress"]
    done = runner.invoke(
        app, [*base, "--features-model", str(tiny_model_dir), "--out", str(tmp_path / "q.zarr")]
    )
    assert done.exit_code == 0, done.output
    shown = runner.invoke(app, ["inspect", str(tmp_path / "q.zarr")])
    assert shown.exit_code == 0 and "features/up_blocks_0" in shown.output
    assert str(tiny_model_dir.resolve()) in shown.output and "feature capture" in shown.output
    missing = runner.invoke(
        app, [*base, "--features-model", str(tmp_path / "nope"), "--out", str(tmp_path / "m")]
    )
    assert missing.exit_code == 2 and "--features-model" in missing.output
    sv3d = runner.invoke(
        app,
        ["generate", str(tmp_path), "--model", str(tiny_model_dir), "--features-model", str(tiny_model_dir)]
        + ["--out", str(tmp_path / "s.zarr")],
    )
    assert sv3d.exit_code == 2 and "--backend render" in sv3d.output
    assert "--features-model" in runner.invoke(app, ["generate", "--help"]).output
