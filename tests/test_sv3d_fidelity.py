"""Fidelity of SV3D-p to the official sgm model: res-block GroupNorm eps, converter head counts.

Head counts cannot be read from shapes: the converter takes SV3D-p's (channels / 64,
CLIP width / 80) only where those divide, and otherwise must be told.

sgm builds every res-block norm (spatial `ResBlock` and temporal `time_stack`) with
`normalization()`, a GroupNorm of eps 1e-5; its attention blocks' GroupNorm (`Normalize`)
has 1e-6 and the output norm 1e-5. diffusers' spatio-temporal blocks use 1e-6 in the res
blocks of `CrossAttnDownBlockSpatioTemporal` and of every up block, which `SV3DUNetModel`
corrects without touching a weight.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel
from safetensors.torch import save_file
from typer.testing import CliRunner

from pipeline.cache_cli import app
from stages.errors import CheckpointConversionError, ConfigError
from stages.sv3d import build_tiny_sv3d, convert
from stages.sv3d.unet import SV3DUNetModel, res_block_norms
from tests.test_convert_sv3d import TINY_HEADS, TINY_UNET_HEADS, tiny_components

FIXTURE = Path(__file__).parent / "fixtures" / "sv3d_p_sgm_keys.json.gz"
SGM_RES_BLOCK_EPS = 1e-5
SGM_ATTENTION_NORM_EPS = 1e-6

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _official_state() -> dict[str, torch.Tensor]:
    """The official checkpoint's keys and shapes, on the meta device."""
    data = json.loads(gzip.decompress(FIXTURE.read_bytes()))
    return {k: torch.empty(shape, device="meta") for k, shape in data["sv3d_p"].items()}


def _official_unet_config() -> dict:
    """The UNet config the converter derives from the official checkpoint's key shapes."""
    return convert.infer_configs(_official_state()).unet


def _group_norms(unet: torch.nn.Module) -> dict[str, float]:
    """{name: eps} of every GroupNorm, found without `res_block_norms`."""
    return {n: m.eps for n, m in unet.named_modules() if isinstance(m, torch.nn.GroupNorm)}


def _is_attention_norm(name: str) -> bool:
    return re.search(r"\.attentions\.\d+\.norm$", name) is not None


def _is_res_block_norm(name: str) -> bool:
    return ".spatial_res_block.norm" in name or ".temporal_res_block.norm" in name


def _tiny_unet(**overrides) -> SV3DUNetModel:
    config = {k: v for k, v in build_tiny_sv3d().unet.config.items() if not k.startswith("_")}
    return SV3DUNetModel(**{**config, **overrides})


# --------------------------------------------------------------------------- GroupNorm eps


def test_tiny_model_res_block_norms_have_sgm_eps_and_the_others_keep_theirs():
    norms = _group_norms(build_tiny_sv3d().unet)
    res = {n: eps for n, eps in norms.items() if _is_res_block_norm(n)}
    # 1 + 1 res blocks per down level, 2 in the mid block, 2 per up level; 4 norms each.
    assert len(res) == (4 * 1 + 2 + 4 * 2) * 4
    assert set(res.values()) == {SGM_RES_BLOCK_EPS}
    assert {n for n, _ in res_block_norms(build_tiny_sv3d().unet)} == set(res)
    others = {n: eps for n, eps in norms.items() if n not in res}
    assert others.pop("conv_norm_out") == 1e-5
    assert others and all(_is_attention_norm(n) for n in others)
    assert set(others.values()) == {SGM_ATTENTION_NORM_EPS}


@pytest.mark.parametrize("source", ["sv3d_p_unet_config", "inferred from the official keys"])
def test_full_size_res_block_norms_have_sgm_eps(source):
    config = convert.sv3d_p_unet_config() if source == "sv3d_p_unet_config" else _official_unet_config()
    assert config["resnet_eps"] == SGM_RES_BLOCK_EPS
    norms = _group_norms(convert.build_empty("unet", config))
    res = [eps for n, eps in norms.items() if _is_res_block_norm(n)]
    assert len(res) == (4 * 2 + 2 + 4 * 3) * 4  # 22 SpatioTemporalResBlocks
    assert set(res) == {SGM_RES_BLOCK_EPS}
    attention = [eps for n, eps in norms.items() if _is_attention_norm(n)]
    assert len(attention) == 3 * 2 + 1 + 3 * 3 and set(attention) == {SGM_ATTENTION_NORM_EPS}


