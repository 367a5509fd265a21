"""Evaluation outputs people look at: the Table-1 style Markdown, per-joint and per-keypoint tables,
skeleton plots, per-joint bars and the keypoint-to-joint consistency matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

TABLE_HEADER = (
    "| method | #views | #kp | regression | MPJPE (mm) | N-MPJPE (mm) | P-MPJPE (mm) "
    "| flip-aware P-MPJPE (mm) |\n"
    "|---|---|---|---|---|---|---|---|\n"
)


TABLE_2D_HEADER = (
    "| method | #views | #kp | regression | 2D error / image size (%) |\n|---|---|---|---|---|\n"
)


def table_row(method: str, views: Any, keypoints: Any, result: dict[str, Any]) -> str:
    return (
        f"| {method} | {views} | {keypoints} | {result['regression']} | {result['mpjpe_mm']:.2f} | "
        f"{result['n_mpjpe_mm']:.2f} | {result['p_mpjpe_mm']:.2f} | {result['pf_mpjpe_mm']:.2f} |\n"
    )


def per_joint_table(names: list[str], results: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per joint, P-MPJPE and flip-aware P-MPJPE (mm) of each labelled result.

    results: label -> a `RegressionResult.summary()` (its per-joint lists follow `names`).
    """
    header = "| joint | " + " | ".join(f"{label} P-MPJPE | {label} flip-aware" for label in results) + " |\n"
    rule = "|---|" + "---|---|" * len(results) + "\n"
    rows = []
    for j, name in enumerate(names):
        cells = [
            f"{r['per_joint_p_mpjpe_mm'][j]:.1f} | {r['per_joint_pf_mpjpe_mm'][j]:.1f}"
            for r in results.values()
        ]
        rows.append(f"| {name} | " + " | ".join(cells) + " |\n")
    return header + rule + "".join(rows)


def consistency_table(consistency: dict[str, Any]) -> str:
    """Markdown: each keypoint's most frequent nearest joint and the share of samples it is nearest.

    consistency: `KeypointConsistency.to_dict(joint_names)`.
    """
    rows = "".join(
        f"| {k['keypoint']} | {k['nearest_joint']} | {k['consistency']:.2f} |\n"
        for k in consistency["per_keypoint"]
    )
    return (
        f"Mean consistency over keypoints: {consistency['mean_consistency']:.2f}\n\n"
        "| keypoint | most often nearest joint | consistency |\n|---|---|---|\n" + rows
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


def write_consistency_matrix(out: Path, frequencies: np.ndarray, names: list[str], title: str) -> Path:
    """Heat map of how often each joint (column) is the one nearest each keypoint (row).

    frequencies: (N, J) shares in [0, 1], rows summing to 1; names: J joint names.
    A consistent keypoint is one bright cell in its row; a row split between a left and a
    right joint is a keypoint that does not tell the sides apart.
    """
    num_keypoints, num_joints = frequencies.shape
    fig, ax = plt.subplots(figsize=(max(5.0, 0.4 * num_joints + 2.0), max(3.0, 0.28 * num_keypoints + 1.6)))
    image = ax.imshow(frequencies, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(np.arange(num_joints), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(np.arange(num_keypoints), [f"kp {n}" for n in range(num_keypoints)], fontsize=7)
    ax.set_xlabel("nearest ground-truth joint")
    ax.set_ylabel("discovered keypoint")
    fig.colorbar(image, ax=ax, label="share of samples")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
