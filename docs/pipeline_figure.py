"""Draw docs/images/pipeline.png, the README's picture of the two stages.

    python docs/pipeline_figure.py [--out docs/images/pipeline.png]

The thumbnails are a real sample of the synthetic world (rendered on the stage-one orbit
with its ground-truth joints), so the picture shows what a cache holds.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from cache_schema import CacheReader  # noqa: E402
from pipeline.generate import GenerateJob, run_generate  # noqa: E402
from stages.config import GenerationConfig  # noqa: E402
from stages.synthetic.world import SyntheticWorldConfig  # noqa: E402

STAGE_ONE, STAGE_TWO = "#dbe9f6", "#fde9d0"


def rendered_sample() -> dict[str, np.ndarray]:
    """One humanoid sample: views (V, 3, S, S), masks, cameras and joints_3d (J, 3)."""
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "one.zarr"
        world = SyntheticWorldConfig("humanoid", "train", num_samples=1, seed=3)
        run_generate(
            GenerateJob(None, None, cache, GenerationConfig(resolution=128), "render", world, progress=False)
        )
        reader = CacheReader(cache)
        sample = reader.read_sample(0, ("input_image", "views", "intrinsics", "world_to_camera"))
        sample["joints_3d"] = reader.read_ground_truth([0])["joints_3d"][0]
    return sample


def box(ax, x: float, y: float, w: float, h: float, text: str, colour: str) -> None:  # noqa: ANN001
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.004", fc=colour, ec="#555555", lw=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=7.5)


def arrow(ax, start: tuple[float, float], end: tuple[float, float]) -> None:  # noqa: ANN001
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=11, lw=1.0, color="#333333"))


def thumbnail(fig, rect: tuple[float, float, float, float], image: np.ndarray, title: str) -> None:  # noqa: ANN001
    inset = fig.add_axes(rect)
    inset.imshow(np.transpose(image, (1, 2, 0)))
    inset.set_title(title, fontsize=7, pad=2)
    inset.set_axis_off()


# (kind, width, label, colour) from left to right along the main row.
ROW = (
    ("input", 0.075, "one input image", None),
    ("box", 0.1, "SV3D-p\nimage-to-multi-view\ndiffusion (frozen),\n21 frames on an orbit", STAGE_ONE),
    ("views", 0.1, "", None),
    (
        "box",
        0.095,
        "Zarr cache:\nK = 4 views, masks,\ncameras, UNet\ndecoder features\nat tau = 500",
        STAGE_ONE,
    ),
    (
        "box",
        0.105,
        "hyperfeatures\nper view, lifted\nonto an M^3 voxel\ngrid (softmax\nover the views)",
        STAGE_TWO,
    ),
    ("box", 0.09, "V2V 3D U-Net\n-> N heatmaps\n-> soft-argmax:\nN 3D keypoints", STAGE_TWO),
    ("box", 0.1, "project into\nthe K views;\nlearned adjacency\n-> skeleton\nedge maps", STAGE_TWO),
    ("box", 0.1, "decoder: edge\nmaps + input\nappearance\n-> every view\nreconstructed", STAGE_TWO),
)
GAP, Y, H = 0.027, 0.42, 0.36


def draw(out: Path) -> Path:
    sample = rendered_sample()
    fig = plt.figure(figsize=(12, 3.6))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_axis_off()
    ax.text(
        0.01, 0.92, "stage one: once per image, on GPU nodes or a dask cluster", fontsize=9, weight="bold"
    )
    ax.text(0.47, 0.92, "stage two: trained from the cache, no labels", fontsize=9, weight="bold")
    x, lefts = 0.01, []
    for kind, width, label, colour in ROW:
        lefts.append(x)
        if kind == "input":
            thumbnail(fig, (x, Y + 0.04, width, H - 0.08), sample["input_image"], label)
        elif kind == "views":
            for v in range(4):
                rect = (x + width / 2 * (v % 2), Y + H / 2 - H / 2 * (v // 2), width / 2, H / 2 - 0.06)
                thumbnail(fig, rect, sample["views"][v], f"view {v}")
        else:
            box(ax, x, Y, width, H, label, colour)
        x += width
        if len(lefts) < len(ROW):
            arrow(ax, (x + 0.002, Y + H / 2), (x + GAP - 0.002, Y + H / 2))
        x += GAP
    cache_left, decoder_left = lefts[2], lefts[-1]
    box(ax, cache_left, 0.08, lefts[3] + 0.095 - cache_left, 0.2,
        "keydiff3d-cache generate:\nsharded, resumable, one writer per shard", "#eeeeee")  # fmt: skip
    box(ax, lefts[4], 0.08, decoder_left + 0.1 - lefts[4], 0.2,
        "loss: perceptual (VGG16) difference of every reconstructed view + edge maps vs the masks;\n"
        "its gradient trains the lifter, the keypoint head and the adjacency", STAGE_TWO)  # fmt: skip
    arrow(ax, (decoder_left + 0.05, Y), (decoder_left + 0.05, 0.28 + 0.004))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "images" / "pipeline.png")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"wrote {draw(args.out)}")


if __name__ == "__main__":
    main()
