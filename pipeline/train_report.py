"""Pictures of training: keypoints and skeleton on every view, reconstructions, 3D keypoints, losses."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from stages.keypoints.losses import StepOutputs  # noqa: E402
from stages.keypoints.model import KeyDiff3DModel  # noqa: E402
from stages.keypoints.skeleton import maximum_spanning_tree  # noqa: E402

COLOURS = plt.get_cmap("tab20")


def _image(tensor: np.ndarray) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3)."""
    return np.clip(np.transpose(tensor, (1, 2, 0)), 0.0, 1.0)


def draw_keypoints(
    ax: object, image: np.ndarray, uv: np.ndarray, edges: list[tuple[int, int]], title: str
) -> None:
    """Keypoints (N, 2) in pixels and the skeleton's edges over an (H, W, 3) image."""
    height, width = image.shape[:2]
    ax.imshow(image, extent=(0, width, height, 0))  # type: ignore[attr-defined]
    for i, j in edges:
        ax.plot(uv[[i, j], 0], uv[[i, j], 1], "-", color="white", lw=1.5)  # type: ignore[attr-defined]
        ax.plot(uv[[i, j], 0], uv[[i, j], 1], "-", color="black", lw=0.6)  # type: ignore[attr-defined]
    colours = [COLOURS(n % 20) for n in range(len(uv))]
    ax.scatter(uv[:, 0], uv[:, 1], s=12, c=colours)  # type: ignore[attr-defined]
    ax.set_xlim(0, width)  # type: ignore[attr-defined]
    ax.set_ylim(height, 0)  # type: ignore[attr-defined]
    ax.set_axis_off()  # type: ignore[attr-defined]
    ax.set_title(title, fontsize=8)  # type: ignore[attr-defined]


def write_keypoint_views(
    out: Path, views: np.ndarray, uv: np.ndarray, edge_weights: np.ndarray, titles: list[str]
) -> Path:
    """One row per sample, its views with the predicted keypoints and the learned skeleton.

    views: (S, V, 3, H, W) uint8; uv: (S, V, N, 2) pixels; edge_weights: (N, N); titles: S labels.
    """
    edges = maximum_spanning_tree(edge_weights)
    rows, num_views = views.shape[:2]
    fig = plt.figure(figsize=(2.4 * num_views, 2.5 * rows))
    for s in range(rows):
        for v in range(num_views):
            ax = fig.add_subplot(rows, num_views, s * num_views + v + 1)
            draw_keypoints(ax, _image(views[s, v] / 255.0), uv[s, v], edges, f"{titles[s]}, view {v}")
            _zoom_to_object(ax, views[s, v], uv[s, v])
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def _zoom_to_object(ax: object, view: np.ndarray, uv: np.ndarray, margin: float = 0.15) -> None:
    """Limit the axes to the non-white pixels (3, H, W) uint8 and the keypoints (N, 2)."""
    rows, cols = np.nonzero((view < 245).any(axis=0))
    if not len(rows):
        return
    xs = np.concatenate([cols + 0.5, uv[:, 0]])
    ys = np.concatenate([rows + 0.5, uv[:, 1]])
    half = max(np.ptp(xs), np.ptp(ys)) * (0.5 + margin) + 2.0
    cx, cy = (xs.max() + xs.min()) / 2, (ys.max() + ys.min()) / 2
    ax.set_xlim(cx - half, cx + half)  # type: ignore[attr-defined]
    ax.set_ylim(cy + half, cy - half)  # type: ignore[attr-defined]


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
            draw_keypoints(ax, _image(views[b, v]), uv[b, v], edges, f"view {v}")
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


def preview_path(run_dir: Path, step: int) -> Path:
    """Where `preview_writer` puts the picture of checkpoint `step`."""
    return Path(run_dir) / "previews" / f"step_{step:08d}.png"


def preview_writer(run_dir: Path):  # noqa: ANN201
    """A `fit` on_checkpoint callback writing RUN_DIR/previews/step_XXXXXXXX.png."""

    def on_checkpoint(
        step: int, directory: Path, batch: dict, outputs: StepOutputs, model: KeyDiff3DModel
    ) -> None:
        write_preview(
            preview_path(run_dir, step),
            batch["views"].float().cpu().numpy(),
            outputs.reconstruction.detach().float().cpu().numpy(),
            outputs.uv.detach().float().cpu().numpy(),
            outputs.keypoints.detach().float().cpu().numpy(),
            model.edge_weights().detach().float().cpu().numpy(),
            f"step {step}",
        )

    return on_checkpoint


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
