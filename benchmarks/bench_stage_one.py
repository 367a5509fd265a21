"""Stage-one benchmarks: throughput, overhead, bytes per sample, codecs, GPU.

Run by `nox -s bench` as

    python benchmarks/bench_stage_one.py [--out bench-results/stage_one.json]
        [--images N] [--frames F] [--steps S]

Sections 1-4 run on the CPU with the tiny random-weight SV3D-p (`save_tiny_sv3d`, 64 px)
on copies of examples/images (each copy has its own sample id, hence its own noise).
Section 5 runs only where CUDA is available: the full-size random-weight SV3D-p at
576 px. Every number, the config, the machine and the date go into the JSON file.
The defaults (12 images, 8 frames, 8 steps) finish in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numcodecs  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_common import (  # noqa: E402
    machine_info,
    print_notes,
    print_table,
    time_cluster_start,
    timed,
    write_report,
)
from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor2_0  # noqa: E402
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection  # noqa: E402

from cache_schema import CacheLayout, CacheStore, FeatureLayerSpec  # noqa: E402
from cache_schema.codecs import compressors_for  # noqa: E402
from pipeline.generate import GenerateJob, run_generate  # noqa: E402
from pipeline.runner import RunSummary  # noqa: E402
from stages.config import GenerationConfig, OrbitConfig  # noqa: E402
from stages.images import PreparedImage, load_image, prepare_image  # noqa: E402
from stages.sources import list_image_sources, sample_seed  # noqa: E402
from stages.sv3d.backend import SV3DBackend  # noqa: E402
from stages.sv3d.convert import (  # noqa: E402
    SCHEDULER_CONFIG,
    feature_extractor_config,
    sv3d_p_image_encoder_config,
    sv3d_p_unet_config,
    sv3d_p_vae_config,
)
from stages.sv3d.loading import load_sv3d_pipeline  # noqa: E402
from stages.sv3d.pipeline import CLIPImageProcessor, SV3DPipeline  # noqa: E402
from stages.sv3d.tiny import TINY_RESOLUTION, save_tiny_sv3d  # noqa: E402
from stages.sv3d.unet import SV3DUNetModel  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_IMAGES = REPO / "examples" / "images"
FULL_RESOLUTION = 576
OVERHEAD_TARGET = 0.10
THREADS = 1
"""Torch intra-op threads everywhere (GenerateJob's default), so runs are comparable."""


# --------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class Setup:
    """What every CPU section shares."""

    model: Path
    images: Path
    work: Path
    config: GenerationConfig
    samples_per_shard: int
    num_images: int

    def job(self, out_name: str, **overrides: Any) -> GenerateJob:
        fields: dict[str, Any] = dict(
            images=self.images,
            model=self.model,
            out=self.work / out_name,
            config=self.config,
            samples_per_shard=self.samples_per_shard,
            threads=THREADS,
            device="cpu",
            progress=False,
        )
        fields.update(overrides)
        return GenerateJob(**fields)


def copy_example_images(folder: Path, count: int) -> Path:
    """`count` copies of the example images under distinct names (distinct sample ids)."""
    originals = sorted(p for p in EXAMPLE_IMAGES.iterdir() if p.is_file())
    if not originals:
        raise FileNotFoundError(f"no example images in {EXAMPLE_IMAGES}")
    folder.mkdir(parents=True)
    for i in range(count):
        source = originals[i % len(originals)]
        shutil.copyfile(source, folder / f"copy{i // len(originals):02d}_{source.name}")
    return folder


def stage_one_machine() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return machine_info(
        torch=torch.__version__,
        numcodecs=numcodecs.__version__,
        cuda_available=cuda,
        device=torch.cuda.get_device_name(0) if cuda else "cpu",
        torch_threads=THREADS,
    )


# --------------------------------------------------------------------------- 1. throughput


def run_row(label: str, summary: RunSummary, wall: float, cluster_s: float | None) -> dict[str, Any]:
    if summary.errors or summary.failed:
        raise RuntimeError(f"{label}: run had errors {summary.errors} / failures {summary.failed}")
    return {
        "run": label,
        "samples": summary.done,
        "wall_s": wall,
        "samples_per_s_wall": summary.done / wall,
        "summary_seconds": summary.seconds,
        "summary_s_per_sample": summary.seconds / summary.done,
        "cluster_start_stop_s": cluster_s,
    }


def bench_throughput(setup: Setup) -> dict[str, Any]:
    rows = []
    summary, wall = timed(lambda: run_generate(setup.job("local.zarr")))
    rows.append(run_row("in-process, no dask (cold: loads model)", summary, wall, None))
    for workers in (1, 2):
        cluster_s = time_cluster_start(workers)
        summary, wall = timed(lambda w=workers: run_generate(setup.job(f"dask{w}.zarr", workers=w)))
        rows.append(run_row(f"dask LocalCluster workers={workers}", summary, wall, cluster_s))
    print_table(
        "1. Throughput of run_generate (CPU, tiny model, threads=1 per process)",
        [
            "run",
            "samples",
            "wall s",
            "samples/s",
            "summary s",
            "summary s/sample",
            "bare cluster start+stop s",
        ],
        [
            [
                r["run"],
                r["samples"],
                r["wall_s"],
                r["samples_per_s_wall"],
                r["summary_seconds"],
                r["summary_s_per_sample"],
                r["cluster_start_stop_s"],
            ]
            for r in rows
        ],
    )
    notes = [
        "wall = the whole run_generate call (metadata, store creation, cluster start, model "
        "load in every worker, generation, writing); samples/s = samples / wall",
        "summary s = RunSummary.seconds: from the first shard submitted to the last written; "
        "for dask it still includes cluster start and per-worker model load",
        "bare cluster start+stop = a LocalCluster of that size started and closed with no "
        "work, measured separately",
        f"{setup.num_images} samples in shards of {setup.samples_per_shard}: a short run, so "
        "fixed start-up costs weigh heavily; 2 workers on 2 cores leave no core for the "
        "scheduler",
    ]
    print_notes(notes)
    return {"rows": rows, "notes": notes}


# --------------------------------------------------------------------------- 2. overhead


def prepare_all(setup: Setup, size: int) -> list[tuple[str, PreparedImage]]:
    cfg = setup.config
    out = []
    for source in list_image_sources(setup.images):
        loaded = load_image(source.path, cfg.background_threshold, cfg.max_image_pixels)
        out.append((source.sample_id, prepare_image(loaded, size, cfg.object_fraction)))
    return out


def time_bare_loop(
    pipe: SV3DPipeline,
    backend: SV3DBackend,
    prepared: list[tuple[str, PreparedImage]],
    config: GenerationConfig,
) -> float:
    """Seconds of the pipeline calls alone: no capture, no masks, nothing written."""
    tic = time.perf_counter()
    for sample_id, image in prepared:
        pixels = torch.from_numpy(image.image).float().div(127.5).sub(1.0)[None]
        generator = torch.Generator(device="cpu").manual_seed(sample_seed(config.seed, sample_id))
        pipe(
            pixels,
            backend.polars_rad,
            backend.azimuths_rad,
            generator,
            num_inference_steps=config.num_inference_steps,
            min_guidance_scale=config.min_guidance_scale,
            max_guidance_scale=config.max_guidance_scale,
            cond_aug=config.cond_aug,
            capture_step=None,
            decode_chunk_size=config.decode_chunk_size,
        )
    return time.perf_counter() - tic


def bench_overhead(setup: Setup) -> dict[str, Any]:
    torch.set_num_threads(THREADS)
    pipe = load_sv3d_pipeline(setup.model, "cpu", setup.config.model_dtype)
    backend = SV3DBackend(pipe, setup.config, torch.device("cpu"))
    prepared = prepare_all(setup, backend.image_size())

    bare, full_wall, full_summary = [], [], []
    for attempt in range(2):  # interleaved, so drift hits both alike
        bare.append(time_bare_loop(pipe, backend, prepared, setup.config))
        summary, wall = timed(lambda a=attempt: run_generate(setup.job(f"overhead{a}.zarr")))
        full_wall.append(wall)
        full_summary.append(summary.seconds)
    best_bare, best_wall, best_loop = min(bare), min(full_wall), min(full_summary)
    result = {
        "samples": len(prepared),
        "bare_loop_s": bare,
        "run_generate_wall_s": full_wall,
        "run_generate_summary_s": full_summary,
        "best_bare_loop_s": best_bare,
        "best_run_generate_wall_s": best_wall,
        "best_run_generate_summary_s": best_loop,
        "overhead_wall": best_wall / best_bare - 1.0,
        "overhead_summary": best_loop / best_bare - 1.0,
        "target": OVERHEAD_TARGET,
    }
    print_table(
        "2. Overhead of capture + masks + cameras + writing (faster of 2 runs each)",
        ["measure", "seconds", "s/sample", "overhead vs bare"],
        [
            [
                "bare pipeline loop (capture_step=None, nothing written)",
                best_bare,
                best_bare / len(prepared),
                None,
            ],
            [
                "run_generate in-process, summary s (shard loop)",
                best_loop,
                best_loop / len(prepared),
                f"{result['overhead_summary']:+.1%}",
            ],
            [
                "run_generate in-process, wall (+ metadata, store creation)",
                best_wall,
                best_wall / len(prepared),
                f"{result['overhead_wall']:+.1%}",
            ],
        ],
    )
    met = "met" if result["overhead_wall"] < OVERHEAD_TARGET else "NOT met"
    notes = [
        f"target overhead < {OVERHEAD_TARGET:.0%}: {met} (wall)",
        "run_generate also decodes and prepares every image; the bare loop gets them "
        "prepared, so the overhead is an upper bound on capture + masks + cameras + writing",
        "the tiny model makes generation cheap, so the same fixed costs are a far smaller share at full size",
        f"all runs: {[round(b, 2) for b in bare]} s bare, {[round(w, 2) for w in full_wall]} s "
        "run_generate wall",
    ]
    print_notes(notes)
    result["notes"] = notes
    return result


# --------------------------------------------------------------------------- 3. bytes per sample


def array_bytes_on_disk(store_path: Path, name: str) -> int:
    """Bytes of an array's chunk/shard files (its zarr.json excluded)."""
    folder = store_path / name
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "zarr.json")


