"""The learned skeleton: which keypoint pairs the adjacency joins most strongly."""

from __future__ import annotations

import numpy as np


def maximum_spanning_tree(weights: np.ndarray) -> list[tuple[int, int]]:
    """The N - 1 edges (i, j), i < j, of the spanning tree with the largest total weight.

    weights: (N, N) symmetric, non-negative. Prim's algorithm from keypoint 0; ties
    resolve to the lower index, so the tree is deterministic.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[0] != weights.shape[1]:
        raise ValueError(f"weights must be (N, N), got {weights.shape}")
    n = len(weights)
    in_tree = np.zeros(n, dtype=bool)
    in_tree[0] = True
    best = weights[0].copy()
    parent = np.zeros(n, dtype=np.int64)
    edges = []
    for _ in range(n - 1):
        candidates = np.where(in_tree, -np.inf, best)
        j = int(np.argmax(candidates))
        i = int(parent[j])
        edges.append((min(i, j), max(i, j)))
        in_tree[j] = True
        closer = (~in_tree) & (weights[j] > best)
        best[closer] = weights[j][closer]
        parent[closer] = j
    return edges