def test_plain_diffusers_blocks_have_the_wrong_eps_this_corrects():
    """Guards the premise: if diffusers fixes its eps, this fails and the override can go."""
    config = {
        k: v for k, v in convert.sv3d_p_unet_config().items() if k not in ("camera_embed_dims", "resnet_eps")
    }
    with torch.device("meta"):
        plain = UNetSpatioTemporalConditionModel(**config)
    wrong = [n for n, eps in _group_norms(plain).items() if _is_res_block_norm(n) and eps != 1e-5]
    assert len(wrong) == 72  # 6 cross-attention down + 12 up res blocks, 4 norms each


@pytest.mark.parametrize("config_of", ["tiny", "full size"])
def test_state_dict_keys_and_shapes_equal_the_diffusers_blocks(config_of):
    config = (
        {k: v for k, v in build_tiny_sv3d().unet.config.items() if not k.startswith("_")}
        if config_of == "tiny"
        else convert.sv3d_p_unet_config()
    )
    parent_config = {k: v for k, v in config.items() if k not in ("camera_embed_dims", "resnet_eps")}
    with torch.device("meta"):
        ours = SV3DUNetModel(**config).state_dict()
        theirs = UNetSpatioTemporalConditionModel(**parent_config).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_config_written_without_resnet_eps_loads_with_sgm_eps(tmp_path):
    build_tiny_sv3d().unet.save_pretrained(tmp_path / "unet")
    config_file = tmp_path / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    assert config.pop("resnet_eps") == SGM_RES_BLOCK_EPS
    config_file.write_text(json.dumps(config))  # as a model converted before the field existed

    loaded = SV3DUNetModel.from_pretrained(tmp_path / "unet", local_files_only=True)
    assert loaded.config.resnet_eps == SGM_RES_BLOCK_EPS
    assert {norm.eps for _, norm in res_block_norms(loaded)} == {SGM_RES_BLOCK_EPS}
    with torch.device("meta"):
        skeleton = SV3DUNetModel.from_config(SV3DUNetModel.load_config(tmp_path / "unet"))
    assert {norm.eps for _, norm in res_block_norms(skeleton)} == {SGM_RES_BLOCK_EPS}


def test_resnet_eps_from_the_config_reaches_the_computation():
    ours, other = _tiny_unet(), _tiny_unet(resnet_eps=1e-6)
    other.load_state_dict(ours.state_dict())
    assert {norm.eps for _, norm in res_block_norms(other)} == {1e-6}
    generator = torch.Generator().manual_seed(0)
    # Small activations, so a variance near eps: where the two eps values part ways.
    sample = 1e-3 * torch.randn(1, 2, 8, 8, 8, generator=generator)
    inputs = {
        "sample": sample,
        "timestep": 0.5,
        "encoder_hidden_states": torch.randn(1, 1, 32, generator=generator),
        "cond_aug": torch.full((1,), 1e-5),
        "polars_rad": torch.full((1, 2), 1.4),
        "azimuths_rad": torch.tensor([[0.0, 3.0]]),
    }
    with torch.no_grad():
        a, b = ours(**inputs).sample, other(**inputs).sample
    assert not torch.allclose(a, b, rtol=1e-4, atol=0)


@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), float("inf"), 1.0, True, "1e-5"])
def test_bad_resnet_eps_is_refused(eps):
    with pytest.raises(ConfigError, match="resnet_eps"):
        _tiny_unet(resnet_eps=eps)


# --------------------------------------------------------------------------- head counts


@pytest.fixture(scope="module")
def official():
    return _official_state()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An sgm file of the tiny models: widths 32 and 64, which SV3D-p's head sizes do not fit."""
    path = tmp_path_factory.mktemp("sgm") / "sv3d_tiny.safetensors"
    state = convert.diffusers_to_sgm(tiny_components())
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_official_layout_gives_sv3d_p_heads_with_or_without_explicit_counts(official):
    derived = convert.infer_configs(official)
    assert derived.unet["num_attention_heads"] == [5, 10, 20, 20]
    assert derived.image_encoder["num_attention_heads"] == 16
    given = convert.infer_configs(official, unet_heads=[5, 10, 20, 20], clip_heads=16)
    assert given == derived


