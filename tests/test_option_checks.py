"""Stage-one numeric options: NaN, infinities and out-of-range values are refused by name, exit 2."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from pipeline.cache_cli import app
from stages.config import GenerationConfig, OrbitConfig
from stages.errors import ConfigError


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("radius", math.nan),
        ("radius", math.inf),
        ("radius", -1.0),
        ("elevation_deg", math.nan),
        ("elevation_deg", 120.0),
        ("fov_deg", math.nan),
        ("kept_azimuths_deg", (0.0, math.nan)),
    ],
)
def test_orbit_refuses_non_finite_or_out_of_range_values(field, value):
    with pytest.raises(ConfigError, match=field):
        OrbitConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_guidance_scale", math.nan),
        ("max_guidance_scale", -0.5),
        ("cond_aug", math.inf),
        ("seed", -1),
        ("resolution", 100_000),
        ("max_image_pixels", 0),
    ],
)
def test_generation_config_refuses_non_finite_or_out_of_range_values(field, value):
    with pytest.raises(ConfigError, match=field):
        GenerationConfig(**{field: value})


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--radius", "nan", "radius"),
        ("--elevation", "inf", "elevation_deg"),
        ("--min-guidance", "nan", "min_guidance_scale"),
        ("--cond-aug", "-1", "cond_aug"),
        ("--seed", "-3", "seed"),
        ("--resolution", "100000", "resolution"),
        ("--retries", "-1", "--retries"),
        ("--workers", "0", "--workers"),
        ("--shard-size", "0", "--shard-size"),
    ],
)
def test_generate_names_the_bad_option_in_one_line_and_exits_2(tmp_path, option, value, named):
    out = tmp_path / "store.zarr"
    args = ["generate", "--backend", "render", "--source", "synthetic:humanoid", "--num-samples", "2"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), option, value])
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_a_thin_image_whose_crop_square_is_huge_fails_cleanly_instead_of_allocating_it(tmp_path):
    import numpy as np
    from PIL import Image

    from stages.errors import ImageLoadError
    from stages.images import load_image, prepare_image

    # 20000x1 px: 0.02 MP of pixels, but its crop square is 23530 px on a side (554 MP).
    path = tmp_path / "thin.png"
    rgb = np.zeros((1, 20000, 3), dtype=np.uint8)
    rgb[0, 10:-10] = 40
    Image.fromarray(rgb).save(path)
    loaded = load_image(path, 20, max_pixels=100_000_000)
    with pytest.raises(ImageLoadError, match="crop square .* exceeds max_image_pixels"):
        prepare_image(loaded, 64, 0.85, max_pixels=100_000_000)


def test_max_image_pixels_above_pils_own_limit_takes_effect(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from stages.images import read_rgba

    # Lower PIL's limit instead of writing a 90 MP file: the option must override it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "big.png"
    Image.fromarray(np.full((100, 100, 3), 200, dtype=np.uint8)).save(path)
    rgba, _ = read_rgba(path, max_pixels=20_000)
    assert rgba.shape == (100, 100, 4)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_tls_options_go_together_with_a_tls_scheduler_and_existing_files(tmp_path):
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "cert.pem", "key.pem"))
    for path in (ca, cert):
        path.write_text("-----BEGIN CERTIFICATE-----\n")
    out = tmp_path / "store.zarr"
    base = ["generate", "--backend", "render", "--source", "synthetic:humanoid", "--out", str(out)]
    tls = ["--tls-ca-file", str(ca), "--tls-cert", str(cert)]
    cases = [
        ([*tls], "give all three"),
        ([*tls, "--tls-key", str(key), "--scheduler", "tls://head:8786"], f"--tls-key {key}: no such file"),
    ]
    key.write_text("key")
    cases.append(([*tls, "--tls-key", str(key), "--scheduler", "tcp://head:8786"], "need --scheduler tls://"))
    for extra, message in cases[2:]:
        result = CliRunner().invoke(app, [*base, *extra])
        assert result.exit_code == 2 and message in result.output, result.output
    key.unlink()
    for extra, message in cases[:2]:
        result = CliRunner().invoke(app, [*base, *extra])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()


def test_scheduler_tls_builds_a_dask_security_that_requires_encryption(tmp_path):
    from pipeline.runner import SchedulerTLS

    paths = []
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("pem")
        paths.append(tmp_path / name)
    security = SchedulerTLS(*paths).security()
    assert security.require_encryption is True
    assert security.tls_ca_file == str(paths[0]) and security.tls_client_cert == str(paths[1])
    assert security.tls_client_key == str(paths[2])