def uncompressed_bytes(shape: Sequence[int], dtype: str) -> int:
    return int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize


def bench_bytes_tiny(store_path: Path) -> dict[str, Any]:
    store = CacheStore.open(store_path)
    samples = int(np.count_nonzero(store.statuses() == 1))
    specs = store.layout.arrays()
    rows = []
    for name in store.data_array_names():
        spec = specs[name]
        stored = array_bytes_on_disk(store_path, name) / samples
        raw = uncompressed_bytes(spec.shape, spec.dtype)
        rows.append(
            {
                "array": name,
                "dtype": spec.dtype,
                "shape": list(spec.shape[1:]),
                "stored_bytes": stored,
                "uncompressed_bytes": raw,
                "ratio": raw / stored,
            }
        )
    total_stored = sum(r["stored_bytes"] for r in rows)
    total_raw = sum(r["uncompressed_bytes"] for r in rows)
    everything = store.bytes_on_disk() / samples
    print_table(
        f"3a. Bytes per sample, measured on the tiny store ({samples} samples, "
        f"{store.layout.image_size} px, K={store.layout.num_views})",
        ["array", "dtype", "shape", "stored B", "uncompressed B", "ratio"],
        [
            [
                r["array"],
                r["dtype"],
                "x".join(map(str, r["shape"])),
                r["stored_bytes"],
                r["uncompressed_bytes"],
                r["ratio"],
            ]
            for r in rows
        ]
        + [
            ["total data arrays", "", "", total_stored, total_raw, total_raw / total_stored],
            ["whole store incl. ids, status, metadata", "", "", everything, None, None],
        ],
    )
    return {
        "samples": samples,
        "rows": rows,
        "total_stored_bytes": total_stored,
        "total_uncompressed_bytes": total_raw,
        "whole_store_bytes_per_sample": everything,
    }


