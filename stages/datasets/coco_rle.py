"""COCO compressed run-length masks (StanfordExtra's 'seg'), decoded without pycocotools.

Format (COCO mask API): the runs of a mask read in column-major order, alternating
background and foreground and starting with background. Each run count is written as
a variable-length signed number in 5-bit groups, least significant first, one ASCII
character (48 + group) per group; bit 0x20 says another group follows and, in the
last group, bit 0x10 is the sign. From the fourth count on (index 3), the stored number
is the difference to the count two places before.
"""

from __future__ import annotations

import numpy as np

from stages.errors import ImageLoadError


def rle_counts(text: str) -> list[int]:
    """Run counts from a COCO compressed RLE string; ImageLoadError when malformed."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ImageLoadError(f"RLE string ends inside a number at character {position}")
            group = ord(text[position]) - 48
            if not 0 <= group < 64:
                raise ImageLoadError(f"RLE string has {text[position]!r} at character {position}")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value -= 1 << shift  # sign-extend the last group
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def decode_rle(text: str, height: int, width: int) -> np.ndarray:
    """The (H, W) bool mask of a COCO compressed RLE string of that size."""
    counts = rle_counts(text)
    if any(c < 0 for c in counts):
        raise ImageLoadError(f"RLE has a negative run length: {min(counts)}")
    if sum(counts) != height * width:
        raise ImageLoadError(
            f"RLE covers {sum(counts)} pixels, the image has {height}x{width} = {height * width}"
        )
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape(width, height).T.copy()
