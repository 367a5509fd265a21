"""sgm -> diffusers conversion of SV3D-p: round trips, bad inputs, and the real key layout.

`tests/fixtures/sv3d_p_sgm_keys.json.gz` lists every tensor (key -> shape) of the
official sgm model, generated (not copied) as follows. In a scratch virtualenv,
Stability-AI/generative-models at commit 0ad7de9a5cb53fd63d6d30a4f385485e72e08597 and
open_clip_torch 2.24.0 were imported; `sgm.util.instantiate_from_config` built the
whole `DiffusionEngine` of configs/inference/sv3d_p.yaml under `torch.device("meta")`
(ckpt_path removed; FrozenOpenCLIPImageEmbedder with version=None, init_device="meta"
so nothing was downloaded) and `engine.state_dict()` gave the 2212 keys under
"sv3d_p": 1428 `model.diffusion_model.*` (VideoUNet), 138 `first_stage_model.decoder.*`
(the image `Decoder` that config names), 248 `conditioner.embedders.1.encoder.*`
(AutoencoderKLModeOnly: encoder, decoder, quant_conv, post_quant_conv) and 398
`conditioner.embedders.0.open_clip.model.*` (ViT-H-14 with its text transformer
deleted; 392 `visual.*`). "video_decoder" holds the 266 keys of sgm's temporal
`VideoDecoder` built from the decoder_config of configs/inference/svd.yaml, prefixed
`first_stage_model.decoder.`, for the temporal-decoder layout. The open_clip source at
mlfoundations/open_clip 89fb801 gives the same 398 keys and shapes.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from stages.errors import CheckpointConversionError
from stages.sv3d import convert
from stages.sv3d.unet import SV3DUNetModel

FIXTURE = Path(__file__).parent / "fixtures" / "sv3d_p_sgm_keys.json.gz"
TARGET_CLASSES = {
    "unet": SV3DUNetModel,
    "vae": AutoencoderKLTemporalDecoder,
    "image_encoder": CLIPVisionModelWithProjection,
}


TINY_UNET_HEADS = (1, 2, 2, 2)
TINY_HEADS = {"unet_heads": TINY_UNET_HEADS, "clip_heads": 4}
"""The tiny models' heads: their widths (32, 64) are not SV3D-p's head sizes' multiples,
so the converter must be told (it refuses to guess)."""


def _randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Distinct random values everywhere, so a swapped key cannot go unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return module.eval()


def tiny_components(seed: int = 0) -> dict[str, torch.nn.Module]:
    unet = SV3DUNetModel(
        sample_size=8,
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        num_attention_heads=TINY_UNET_HEADS,
        camera_embed_dims=(16, 32, 32),
        projection_class_embeddings_input_dim=80,
        addition_time_embed_dim=16,
    )
    vae = AutoencoderKLTemporalDecoder(
        down_block_types=("DownEncoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=2,  # sgm's decoder mid-block always has 2 resnets
        latent_channels=4,
    )
    clip = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=TINY_HEADS["clip_heads"],
            image_size=32,
            patch_size=8,
            projection_dim=32,
        )
    )
    return {
        "unet": _randomise(unet, seed),
        "vae": _randomise(vae, seed + 1),
        "image_encoder": _randomise(clip, seed + 2),
    }


def _text_tower_leftovers() -> dict[str, torch.Tensor]:
    prefix = "conditioner.embedders.0.open_clip.model."
    return {prefix + "logit_scale": torch.tensor(4.6), prefix + "text_projection": torch.ones(4, 4)}


def _write(tmp_path: Path, state: dict[str, torch.Tensor], name: str = "sv3d_p.safetensors") -> Path:
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def tiny():
    components = tiny_components()
    state = convert.diffusers_to_sgm(components)
    state.update(_text_tower_leftovers())
    return components, state


def _assert_same_tensors(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor], what: str):
    assert set(expected) == set(actual), f"{what}: key sets differ"
    for key, value in expected.items():
        assert torch.equal(value, actual[key]), f"{what}: {key} differs"


def test_round_trip_through_one_sgm_file_restores_every_tensor(tiny, tmp_path):
    components, state = tiny
    checkpoint = _write(tmp_path, state)
    messages: list[str] = []
    out = convert.convert_sv3d_checkpoint(
        checkpoint, tmp_path / "model", dtype=None, progress=messages.append, **TINY_HEADS
    )

    assert sorted(p.name for p in out.iterdir()) == [
        "conversion.json",
        "feature_extractor",
        "image_encoder",
        "model_index.json",
        "scheduler",
        "unet",
        "vae",
    ]
    for name, cls in TARGET_CLASSES.items():
        loaded = cls.from_pretrained(out / name, local_files_only=True)
        _assert_same_tensors(components[name].state_dict(), loaded.state_dict(), name)
    # The given head counts, not 64- or 80-wide guesses, are in the configs and the record.
    assert SV3DUNetModel.load_config(out / "unet")["num_attention_heads"] == list(TINY_UNET_HEADS)
    assert CLIPVisionConfig.from_pretrained(out / "image_encoder").num_attention_heads == 4
    record = json.loads((out / "conversion.json").read_text())
    assert record["attention_heads"] == {"unet": list(TINY_UNET_HEADS), "image_encoder": 4}
    assert set(record["attention_heads_source"].values()) == {"given"}
    assert record["source_file"] == "sv3d_p.safetensors"
    assert record["source_bytes"] == checkpoint.stat().st_size
    assert record["converter_version"] == convert.CONVERTER_VERSION
    assert len(record["source_header_sha256"]) == 64 and record["ignored_tensors"] == 2
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "SV3DPipeline" and index["unet"] == [
        "stages.sv3d.unet",
        "SV3DUNetModel",
    ]
    assert index["vae"] == ["diffusers", "AutoencoderKLTemporalDecoder"]
    assert messages and messages[-1].startswith("done")


def test_converted_directory_loads_as_a_pipeline_in_float16(tiny, tmp_path):
    from stages.sv3d.loading import load_sv3d_pipeline

    components, state = tiny
    out = convert.convert_sv3d_checkpoint(_write(tmp_path, state), tmp_path / "model", **TINY_HEADS)
    unet = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in unet.values()} == {torch.float16}
    original = components["unet"].state_dict()
    assert all(torch.equal(original[k].half(), v) for k, v in unet.items())
    pipe = load_sv3d_pipeline(out, "cpu", "float32", attention="sdpa")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.feature_extractor.crop_size == {"height": 224, "width": 224}


def test_sgm_to_diffusers_inverts_diffusers_to_sgm_in_memory(tiny):
    components, state = tiny
    converted = convert.sgm_to_diffusers(state, **TINY_HEADS)
    for name, module in components.items():
        _assert_same_tensors(module.state_dict(), converted[name], name)


def test_image_decoder_gets_switched_off_temporal_layers_and_decodes_per_frame(tiny):
    components, _ = tiny
    state = convert.diffusers_to_sgm(components, temporal_decoder=False)
    assert not any(
        ".time_stack." in k or "mix_factor" in k for k in state if k.startswith("first_stage_model")
    )
    configs = convert.infer_configs(state, **TINY_HEADS)
    assert not configs.temporal_decoder
    vae_state = convert.sgm_to_diffusers(state, **TINY_HEADS)["vae"]
    original = components["vae"].state_dict()
    for key, value in vae_state.items():
        if "temporal_res_block" in key or "time_mixer" in key or "time_conv_out" in key:
            continue
        assert torch.equal(value, original[key]), key
    assert vae_state["decoder.up_blocks.0.resnets.0.time_mixer.mix_factor"].item() == -1.0e4
    vae = AutoencoderKLTemporalDecoder(**configs.vae)
    vae.load_state_dict(vae_state)

    # The same spatial weights in diffusers' image VAE must decode identically.
    image_vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=2,
        latent_channels=4,
        use_post_quant_conv=False,
    )
    image_state = {
        k.replace(".spatial_res_block", ""): v
        for k, v in vae_state.items()
        if not ("temporal_res_block" in k or "time_mixer" in k or "time_conv_out" in k)
    }
    image_vae.load_state_dict(image_state)
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        frames = vae.eval().decode(latents, num_frames=3).sample
        reference = image_vae.eval().decode(latents).sample
    torch.testing.assert_close(frames, reference, rtol=0, atol=1e-6)


def test_missing_key_is_named(tiny, tmp_path):
    _, state = tiny
    key = "model.diffusion_model.input_blocks.1.0.time_stack.in_layers.2.weight"
    broken = {k: v for k, v in state.items() if k != key}
    with pytest.raises(CheckpointConversionError, match="1 missing key") as info:
        convert.convert_sv3d_checkpoint(_write(tmp_path, broken), tmp_path / "model", **TINY_HEADS)
    assert key in str(info.value)
    assert not (tmp_path / "model").exists()


def test_unknown_key_is_named(tiny, tmp_path):
    _, state = tiny
    extra = {**state, "model.diffusion_model.extra_head.weight": torch.zeros(2)}
    with pytest.raises(CheckpointConversionError, match=r"1 unmapped key.*extra_head\.weight"):
        convert.convert_sv3d_checkpoint(_write(tmp_path, extra), tmp_path / "model", **TINY_HEADS)


def test_wrong_shape_names_target_and_source_keys(tiny, tmp_path):
    _, state = tiny
    key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    bad = {**state, key: torch.zeros(32, 32, 1, 1)}
    with pytest.raises(CheckpointConversionError, match="expects shape") as info:
        convert.convert_sv3d_checkpoint(_write(tmp_path, bad), tmp_path / "model", **TINY_HEADS)
    message = str(info.value)
    assert "down_blocks.0.resnets.0.spatial_res_block.conv1.weight" in message and key in message
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize(
    "content", [b"", b"not a checkpoint at all", b"\x08\x00\x00\x00\x00\x00\x00\x00{oops!!}"]
)
def test_non_safetensors_file_is_named(tmp_path, content):
    path = tmp_path / "sv3d_p.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointConversionError, match="not a safetensors file") as info:
        convert.convert_sv3d_checkpoint(path, tmp_path / "model")
    assert str(path) in str(info.value)


def test_missing_file_and_non_empty_out_dir_are_refused(tiny, tmp_path):
    with pytest.raises(CheckpointConversionError, match="does not exist"):
        convert.convert_sv3d_checkpoint(tmp_path / "absent.safetensors", tmp_path / "model")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "keep.txt").write_text("x")
    with pytest.raises(CheckpointConversionError, match="not empty"):
        convert.convert_sv3d_checkpoint(_write(tmp_path, tiny[1]), tmp_path / "model", **TINY_HEADS)


def test_checkpoint_without_clip_needs_and_copies_an_image_encoder_dir(tiny, tmp_path):
    components, state = tiny
    no_clip = {k: v for k, v in state.items() if not k.startswith("conditioner.embedders.0.")}
    checkpoint = _write(tmp_path, no_clip)
    with pytest.raises(CheckpointConversionError, match="image_encoder_dir"):
        convert.convert_sv3d_checkpoint(checkpoint, tmp_path / "model", unet_heads=TINY_UNET_HEADS)
    clip_dir = tmp_path / "clip"
    components["image_encoder"].save_pretrained(clip_dir)
    out = convert.convert_sv3d_checkpoint(
        checkpoint, tmp_path / "model", image_encoder_dir=clip_dir, unet_heads=TINY_UNET_HEADS
    )
    loaded = CLIPVisionModelWithProjection.from_pretrained(out / "image_encoder", local_files_only=True)
    _assert_same_tensors(components["image_encoder"].state_dict(), loaded.state_dict(), "image_encoder")
    with pytest.raises(CheckpointConversionError, match="has its own OpenCLIP"):
        convert.convert_sv3d_checkpoint(
            _write(tmp_path, state), tmp_path / "m2", image_encoder_dir=clip_dir, **TINY_HEADS
        )


# ----------------------------------------------------------------- the official layout


def _official(decoder: str = "image") -> dict[str, torch.Tensor]:
    data = json.loads(gzip.decompress(FIXTURE.read_bytes()))
    keys = dict(data["sv3d_p"])
    if decoder == "video":
        keys = {k: v for k, v in keys.items() if not k.startswith("first_stage_model.")}
        keys.update(data["video_decoder"]["keys"])
    return {k: torch.empty(shape, device="meta") for k, shape in keys.items()}


def _full_size_models() -> dict[str, torch.nn.Module]:
    return {
        "unet": convert.build_empty("unet", convert.sv3d_p_unet_config()),
        "vae": convert.build_empty("vae", convert.sv3d_p_vae_config()),
        "image_encoder": convert.build_empty("image_encoder", convert.sv3d_p_image_encoder_config()),
    }


@pytest.fixture(scope="module")
def full_size():
    return _full_size_models()


def test_fixture_describes_the_official_sv3d_p_layout():
    state = _official()
    assert len(state) == 2212
    assert sum(k.startswith("model.diffusion_model.") for k in state) == 1428
    assert sum(k.startswith("conditioner.embedders.0.open_clip.model.visual.") for k in state) == 392
    configs = convert.infer_configs(state)
    assert configs.unet == convert.sv3d_p_unet_config()
    assert configs.vae == convert.sv3d_p_vae_config()
    assert configs.image_encoder == convert.sv3d_p_image_encoder_config()
    assert not configs.temporal_decoder


@pytest.mark.parametrize("decoder", ["image", "video"])
def test_official_keys_convert_to_exactly_the_full_size_models(full_size, decoder):
    state = _official(decoder)
    converted = convert.sgm_to_diffusers(state)
    assert convert.infer_configs(state).temporal_decoder == (decoder == "video")
    for name, model in full_size.items():
        convert.check_shapes(name, converted[name], model)
    ignored = convert.ignored_keys(state)
    assert len(ignored) == 6 + 138 + 2  # text-tower leftovers, conditioning AE decoder + post_quant_conv
    assert not any(k.startswith(("model.", "first_stage_model.")) for k in ignored)


@pytest.mark.parametrize("decoder", ["image", "video"])
def test_full_size_models_map_back_to_exactly_the_official_keys(full_size, decoder):
    state = _official(decoder)
    back = convert.diffusers_to_sgm(full_size, temporal_decoder=decoder == "video")
    ignored = set(convert.ignored_keys(state))
    expected = {k: tuple(v.shape) for k, v in state.items() if k not in ignored}
    assert {k: tuple(v.shape) for k, v in back.items()} == expected
