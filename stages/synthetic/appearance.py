"""World version 2's appearance: colours per body-part class, the way clothing is.

Version 1 paints every link its own random colour, so nothing in a render tells a left
arm from a right one or a figure's front from its back. Version 2 draws one colour per
part CLASS (upper arm, shin, ...), the same on both sides of the body, with classes kept
apart in CIELAB; props (stages/synthetic/props.py) add a face, a chest badge and a
quadruped's head; a clothing-like texture per class and a random light add variety.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.synthetic.errors import SyntheticWorldError
from stages.synthetic.props import PROPS
from stages.synthetic.render import Lighting

HUMANOID_PARTS = {
    "base": "pelvis",
    "root": "pelvis",
    "chest": "chest",
    "neck": "head",
    **{
        f"{side}_{link}": part
        for side in ("left", "right")
        for link, part in (
            ("shoulder", "upper_arm"),
            ("elbow", "forearm"),
            ("wrist", "hand"),
            ("hip", "thigh"),
            ("knee", "shin"),
            ("ankle", "foot"),
        )
    },
}
"""URDF link -> part class; a link is named after the joint above it ('left_elbow' is the
left forearm) and 'neck' is the head sphere."""


def _quadruped_parts() -> dict[str, str]:
    parts = {"base": "body"}
    for leg in ("FR", "FL", "RR", "RL"):
        end = "front" if leg[0] == "F" else "rear"
        parts[f"{leg}_hip_motor"] = "hip"
        parts[f"{leg}_upper_leg"] = f"{end}_upper_leg"
        parts[f"{leg}_lower_leg"] = f"{end}_lower_leg"
        # The toes are zero-radius spheres: a class so every link has one, never seen.
        parts[f"toe{leg}"] = "foot"
    return parts


QUADRUPED_PARTS = _quadruped_parts()
"""URDF link -> part class; front and rear legs differ, as a dog's often do."""

PARTS = {"humanoid": HUMANOID_PARTS, "quadruped": QUADRUPED_PARTS}

DARK_PARTS = ("visor", "nose")
"""Near black, like eyes and a dog's nose; every other class keeps away from them."""
SKIN_PARTS = {"humanoid": ("head",), "quadruped": ()}
"""Drawn from skin tones."""
PLAIN_PARTS = ("head", "hair", "visor", "nose", "ear", "badge")
"""Never textured: a face, hair and markers stay solid."""
TEXTURES = ("plain", "row_stripes", "wide_row_stripes", "column_stripes", "checker")
"""What a textured class may wear; stages/synthetic/wardrobe.py draws the patterns."""
TEXTURED_CATEGORIES = ("humanoid",)
"""Figures whose links take patterns. The quadruped's meshes show a pattern as one flat
shade (looked at), and a different one on a left mesh than on its mirrored right one,
which would tell left from right by accident."""

MIN_DELTA_E = 30.0
"""Smallest CIELAB distance (Delta E 1976) wanted between two classes' colours and from
the white background; 2.3 is just noticeable, 30 a plainly different hue or lightness."""
LINK_JITTER = 0.03
"""Largest per-channel change of one link's colour from its class colour."""
_CANDIDATES = 64
"""Colours drawn per class; the first far enough from those taken is kept."""


def part_classes(category: str) -> tuple[str, ...]:
    """Every part class of `category`: its links' classes, then its props', in a fixed order."""
    if category not in PARTS:
        raise SyntheticWorldError(f"category must be one of {sorted(PARTS)}, got {category!r}")
    order = list(dict.fromkeys(PARTS[category].values()))
    return tuple(dict.fromkeys(order + [prop.part for prop in PROPS[category]]))


