"""Stage-one benchmark sections 3 and 4: bytes per sample and codecs.

Section 3 measures the bytes per sample of each array in a store made with the tiny model
and estimates them at full SV3D-p size from the array shapes; section 4 measures the size
and speed of candidate numcodecs codecs on that store's views and features, and marks the
ones cache_schema/codecs.py uses. Run from bench_stage_one.py.
"""

from __future__ import annotations

import os
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
from bench_common import print_notes, print_table  # noqa: E402
from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler  # noqa: E402
from stage_one_common import FULL_RESOLUTION  # noqa: E402

from cache_schema import CacheLayout, CacheStore, FeatureLayerSpec  # noqa: E402
from cache_schema.codecs import compressors_for  # noqa: E402
from stages.config import OrbitConfig  # noqa: E402
from stages.sv3d.convert import SCHEDULER_CONFIG, sv3d_p_unet_config, sv3d_p_vae_config  # noqa: E402
from stages.sv3d.pipeline import SV3DPipeline  # noqa: E402
from stages.sv3d.unet import SV3DUNetModel  # noqa: E402

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
