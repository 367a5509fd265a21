"""Codecs per array family, chosen by measurement (see benchmarks/bench_stage_one.py).

Every chunk ends with a CRC32C checksum so `verify` detects a damaged chunk instead of
returning garbage.
"""

from __future__ import annotations

from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

# Levels above 3 gave a few percent smaller pixels for several times the write time.
IMAGE_ZSTD_LEVEL = 3
FLOAT_ZSTD_LEVEL = 3


def compressors_for(kind: str) -> list:
    """The compressor chain of one array family ('image', 'float', 'small', 'text')."""
    if kind == "image":
        return [ZstdCodec(level=IMAGE_ZSTD_LEVEL), Crc32cCodec()]
    if kind == "float":
        # Byte shuffle groups the exponent bytes of float16 together; zstd alone leaves
        # them interleaved with the noisy mantissa bytes.
        return [BloscCodec(cname="zstd", clevel=FLOAT_ZSTD_LEVEL, shuffle="shuffle"), Crc32cCodec()]
    if kind in ("small", "text"):
        return [ZstdCodec(level=3), Crc32cCodec()]
    raise ValueError(f"unknown array kind {kind!r}")
