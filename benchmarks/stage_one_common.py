"""What the stage-one benchmark modules share: the example images and SV3D-p's full size.

Light on purpose (pathlib only), like bench_common.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_IMAGES = REPO / "examples" / "images"
FULL_RESOLUTION = 576
