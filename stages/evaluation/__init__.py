"""Evaluation: regress discovered keypoints onto ground-truth joints and measure pose errors.

`metrics` (numpy only) holds MPJPE, N-MPJPE, P-MPJPE and the 2D error normalised by image
size; `regressors` holds the linear and 2-hidden-layer MLP maps from keypoints to joints.
"""