def link_classes(category: str, link_names: tuple[str, ...]) -> tuple[str, ...]:
    """Part class of every link, base first: link_names are the URDF links in index order."""
    parts = PARTS[category]
    missing = [name for name in ("base", *link_names) if name not in parts]
    if missing:
        raise SyntheticWorldError(f"{category}: links without a part class: {missing}")
    return tuple(parts[name] for name in ("base", *link_names))


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (..., 3) of sRGB colours (..., 3) in [0, 1], D65 white."""
    rgb = np.asarray(rgb, dtype=np.float64)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array(
        [
            [0.4124564, 0.3575761, 0.1804375],
            [0.2126729, 0.7151522, 0.0721750],
            [0.0193339, 0.1191920, 0.9503041],
        ]
    )
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    delta = 6.0 / 29.0
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4.0 / 29.0)
    return np.stack(
        [116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], axis=-1
    )


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """RGB (..., 3) of HSV (..., 3), all in [0, 1]."""
    h, s, v = np.moveaxis(np.asarray(hsv, dtype=np.float64), -1, 0)
    k = (np.array([5.0, 3.0, 1.0]) + 6.0 * h[..., None]) % 6.0
    return v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


_HSV_RANGES = {
    "dark": ((0.0, 0.0, 0.04), (1.0, 0.4, 0.14)),
    "skin": ((0.02, 0.25, 0.3), (0.1, 0.65, 0.95)),
    "hair": ((0.02, 0.1, 0.12), (0.14, 0.8, 0.85)),
    "clothing": ((0.0, 0.3, 0.35), (1.0, 1.0, 0.95)),
}
"""(low, high) HSV of the colours each kind of class draws from."""


def _colour_kind(part: str, category: str) -> str:
    if part in DARK_PARTS:
        return "dark"
    if part in SKIN_PARTS[category]:
        return "skin"
    return "hair" if part == "hair" else "clothing"


def draw_class_colours(category: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A colour (3,) in [0, 1] per part class of `category`, classes apart in CIELAB.

    Each class draws _CANDIDATES colours and keeps the first at least MIN_DELTA_E from
    white and from every class chosen before it (the farthest one if none is), so a
    sample always takes the same number of draws.
    """
    parts = part_classes(category)
    # Dark classes first: the others keep away from them, not they from each other.
    order = [p for p in parts if p in DARK_PARTS] + [p for p in parts if p not in DARK_PARTS]
    low, high = (np.array([_HSV_RANGES[_colour_kind(p, category)][k] for p in order]) for k in (0, 1))
    # One draw and one conversion for every candidate of every class: a quarter of a
    # sample's time when done class by class (measured).
    hsv = low[:, None] + (high - low)[:, None] * rng.random((len(order), _CANDIDATES, 3))
    candidates = hsv_to_rgb(hsv)
    labs = srgb_to_lab(candidates)
    taken = np.empty((len(order) + 1, 3))  # CIELAB of white, then of each class chosen
    taken[0] = srgb_to_lab(np.ones(3))
    colours = {}
    for k, (part, rgb, lab) in enumerate(zip(order, candidates, labs, strict=True)):
        pick = 0
        if part not in DARK_PARTS:
            nearest = np.sqrt(((lab[:, None] - taken[None, : k + 1]) ** 2).sum(axis=-1).min(axis=1))
            far = np.flatnonzero(nearest >= MIN_DELTA_E)
            pick = int(far[0]) if far.size else int(np.argmax(nearest))
        colours[part] = rgb[pick]
        taken[k + 1] = lab[pick]
    return {part: colours[part] for part in parts}


def draw_lighting(rng: np.random.Generator) -> Lighting:
    """A light a little warm or cool, with random ambient, diffuse and specular shares."""
    colour = rng.uniform(0.75, 1.0, size=3)
    return Lighting(
        colour=tuple(float(c) for c in colour / colour.max()),
        ambient=float(rng.uniform(0.4, 0.75)),
        diffuse=float(rng.uniform(0.2, 0.5)),
        specular=float(rng.uniform(0.0, 0.25)),
    )


@dataclass(frozen=True)
class Look:
    """One sample's version-2 appearance."""

    class_colours: dict
    """Part class -> RGB (3,) in [0, 1]."""
    link_colours: np.ndarray
    """(links + 1, 3) RGB of each link, base first: its class colour plus a small jitter."""
    textures: dict
    """Part class -> one of TEXTURES."""
    lighting: Lighting


def draw_look(
    category: str, link_names: tuple[str, ...], link_draws: np.ndarray, rng: np.random.Generator
) -> Look:
    """The appearance of one sample.

    link_names: the URDF links in index order; link_draws (links + 1, 3) in [0.05, 0.85]:
    the per-link draw both versions take (figures.draw_link_colours), here a jitter.
    """
    classes = link_classes(category, link_names)
    if link_draws.shape != (len(classes), 3):
        raise SyntheticWorldError(f"link_draws must be ({len(classes)}, 3), got {link_draws.shape}")
    class_colours = draw_class_colours(category, rng)
    choice = rng.integers(len(TEXTURES), size=len(class_colours))
    textured = category in TEXTURED_CATEGORIES
    textures = {
        part: TEXTURES[k] if textured and part not in PLAIN_PARTS else "plain"
        for part, k in zip(class_colours, choice, strict=True)
    }
    jitter = LINK_JITTER * (np.asarray(link_draws) - 0.45) / 0.4
    link_colours = np.clip(np.array([class_colours[c] for c in classes]) + jitter, 0.0, 1.0)
    return Look(class_colours, link_colours, textures, draw_lighting(rng))
