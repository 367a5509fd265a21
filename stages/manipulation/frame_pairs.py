"""Pairs of synthetic-world samples that show two moments of the same motion clip.

Sample ids do not name their clip and time: both are drawn from the sample's seed, by
the same `draw_clip_moment` the synthetic world renders with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stages.manipulation.errors import ManipulationError
from stages.sources import sample_seed
from stages.synthetic.mocap import load_clip
from stages.synthetic.world import draw_clip_moment, time_segment


@dataclass(frozen=True)
class ClipMoment:
    """Which clip a sample shows, and when."""

    clip: str
    seconds: float


def clip_moments(world: dict[str, Any], sample_ids: list[str]) -> list[ClipMoment]:
    """Clip and time of each sample id of a synthetic cache whose source metadata is `world`."""
    try:
        clips, seed, category, split = world["clips"], int(world["seed"]), world["category"], world["split"]
    except (KeyError, TypeError) as exc:
        raise ManipulationError(f"not a synthetic-world cache (source world {world!r})") from exc
    durations = {name: load_clip(name).duration for name in clips}
    segment = time_segment(category, split)
    moments = []
    for sample_id in sample_ids:
        rng = np.random.default_rng(sample_seed(seed, sample_id))
        moments.append(ClipMoment(*draw_clip_moment(rng, clips, segment, durations)))
    return moments


def same_clip_pairs(
    moments: list[ClipMoment], count: int, min_gap: float, max_gap: float, seed: int = 0
) -> list[tuple[int, int]]:
    """Up to `count` index pairs (a, b) of one clip, |t_b - t_a| in [min_gap, max_gap] seconds,
    drawn with `seed`, at most one pair per first sample."""
    candidates = [
        (a, b)
        for a, first in enumerate(moments)
        for b, second in enumerate(moments)
        if a != b and first.clip == second.clip and min_gap <= abs(second.seconds - first.seconds) <= max_gap
    ]
    order = np.random.default_rng(seed).permutation(len(candidates))
    chosen, used = [], set()
    for k in order:
        a, b = candidates[k]
        if a not in used:
            chosen.append((a, b))
            used.add(a)
        if len(chosen) == count:
            break
    return chosen
