"""Draw docs/images/synthetic_world_v2.png, the README's look at the synthetic world.

    python docs/synthetic_world_figure.py [--samples 3] [--out docs/images/synthetic_world_v2.png]

Each row is one humanoid and one quadruped sample of world version 2, each as its 4 kept
views (azimuths 0, 90, 180, 270) at the cache's 128 px, exactly as a store holds them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.backends import RenderBackendSpec  # noqa: E402
from stages.config import GenerationConfig  # noqa: E402
from stages.sources import sample_seed  # noqa: E402
from stages.synthetic.world import SyntheticWorldConfig, draw_clip_moment, time_segment  # noqa: E402

CATEGORIES = ("humanoid", "quadruped")
SEED = 2
"""World seed of the pictured samples (one whose first samples show varied poses)."""


def sample_views(category: str, samples: int, resolution: int, version: int) -> list[tuple[str, np.ndarray]]:
    """(label, views (V, 3, S, S) uint8) of the first `samples` training samples of a world."""
    world = SyntheticWorldConfig(category, "train", samples, seed=SEED, version=version)
    renderer = RenderBackendSpec(world, GenerationConfig(resolution=resolution)).build()
    out = []
    for sample_id in world.sample_ids():
        rows = renderer.make_sample(sample_id, renderer.intrinsics, renderer.world_to_camera)
        # The same first two draws as the renderer's: which clip and moment this is.
        rng = np.random.default_rng(sample_seed(world.seed, sample_id))
        clip, seconds = draw_clip_moment(
            rng, world.clips(), time_segment(category, "train"), renderer.durations
        )
        out.append((f"{clip.removeprefix('humanoid3d_')} {seconds:.1f} s", rows["views"]))
    return out


def draw(out: Path, samples: int = 3, resolution: int = 128, version: int = 2) -> Path:
    """Write the grid to `out` (PNG) and return it."""
    columns = {category: sample_views(category, samples, resolution, version) for category in CATEGORIES}
    views = len(columns[CATEGORIES[0]][0][1])
    fig, axes = plt.subplots(
        samples,
        views * len(CATEGORIES),
        figsize=(1.45 * views * len(CATEGORIES), 1.6 * samples),
        squeeze=False,
    )
    for block, category in enumerate(CATEGORIES):
        for row, (label, images) in enumerate(columns[category]):
            for view, image in enumerate(images):
                ax = axes[row, block * views + view]
                ax.imshow(np.transpose(image, (1, 2, 0)), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_color("#cccccc")
                if view == 0:
                    ax.set_ylabel(f"{category}\n{label}", fontsize=7)
                if row == 0:
                    ax.set_title(f"azimuth {90 * view}", fontsize=7, pad=2)
    fig.suptitle(
        f"synthetic world version {version}: colours by body-part class (the same left and right), "
        "a face and chest badge, a quadruped head",
        fontsize=8,
    )
    fig.tight_layout(pad=0.3, w_pad=0.1, h_pad=0.3)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "images" / "synthetic_world_v2.png"
    )
    parser.add_argument("--samples", type=int, default=3, help="samples per category (rows)")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"wrote {draw(args.out, args.samples)}")


if __name__ == "__main__":
    main()