def test_explicit_head_counts_are_honoured(official):
    per_level = convert.infer_configs(official, unet_heads=(4, 8, 16, 32), clip_heads=20)
    assert per_level.unet["num_attention_heads"] == [4, 8, 16, 32]
    assert per_level.image_encoder["num_attention_heads"] == 20
    one_for_all = convert.infer_configs(official, unet_heads=8)
    assert one_for_all.unet["num_attention_heads"] == [8, 8, 8, 8]
    model = convert.build_empty("unet", per_level.unet)
    assert model.down_blocks[1].attentions[0].transformer_blocks[0].attn1.heads == 8


def test_width_the_default_head_size_does_not_divide_is_refused(tiny_checkpoint):
    state = convert.SafetensorsFile(tiny_checkpoint)
    with pytest.raises(CheckpointConversionError) as info:
        convert.infer_configs(state)
    message = str(info.value)
    assert "input_blocks.1.0.out_layers.3.weight has width 32" in message and "--unet-heads" in message
    assert "\n" not in message
    with pytest.raises(CheckpointConversionError, match=r"conv1\.weight has width 32.*--clip-heads"):
        convert.infer_configs(state, unet_heads=TINY_UNET_HEADS)


@pytest.mark.parametrize(
    ("heads", "match"),
    [
        ({"unet_heads": (1, 3, 2, 2)}, r"--unet-heads\): 3 heads do not divide the unet level 1 width 64"),
        ({"unet_heads": (1, 2, 2)}, r"--unet-heads\) gives 3 counts for a unet of 4 levels"),
        ({"unet_heads": 0}, r"--unet-heads\) must be positive integers, got 0"),
        ({"unet_heads": (1, 2, 2, 2.0)}, r"--unet-heads\) must be positive integers, got 2\.0"),
        ({"unet_heads": TINY_UNET_HEADS, "clip_heads": 5}, r"--clip-heads\): 5 heads do not divide"),
        ({"unet_heads": TINY_UNET_HEADS, "clip_heads": -4}, r"--clip-heads\) must be positive"),
    ],
)
def test_bad_explicit_head_counts_are_refused_naming_the_option(tiny_checkpoint, heads, match):
    with pytest.raises(CheckpointConversionError, match=match):
        convert.infer_configs(convert.SafetensorsFile(tiny_checkpoint), **heads)


def test_clip_heads_without_an_image_tower_are_refused(tiny_checkpoint):
    state = convert.SafetensorsFile(tiny_checkpoint)
    no_clip = {k: v for k, v in state.shapes.items() if not k.startswith(convert.CLIP_PREFIX)}
    no_clip = {k: torch.empty(shape, device="meta") for k, shape in no_clip.items()}
    with pytest.raises(CheckpointConversionError, match=r"--clip-heads\) was given but .* no OpenCLIP"):
        convert.infer_configs(no_clip, unet_heads=TINY_UNET_HEADS, clip_heads=4)


def _cli(*args: str):
    return CliRunner().invoke(app, ["convert-sv3d", *args])


def test_cli_converts_with_explicit_heads_and_records_them(tiny_checkpoint, tmp_path):
    out = tmp_path / "model"
    result = _cli(str(tiny_checkpoint), str(out), "--unet-heads", "1,2,2,2", "--clip-heads", "4")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "unet" / "config.json").read_text())["num_attention_heads"] == [1, 2, 2, 2]
    assert json.loads((out / "image_encoder" / "config.json").read_text())["num_attention_heads"] == 4
    record = json.loads((out / "conversion.json").read_text())
    assert record["attention_heads"] == {"unet": [1, 2, 2, 2], "image_encoder": TINY_HEADS["clip_heads"]}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ((), "--unet-heads"),
        (("--unet-heads", "1,2,2,2"), "--clip-heads"),
        (("--unet-heads", "3", "--clip-heads", "4"), "3 heads do not divide the unet level 0 width 32"),
        (("--unet-heads", "1,two"), "--unet-heads takes one integer or comma-separated integers"),
    ],
)
def test_cli_refuses_ambiguous_or_bad_heads_in_one_line_with_exit_2(
    tiny_checkpoint, tmp_path, options, expected
):
    result = _cli(str(tiny_checkpoint), str(tmp_path / "model"), *options)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output
    assert "Traceback" not in result.output and not (tmp_path / "model").exists()