def full_size_feature_layers(resolution: int) -> tuple[FeatureLayerSpec, ...]:
    """Every up-block of the full-size SV3D-p UNet, from a meta-device skeleton."""
    with torch.device("meta"):
        unet = SV3DUNetModel(**sv3d_p_unet_config())
        vae = AutoencoderKLTemporalDecoder(**sv3d_p_vae_config())
    pipe = SV3DPipeline(unet, vae, None, None, EulerDiscreteScheduler(**SCHEDULER_CONFIG))
    shapes = pipe.feature_layer_shapes(resolution)
    return tuple(FeatureLayerSpec(name, *shapes[name]) for name in pipe.feature_layer_names)


def bench_bytes_full(tiny: dict[str, Any]) -> dict[str, Any]:
    num_views = OrbitConfig().num_kept_views
    layout = CacheLayout(
        num_samples=1,
        image_size=FULL_RESOLUTION,
        num_views=num_views,
        feature_layers=full_size_feature_layers(FULL_RESOLUTION),
        feature_dtype="float16",
    )
    measured = {r["array"]: r["ratio"] for r in tiny["rows"]}
    # Pixel arrays get the tiny store's ratio of the same array; features and the small
    # arrays are counted uncompressed (tiny features say nothing about real ones).
    estimated_from = {
        "views": "views",
        "input_image": "input_image",
        "view_masks": "view_masks",
        "input_mask": "input_mask",
    }
    rows = []
    for name, spec in layout.arrays().items():
        if name in ("sample_id", "status", "failure_reason"):
            continue
        raw = uncompressed_bytes(spec.shape, spec.dtype)
        ratio = measured.get(estimated_from.get(name, ""), 1.0)
        rows.append(
            {
                "array": name,
                "dtype": spec.dtype,
                "shape": list(spec.shape[1:]),
                "uncompressed_bytes": raw,
                "estimate_ratio": ratio,
                "estimated_bytes": raw / ratio,
            }
        )
    total_raw = sum(r["uncompressed_bytes"] for r in rows)
    total_est = sum(r["estimated_bytes"] for r in rows)
    features_raw = sum(r["uncompressed_bytes"] for r in rows if r["array"].startswith("features/"))
    print_table(
        f"3b. Bytes per sample at FULL SV3D-p size ({FULL_RESOLUTION} px, K={num_views}, "
        "every up-block, features float16) - computed from shapes",
        ["array", "dtype", "shape", "uncompressed B", "ESTIMATE ratio", "ESTIMATE B"],
        [
            [
                r["array"],
                r["dtype"],
                "x".join(map(str, r["shape"])),
                r["uncompressed_bytes"],
                r["estimate_ratio"],
                r["estimated_bytes"],
            ]
            for r in rows
        ]
        + [["total", "", "", total_raw, total_raw / total_est, total_est]],
    )
    notes = [
        f"uncompressed: {total_raw / 1e6:.1f} MB/sample, of which features "
        f"{features_raw / 1e6:.1f} MB ({features_raw / total_raw:.0%}); "
        f"100k samples = {total_raw * 1e5 / 1e12:.2f} TB",
        "ESTIMATE column: the tiny store's measured ratio of each pixel array (views, masks, "
        "input) applied to the full size; features and small arrays counted uncompressed. "
        "Tiny generated views are noise-like and 64 px, so real views (smooth, mostly white) "
        "will compress better than this estimate",
    ]
    print_notes(notes)
    return {
        "resolution": FULL_RESOLUTION,
        "num_views": num_views,
        "rows": rows,
        "total_uncompressed_bytes": total_raw,
        "total_estimated_bytes": total_est,
        "features_uncompressed_bytes": features_raw,
        "notes": notes,
    }


