"""Evaluation: regress discovered keypoints onto ground-truth joints and measure pose errors.

`metrics` (numpy only) holds MPJPE, N-MPJPE, P-MPJPE, the flip-aware P-MPJPE and the 2D
error normalised by image size; `joint_sides` finds left/right joint pairs from joint names;
`consistency` measures how steadily each keypoint stays nearest one joint; `regressors`
holds the linear and 2-hidden-layer MLP maps from keypoints to joints; `oracle_keypoints`
builds keypoints of a known kind from the true joints (on the parts, or marking fixed
directions), the ceilings that `benchmarks/oracle_keypoints.py` scores.
"""
