"""Pictures of training: keypoints and skeleton on every view, reconstructions, 3D keypoints, losses."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from stages.keypoints.skeleton import maximum_spanning_tree  # noqa: E402

COLOURS = plt.get_cmap("tab20")


def _image(tensor: np.ndarray) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3)."""
    return np.clip(np.transpose(tensor, (1, 2, 0)), 0.0, 1.0)


def write_preview(
    out: Path,
    views: np.ndarray,
    reconstruction: np.ndarray,
    uv: np.ndarray,
    keypoints: np.ndarray,
    edge_weights: np.ndarray,
    title: str,
    samples: int = 2,
) -> Path:
    """One row per sample: every view with keypoints and skeleton, its reconstruction, a 3D plot.

    views and reconstruction (B, V, 3, H, W) in [0, 1]; uv (B, V, N, 2) pixels; keypoints
    (B, N, 3); edge_weights (N, N).
    """
    edges = maximum_spanning_tree(edge_weights)
    rows = min(samples, len(views))
    num_views = views.shape[1]
    fig = plt.figure(figsize=(2.2 * (2 * num_views + 1), 2.4 * rows))
    for b in range(rows):
        for v in range(num_views):
            ax = fig.add_subplot(rows, 2 * num_views + 1, b * (2 * num_views + 1) + v + 1)
            ax.imshow(_image(views[b, v]), extent=(0, views.shape[-1], views.shape[-2], 0))
            for i, j in edges:
                ax.plot(uv[b, v, [i, j], 0], uv[b, v, [i, j], 1], "-", color="white", lw=1.5)
                ax.plot(uv[b, v, [i, j], 0], uv[b, v, [i, j], 1], "-", color="black", lw=0.6)
            ax.scatter(uv[b, v, :, 0], uv[b, v, :, 1], s=12, c=[COLOURS(n % 20) for n in range(uv.shape[2])])
            ax.set_xlim(0, views.shape[-1])
            ax.set_ylim(views.shape[-2], 0)
            ax.set_axis_off()
            ax.set_title(f"view {v}", fontsize=8)
            ax = fig.add_subplot(rows, 2 * num_views + 1, b * (2 * num_views + 1) + num_views + v + 1)
            ax.imshow(_image(reconstruction[b, v]))
            ax.set_axis_off()
            ax.set_title(f"reconstruction {v}", fontsize=8)
        ax = fig.add_subplot(rows, 2 * num_views + 1, (b + 1) * (2 * num_views + 1), projection="3d")
        points = keypoints[b]
        for i, j in edges:
            ax.plot(points[[i, j], 0], points[[i, j], 1], points[[i, j], 2], "-", color="gray")
        ax.scatter(
            points[:, 0], points[:, 1], points[:, 2], s=10, c=[COLOURS(n % 20) for n in range(len(points))]
        )
        ax.set_title("3D keypoints", fontsize=8)
        ax.set_box_aspect((1, 1, 1))
        _equal_limits(ax, points)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def _equal_limits(ax: object, points: np.ndarray) -> None:
    centre = points.mean(axis=0)
    half = max(float(np.abs(points - centre).max()), 1e-3)
    ax.set_xlim(centre[0] - half, centre[0] + half)  # type: ignore[attr-defined]
    ax.set_ylim(centre[1] - half, centre[1] + half)  # type: ignore[attr-defined]
    ax.set_zlim(centre[2] - half, centre[2] + half)  # type: ignore[attr-defined]


def write_loss_curve(metrics: Path, out: Path) -> Path:
    """Every logged loss term against the step, from metrics.jsonl."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if records:
        steps = [r["step"] for r in records]
        for name in [k for k in records[0] if k not in ("step", "seconds")]:
            ax.plot(steps, [r[name] for r in records], label=name)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (weighted)")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
