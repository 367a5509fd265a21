"""Visual-only parts fixed to a figure's links: a face, a chest badge, a quadruped's head.

World version 2 adds them so that a render shows which way a figure faces (the humanoid's
head is a plain sphere and its torso symmetric; the quadruped has no head at all). Each is
a separate body with no collision shape and no mass: it is drawn and shows in the masks,
but it is no joint and no part of the bounding box pose_figure centres, so it moves
neither the ground truth nor the figure. place_props puts them on their links after
every pose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pybullet as pb

from stages.synthetic.errors import SyntheticWorldError
from stages.synthetic.figures import Figure


@dataclass(frozen=True)
class PropSpec:
    """One visual-only part and where it sits on its link."""

    part: str
    """Part class whose colour it takes (stages/synthetic/appearance.py)."""
    link: str
    """URDF link it is fixed to; 'base' for the root body."""
    shape: str
    """'sphere' (size = (radius,)) or 'box' (size = half extents along the link's x, y, z)."""
    size: tuple[float, ...]
    """Metres."""
    offset: tuple[float, float, float]
    """Its centre in the link's centre-of-mass frame, metres."""


# The humanoid's links are y-up with +x forward (its feet point to +x) and +z to its
# right; the neck link's centre of mass is the centre of the 0.108 m head sphere.
_HEAD, _CHEST = 0.108, 0.116
HUMANOID_PROPS = (
    # Hair: a sphere shifted back and up covers the back and top of the head, leaving the
    # face (the front half) in skin colour, so front and back differ at any size.
    PropSpec("hair", "neck", "sphere", (0.104,), (-0.022, 0.016, 0.0)),
    # A dark band across the front of the head, like sunglasses.
    PropSpec("visor", "neck", "box", (0.02, 0.026, 0.078), (_HEAD - 0.02, 0.02, 0.0)),
    # A nose below it, sticking out of the profile.
    PropSpec("head", "neck", "sphere", (0.024,), (_HEAD - 0.003, -0.025, 0.0)),
    # A round badge on the front of the chest: the torso sphere is the same all round.
    PropSpec("badge", "chest", "sphere", (0.05,), (_CHEST - 0.034, 0.01, 0.0)),
)

# The quadruped's base is y-up with +z forward (its front legs are at +z) and -x to its
# right; its centre of mass sits 0.03 m above, 0.044 m ahead of the base link's origin.
QUADRUPED_PROPS = (
    # Low and close over the front of the body: a head held further out would leave the
    # view that fits the figure (HALF_EXTENT in world.py) in one sample in seven (measured).
    PropSpec("head", "base", "sphere", (0.075,), (0.0, 0.05, 0.29)),
    PropSpec("head", "base", "box", (0.035, 0.028, 0.045), (0.0, 0.03, 0.37)),
    PropSpec("nose", "base", "sphere", (0.02,), (0.0, 0.04, 0.41)),
    PropSpec("ear", "base", "box", (0.014, 0.035, 0.02), (0.045, 0.125, 0.27)),
    PropSpec("ear", "base", "box", (0.014, 0.035, 0.02), (-0.045, 0.125, 0.27)),
)

PROPS = {"humanoid": HUMANOID_PROPS, "quadruped": QUADRUPED_PROPS}
"""Category -> its props."""


@dataclass(frozen=True)
class Prop:
    """A prop's body in the client that holds its figure."""

    spec: PropSpec
    body_id: int


def add_props(figure: Figure) -> tuple[Prop, ...]:
    """Create the props of `figure`'s category in its client (once per renderer)."""
    props = []
    for spec in PROPS[figure.category]:
        if spec.link != "base" and spec.link not in figure.link_indices:
            raise SyntheticWorldError(f"prop {spec.part!r}: {figure.category} has no link {spec.link!r}")
        if spec.shape == "sphere":
            look = pb.createVisualShape(pb.GEOM_SPHERE, radius=spec.size[0], physicsClientId=figure.client_id)
        elif spec.shape == "box":
            look = pb.createVisualShape(
                pb.GEOM_BOX, halfExtents=list(spec.size), physicsClientId=figure.client_id
            )
        else:
            raise SyntheticWorldError(f"prop shape must be 'sphere' or 'box', got {spec.shape!r}")
        body = pb.createMultiBody(
            baseMass=0.0,
            baseCollisionShapeIndex=-1,
            baseVisualShapeIndex=look,
            physicsClientId=figure.client_id,
        )
        props.append(Prop(spec, body))
    return tuple(props)


def link_pose(figure: Figure, link: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """World position (3,) and orientation (x, y, z, w) of a link's centre-of-mass frame."""
    client = figure.client_id
    if link == "base":
        return pb.getBasePositionAndOrientation(figure.body_id, physicsClientId=client)
    state = pb.getLinkState(
        figure.body_id, figure.link_indices[link], computeForwardKinematics=True, physicsClientId=client
    )
    return state[0], state[1]


def place_props(figure: Figure, props: tuple[Prop, ...]) -> np.ndarray:
    """Move every prop onto its link in the figure's current pose. Returns centres (P, 3)."""
    client = figure.client_id
    poses = {link: link_pose(figure, link) for link in {prop.spec.link for prop in props}}
    centres = []
    for prop in props:
        position, orientation = pb.multiplyTransforms(
            *poses[prop.spec.link], prop.spec.offset, (0.0, 0.0, 0.0, 1.0), physicsClientId=client
        )
        pb.resetBasePositionAndOrientation(prop.body_id, position, orientation, physicsClientId=client)
        centres.append(position)
    return np.asarray(centres, dtype=np.float64).reshape(len(props), 3)