# --------------------------------------------------------------------------- 4. codecs


@dataclass(frozen=True)
class CodecCandidate:
    label: str
    codec: Any
    """A numcodecs codec, or None for no compression."""
    key: tuple
    """(family, cname, level, shuffle), comparable with `store_codec_key`."""


def codec_candidates() -> list[CodecCandidate]:
    blosc = numcodecs.Blosc
    return [
        CodecCandidate("none", None, ("none", None, None, None)),
        *(
            CodecCandidate(f"zstd {lvl}", numcodecs.Zstd(level=lvl), ("zstd", None, lvl, None))
            for lvl in (1, 3, 9)
        ),
        CodecCandidate(
            "blosc lz4(5) + shuffle",
            blosc(cname="lz4", clevel=5, shuffle=blosc.SHUFFLE),
            ("blosc", "lz4", 5, "shuffle"),
        ),
        CodecCandidate(
            "blosc zstd(3) + shuffle",
            blosc(cname="zstd", clevel=3, shuffle=blosc.SHUFFLE),
            ("blosc", "zstd", 3, "shuffle"),
        ),
        CodecCandidate(
            "blosc zstd(3) no shuffle",
            blosc(cname="zstd", clevel=3, shuffle=blosc.NOSHUFFLE),
            ("blosc", "zstd", 3, "noshuffle"),
        ),
    ]


