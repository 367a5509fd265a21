"""Left/right joint pairs read from joint names, and the label swap they define.

A left/right pair is two joints whose names differ only in the side they name. Three
spellings are recognised, each tried on every name:
- a `left`/`right` word at the start (`left_knee`, `Right-Wrist`, `LeftArm`);
- a two-letter leg code at the start, end or front/rear/hind then left/right, followed by
  `_` or the end (the quadruped's `FL_hip` <-> `FR_hip`, `RL_foot` <-> `RR_foot`);
- a single `L`/`R` before a capital letter (Human3.6M's `LHip` <-> `RHip`).
A name pairs with the name its side swap spells only when that name is in the list too,
so `RL_hip` (rear left) never pairs with a made-up `LL_hip`, and `Rib` stays unpaired.
Joints without a counterpart (pelvis, head, `Hip`, `body`) are their own mirror image.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_SIDE_WORD = re.compile(r"^(left|right)(?=[_\-\s.]|[A-Z]|$)", re.IGNORECASE)
_LEG_CODE = re.compile(r"^([FRH])([LR])(?=_|$)")
_SIDE_LETTER = re.compile(r"^([LR])(?=[A-Z])")


def _swap_side_word(word: str) -> str:
    """'left' <-> 'right', keeping the word's case ('Left' -> 'Right', 'LEFT' -> 'RIGHT')."""
    other = "right" if word.lower() == "left" else "left"
    if word.isupper():
        return other.upper()
    if word[0].isupper():
        return other.capitalize()
    return other


def mirrored_name(name: str) -> tuple[str, ...]:
    """The names `name` would have on the other side, one per spelling that matches it.

    Empty for a name that names no side. Whether a candidate is a real joint is for the
    caller to decide (see `left_right_pairs`).
    """
    candidates = []
    word = _SIDE_WORD.match(name)
    if word:
        candidates.append(_swap_side_word(word.group(1)) + name[word.end() :])
    leg = _LEG_CODE.match(name)
    if leg:
        candidates.append(leg.group(1) + ("R" if leg.group(2) == "L" else "L") + name[leg.end() :])
    letter = _SIDE_LETTER.match(name)
    if letter:
        candidates.append(("R" if letter.group(1) == "L" else "L") + name[letter.end() :])
    return tuple(candidates)


def left_right_pairs(joint_names: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """Index pairs (i, j), i < j, of joints whose names are each other's mirror.

    Args:
        joint_names: (J,) joint names in the order of the joint axis.
    Returns:
        The pairs in order of their first index; empty when no name has a counterpart.
        Every joint is in at most one pair.
    """
    names = list(joint_names)
    if len(set(names)) != len(names):
        raise ValueError(f"joint_names must be distinct, got {names}")
    index = {name: i for i, name in enumerate(names)}
    partner: dict[int, int] = {}
    for i, name in enumerate(names):
        for candidate in mirrored_name(name):
            j = index.get(candidate)
            if j is not None and j != i:
                partner[i] = j
                break
    # Keep a pair only when each side names the other, so a joint cannot sit in two pairs.
    return tuple((i, j) for i, j in sorted(partner.items()) if i < j and partner.get(j) == i)


def label_swap_permutation(pairs: Sequence[tuple[int, int]], num_joints: int) -> np.ndarray:
    """Joint order that swaps the labels of every pair: `poses[:, perm]` is the mirrored labelling.

    Args:
        pairs: left/right index pairs, as `left_right_pairs` returns.
        num_joints: J.
    Returns:
        (J,) int permutation; joints in no pair map to themselves.
    """
    permutation = np.arange(num_joints)
    seen: set[int] = set()
    for pair in pairs:
        i, j = (int(k) for k in pair)
        if not (0 <= i < num_joints and 0 <= j < num_joints) or i == j:
            raise ValueError(f"pairs must hold two distinct joint indices in [0, {num_joints}), got {pair}")
        if i in seen or j in seen:
            raise ValueError(f"pairs must not share a joint, got {list(pairs)}")
        seen.update((i, j))
        permutation[i], permutation[j] = j, i
    return permutation
