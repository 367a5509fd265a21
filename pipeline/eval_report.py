"""Evaluation outputs people look at: the Table-1 style Markdown, skeleton plots, per-joint bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

TABLE_HEADER = (
    "| method | #views | #kp | regression | MPJPE (mm) | N-MPJPE (mm) | P-MPJPE (mm) |\n"
    "|---|---|---|---|---|---|---|\n"
)


TABLE_2D_HEADER = (
    "| method | #views | #kp | regression | 2D error / image size (%) |\n|---|---|---|---|---|\n"
)


def table_row(method: str, views: Any, keypoints: Any, result: dict[str, Any]) -> str:
    return (
        f"| {method} | {views} | {keypoints} | {result['regression']} | {result['mpjpe_mm']:.2f} | "
        f"{result['n_mpjpe_mm']:.2f} | {result['p_mpjpe_mm']:.2f} |\n"
    )


def write_skeletons(
    out: Path, predicted: np.ndarray, truth: np.ndarray, title: str, samples: int = 4
) -> Path:
    """Predicted (red) against true (black) joints of a few samples; grey lines join each pair.

    predicted, truth: (S, J, 3).
    """
    count = min(samples, len(truth))
    fig = plt.figure(figsize=(3.2 * count, 3.4))
    for s in range(count):
        ax = fig.add_subplot(1, count, s + 1, projection="3d")
        for joint in range(truth.shape[1]):
            pair = np.stack([truth[s, joint], predicted[s, joint]])
            ax.plot(pair[:, 0], pair[:, 1], pair[:, 2], color="0.6", lw=0.8)
        ax.scatter(*truth[s].T, c="black", s=10, label="ground truth")
        ax.scatter(*predicted[s].T, c="red", s=10, label="predicted")
        centre = truth[s].mean(axis=0)
        half = max(float(np.abs(truth[s] - centre).max()), 1e-3) * 1.2
        for axis, c in zip("xyz", centre, strict=True):
            getattr(ax, f"set_{axis}lim")(c - half, c + half)
        ax.set_box_aspect((1, 1, 1))
        ax.set_title(f"test sample {s}", fontsize=8)
        if s == 0:
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def write_joint_errors(
    out: Path, names: list[str], results: list[dict[str, Any]], label: str = "MPJPE (mm)"
) -> Path:
    """Per-joint error ('per_joint_mpjpe_mm' of each result) as grouped bars."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names)), 3.6))
    width = 0.8 / max(len(results), 1)
    x = np.arange(len(names))
    for i, result in enumerate(results):
        ax.bar(x + i * width, result["per_joint_mpjpe_mm"], width, label=result["regression"])
    ax.set_xticks(x + width * (len(results) - 1) / 2, names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(label)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