def store_codec_key(kind: str) -> tuple:
    """The first compressor `cache_schema.codecs.compressors_for(kind)` uses, as a key."""
    codec = compressors_for(kind)[0]
    name = type(codec).__name__
    if name == "ZstdCodec":
        return ("zstd", None, codec.level, None)
    if name == "BloscCodec":
        return ("blosc", codec.cname.value, codec.clevel, codec.shuffle.value)
    return (name, None, None, None)


def _throughput_mb_s(
    fn: Callable[[Any], Any], items: Sequence[Any], raw_bytes: int, min_seconds: float = 0.25
) -> float:
    rounds, tic = 0, time.perf_counter()
    while True:
        for item in items:
            fn(item)
        rounds += 1
        elapsed = time.perf_counter() - tic
        if elapsed >= min_seconds:
            return raw_bytes * rounds / elapsed / 1e6


def measure_codecs(chunks: Sequence[np.ndarray], samples: int, used: tuple) -> list[dict[str, Any]]:
    """chunks: one contiguous array per sample and array (each feature layer is its own
    array in the store, so its own chunk); `used` is `store_codec_key` of the family."""
    raw = sum(c.nbytes for c in chunks)
    rows = []
    for cand in codec_candidates():
        if cand.codec is None:
            encoded_bytes, enc, dec = raw, None, None
        else:
            encoded = [cand.codec.encode(c) for c in chunks]
            encoded_bytes = sum(len(e) for e in encoded)
            enc = _throughput_mb_s(cand.codec.encode, chunks, raw)
            dec = _throughput_mb_s(cand.codec.decode, encoded, raw)
        rows.append(
            {
                "codec": cand.label,
                "used_by_cache_schema": cand.key == used,
                "bytes": encoded_bytes,
                "ratio": raw / encoded_bytes,
                "bytes_per_sample": encoded_bytes / samples,
                "encode_mb_s": enc,
                "decode_mb_s": dec,
                "raw_bytes": raw,
                "samples": samples,
            }
        )
    return rows


def bench_codecs(store_path: Path) -> dict[str, Any]:
    store = CacheStore.open(store_path)
    done = np.flatnonzero(store.statuses() == 1)
    views = np.asarray(store.array("views")[:])[done]
    view_chunks = [np.ascontiguousarray(v) for v in views]
    feature_names = [n for n in store.data_array_names() if n.startswith("features/")]
    feature_chunks = []
    for name in feature_names:
        values = np.asarray(store.array(name)[:])[done]
        feature_chunks += [np.ascontiguousarray(v) for v in values]

    previous_threads = numcodecs.blosc.set_nthreads(1)
    try:
        families = {
            "views (uint8)": (view_chunks, store_codec_key("image")),
            f"features (float16, {len(feature_names)} layers)": (feature_chunks, store_codec_key("float")),
        }
        result: dict[str, Any] = {}
        for family, (chunks, used) in families.items():
            rows = measure_codecs(chunks, len(done), used)
            result[family] = rows
            print_table(
                f"4. Codecs for {family}, one chunk per sample (and layer), tiny store",
                ["codec", "B/sample", "ratio", "encode MB/s", "decode MB/s", "in store"],
                [
                    [
                        r["codec"],
                        r["bytes_per_sample"],
                        r["ratio"],
                        r["encode_mb_s"],
                        r["decode_mb_s"],
                        "<- used" if r["used_by_cache_schema"] else "",
                    ]
                    for r in rows
                ],
            )
    finally:
        numcodecs.blosc.set_nthreads(previous_threads)
    notes = [
        "numcodecs directly on the raw per-sample chunks, single-threaded blosc; the store "
        "adds a 4-byte CRC32C per chunk and a small shard index",
        "'<- used' marks what cache_schema/codecs.py compressors_for() picks",
        "NOT representative: tiny random-weight features (and noise-like 64 px views) "
        "compress differently from real SV3D-p features and renders; rerun on a store made "
        "with the real model before changing codecs",
    ]
    print_notes(notes)
    result["notes"] = notes
    return result


