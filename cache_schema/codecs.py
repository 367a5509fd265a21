"""Codecs per array family, chosen by measurement (benchmarks/stage_one_bytes.py, section 4).

Measured on the tiny model's store: zstd level 3 was within 0.2% of the smallest
option for views and for float16 features, at 2-3x the encode speed of level 9 and
faster than blosc zstd with byte shuffle (which gained nothing there). Tiny
random-weight features are not real SV3D-p features: rerun section 4 on a real
store before changing this. Every chunk ends with a CRC32C checksum so `verify`
detects a damaged chunk instead of returning garbage.
"""

from __future__ import annotations

from zarr.codecs import Crc32cCodec, ZstdCodec

ZSTD_LEVEL = 3
KINDS = ("image", "float", "small", "text")


def compressors_for(kind: str) -> list:
    """The compressor chain of one array family ('image', 'float', 'small', 'text')."""
    if kind not in KINDS:
        raise ValueError(f"unknown array kind {kind!r}, expected one of {KINDS}")
    return [ZstdCodec(level=ZSTD_LEVEL), Crc32cCodec()]
