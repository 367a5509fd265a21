"""The issue's measured check, one pair of samples at a time (see transfer.py for what is scored)."""

from __future__ import annotations

import numpy as np

from cache_schema import CacheReader
from stages.keypoints.checkpoint import TrainedRun
from stages.manipulation.errors import ManipulationError
from stages.manipulation.frame_pairs import clip_moments, same_clip_pairs
from stages.manipulation.gaussians import Gaussians
from stages.manipulation.keypoints import predict_sample_keypoints
from stages.manipulation.rig import RigConfig, build_rig, length_stability_adjacency
from stages.manipulation.sample import ObjectViews
from stages.manipulation.transfer import TransferResult, transfer_pose


def draw_frame_pairs(
    reader: CacheReader, count: int, min_gap: float, max_gap: float, seed: int
) -> list[tuple[int, int]]:
    """Up to `count` (a, b) sample indices of a synthetic cache showing one clip min_gap..max_gap s apart."""
    done = reader.done_indices()
    world = reader.store.metadata.source.get("world") or {}
    moments = clip_moments(world, [str(i) for i in reader.sample_ids()[done]])
    chosen = [
        (int(done[a]), int(done[b])) for a, b in same_clip_pairs(moments, count, min_gap, max_gap, seed)
    ]
    if not chosen:
        raise ManipulationError(
            f"{reader.path}: no two done samples of one clip {min_gap}..{max_gap} s apart"
        )
    return chosen


def ground_truth_keypoints(reader: CacheReader) -> tuple[np.ndarray, np.ndarray] | None:
    """Ground-truth joints (n, J, 3) of every sample (zeros where not done) and an adjacency
    (J, J) from how constant each pair's distance is over the done samples, or None.

    Ground truth has no learned adjacency; rigid links keep their length, so this picks
    the figure's bones rather than whichever limbs happen to touch in one frame."""
    spec = reader.layout.ground_truth
    if spec is None or not spec.has_3d:
        return None
    done = reader.done_indices()
    joints = np.zeros((reader.layout.num_samples, spec.num_joints, 3))
    joints[done] = reader.read_ground_truth(done.tolist())["joints_3d"]
    return joints, length_stability_adjacency(joints[done])


def score_pair(
    gaussians: Gaussians,
    joints_a: np.ndarray,
    joints_b: np.ndarray,
    adjacency: np.ndarray | None,
    second: ObjectViews,
    config: RigConfig | None = None,
) -> tuple[dict[str, float], TransferResult]:
    """Rig object A (Gaussians) on keypoints (N, 3) of A, pose it onto B's (N, 3), score against
    B's views. Returns mean IoUs and the mean keypoint residual, and the full result."""
    rig = build_rig(joints_a, adjacency, config or RigConfig())
    result = transfer_pose(gaussians, rig, joints_b, second.masks, second.intrinsics, second.world_to_camera)
    scores = {
        "iou_undeformed": float(result.undeformed.mean()),
        "iou_rigid": float(result.rigid.mean()),
        "iou_deformed": float(result.deformed.mean()),
        "keypoint_residual": float(np.linalg.norm(result.transforms.joints - joints_b, axis=1).mean()),
    }
    return scores, result


def pair_keypoints(
    run: TrainedRun,
    cache: str,
    a: int,
    b: int,
    adjacency: np.ndarray,
    truth: tuple[np.ndarray, np.ndarray] | None,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Keypoints (N, 3) of samples a and b and the adjacency each rig of the check uses:
    'predicted' (the run's keypoints and learned adjacency) and, when `truth` (from
    `ground_truth_keypoints`) is given, 'ground_truth'."""
    sources = {
        "predicted": (
            predict_sample_keypoints(run, cache, a),
            predict_sample_keypoints(run, cache, b),
            adjacency,
        )
    }
    if truth is not None:
        sources["ground_truth"] = (truth[0][a], truth[0][b], truth[1])
    return sources


def mean_scores(records: list[dict]) -> dict[str, dict[str, float]]:
    """Per keypoint source, the mean of every score of `score_pair` over the pair records."""
    sources = [name for name, value in records[0].items() if isinstance(value, dict)]
    return {
        name: {key: float(np.mean([r[name][key] for r in records])) for key in records[0][name]}
        for name in sources
    }