# --------------------------------------------------------------------------- 5. GPU


def build_random_sv3d(
    device: torch.device,
    dtype: torch.dtype,
    unet_config: dict[str, Any],
    vae_config: dict[str, Any],
    image_encoder_config: dict[str, Any],
    seed: int = 0,
) -> SV3DPipeline:
    """SV3D-p of the given sizes with random weights, initialised directly on `device`."""
    cuda_devices = list(range(torch.cuda.device_count()))
    with torch.random.fork_rng(devices=cuda_devices), torch.device(device):
        torch.manual_seed(seed)
        unet = SV3DUNetModel.from_config(unet_config)
        vae = AutoencoderKLTemporalDecoder.from_config(vae_config)
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**image_encoder_config))
    pipe = SV3DPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        image_encoder=image_encoder.eval(),
        feature_extractor=CLIPImageProcessor(
            **feature_extractor_config(image_encoder_config.get("image_size", 224))
        ),
        scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG),
    )
    return pipe.to(device=device, dtype=dtype)


def set_attention(pipe: SV3DPipeline, attention: str) -> None:
    """As load_sv3d_pipeline does: xformers or PyTorch SDPA in the UNet and the VAE."""
    for model in (pipe.unet, pipe.vae):
        if attention == "xformers":
            model.enable_xformers_memory_efficient_attention()
        else:
            model.set_attn_processor(AttnProcessor2_0())
    pipe.attention_backend = attention


def time_generation(
    pipe: SV3DPipeline,
    config: GenerationConfig,
    prepared: PreparedImage,
    images: int,
    device: torch.device,
) -> dict[str, Any]:
    """Seconds per image of SV3DBackend.generate (with feature capture), after a 2-step warm-up."""
    backend = SV3DBackend(pipe, config, device)
    cuda = device.type == "cuda"
    warm = torch.from_numpy(prepared.image).float().div(127.5).sub(1.0)[None]
    pipe(
        warm,
        backend.polars_rad,
        backend.azimuths_rad,
        torch.Generator().manual_seed(0),
        num_inference_steps=2,
        decode_chunk_size=config.decode_chunk_size,
    )
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for i in range(images):
        tic = time.perf_counter()
        backend.generate(prepared, seed=i)
        if cuda:
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - tic)
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    return {"seconds": seconds, "s_per_image": float(np.mean(seconds)), "max_memory_allocated_bytes": peak}


def available_attention_backends() -> list[str]:
    backends = ["sdpa"]
    try:
        import xformers  # noqa: F401
    except Exception:  # a broken build fails in many ways; all mean "not available"
        return backends
    return backends + ["xformers"]


def bench_gpu(args: argparse.Namespace) -> dict[str, Any]:
    title = (
        f"5. GPU: full-size random-weight SV3D-p fp16, {FULL_RESOLUTION} px, "
        f"{args.gpu_frames} frames, {args.gpu_steps} steps"
    )
    if not torch.cuda.is_available():
        print(f"\n== {title}\nskipped: no CUDA")
        return {"skipped": "no CUDA"}
    device = torch.device("cuda")
    pipe = build_random_sv3d(
        device, torch.float16, sv3d_p_unet_config(), sv3d_p_vae_config(), sv3d_p_image_encoder_config()
    )
    config = GenerationConfig(
        orbit=OrbitConfig(num_frames=args.gpu_frames),
        resolution=FULL_RESOLUTION,
        num_inference_steps=args.gpu_steps,
        model_dtype="float16",
    )
    source = sorted(EXAMPLE_IMAGES.iterdir())[0]
    loaded = load_image(source, config.background_threshold, config.max_image_pixels)
    prepared = prepare_image(loaded, FULL_RESOLUTION, config.object_fraction)
    rows = []
    for attention in available_attention_backends():
        try:
            set_attention(pipe, attention)
            timing = time_generation(pipe, config, prepared, args.gpu_images, device)
            rows.append({"attention": attention, **timing})
        except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
            rows.append({"attention": attention, "error": f"{type(err).__name__}: {err}"})
        torch.cuda.empty_cache()
    print_table(
        title,
        ["attention", "s/image", "max_memory_allocated GiB", "runs s", "error"],
        [
            [
                r["attention"],
                r.get("s_per_image"),
                (r["max_memory_allocated_bytes"] / 2**30) if "max_memory_allocated_bytes" in r else None,
                " ".join(f"{s:.1f}" for s in r.get("seconds", [])),
                r.get("error", ""),
            ]
            for r in rows
        ],
    )
    notes = [
        "random weights: timing and memory only; outputs are meaningless",
        "per image = SV3DBackend.generate with feature capture, after a 2-step warm-up",
    ]
    if "xformers" not in available_attention_backends():
        notes.append("xformers is not importable: SDPA only")
    print_notes(notes)
    return {
        "device": torch.cuda.get_device_name(device),
        "resolution": FULL_RESOLUTION,
        "frames": args.gpu_frames,
        "steps": args.gpu_steps,
        "images": args.gpu_images,
        "rows": rows,
        "notes": notes,
    }


# --------------------------------------------------------------------------- main


DEFAULTS = {"images": 12, "frames": 8, "steps": 8}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/stage_one.json"))
    parser.add_argument(
        "--images", type=int, default=DEFAULTS["images"], help="input images (copies of examples/images)"
    )
    parser.add_argument(
        "--frames", type=int, default=DEFAULTS["frames"], help="orbit frames of the tiny runs"
    )
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="sampler steps of the tiny runs")
    parser.add_argument(
        "--samples-per-shard",
        type=int,
        default=None,
        help="default: images / 4 rounded up, so 2 workers get 2 shards each",
    )
    parser.add_argument("--gpu-frames", type=int, default=21)
    parser.add_argument("--gpu-steps", type=int, default=25)
    parser.add_argument("--gpu-images", type=int, default=2, help="timed images per backend")
    args = parser.parse_args(argv)
    for key in ("images", "frames", "steps", "gpu_frames", "gpu_steps", "gpu_images"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.samples_per_shard is None:
        args.samples_per_shard = -(-args.images // 4)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    config = GenerationConfig(orbit=OrbitConfig(num_frames=args.frames), num_inference_steps=args.steps)
    machine = stage_one_machine()
    print(f"KeyDiff3D stage-one benchmark, {date}")
    print(f"machine: {machine['cpu_count']} cores, torch {machine['torch']}, device {machine['device']}")
    print(
        f"tiny model ({TINY_RESOLUTION} px), CPU, threads={THREADS}: {args.images} images, "
        f"{args.frames} frames, {args.steps} steps, {args.samples_per_shard} samples/shard "
        f"(defaults: {DEFAULTS['images']} images, {DEFAULTS['frames']} frames, "
        f"{DEFAULTS['steps']} steps; a few minutes on 2 cores)"
    )

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_stage_one_") as tmp:
        work = Path(tmp)
        setup = Setup(
            model=save_tiny_sv3d(work / "tiny_model", seed=0),
            images=copy_example_images(work / "images", args.images),
            work=work,
            config=config,
            samples_per_shard=args.samples_per_shard,
            num_images=args.images,
        )
        results["throughput"] = bench_throughput(setup)
        results["overhead"] = bench_overhead(setup)
        tiny = bench_bytes_tiny(work / "overhead0.zarr")
        results["bytes_per_sample"] = {"tiny_store": tiny, "full_size": bench_bytes_full(tiny)}
        results["codecs"] = bench_codecs(work / "overhead0.zarr")
    results["gpu"] = bench_gpu(args)

    config_record = {
        "generation": config.to_dict(),
        "tiny_resolution": TINY_RESOLUTION,
        "threads": THREADS,
        "device": "cpu",
        "example_images": sorted(p.name for p in EXAMPLE_IMAGES.iterdir()),
    }
    return write_report(args, date, machine, started, config_record, results)


if __name__ == "__main__":
    main()
