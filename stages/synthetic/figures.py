"""Articulated figures in a pybullet client: load, colour, pose, read 3D keypoints.

Output frame = stages/cameras.py's world: right-handed, +z up, metres, the figure's
bounding box centred on the origin (before the optional random shift).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pybullet as pb

from stages.rotations import quaternion_multiply
from stages.synthetic.errors import SyntheticWorldError
from stages.synthetic.mocap import CLIP_LAYOUTS, Pose
from stages.synthetic.quiet import c_stdout_silenced


@dataclass(frozen=True)
class FigureSpec:
    """What to load for a category and which points are its keypoints."""

    urdf: str
    """Path relative to pybullet_data."""
    scale: float
    """globalScaling at load time, so that lengths come out in metres."""
    keypoints: tuple[tuple[str, str], ...]
    """(keypoint name, link name); 'base' is the root link. A link's keypoint is its
    joint frame origin (URDF link frame), except 'head' which is the neck link's centre
    of mass (the head sphere's centre)."""
    joint_directions: tuple[float, ...] = ()
    """Per clip angle, sign to the URDF angle (empty: all +1)."""
    joint_offsets: tuple[float, ...] = ()
    """Per clip angle, radians added after the sign (empty: all 0)."""


# humanoid.urdf at scale 1 is 6.476 units tall standing with all joints at zero (measured
# from its collision AABBs), so this scale gives an adult of 1.70 m.
HUMANOID = FigureSpec(
    urdf="humanoid/humanoid.urdf",
    scale=1.70 / 6.476,
    keypoints=(
        ("pelvis", "base"),
        ("chest", "chest"),
        ("neck", "neck"),
        ("head", "head"),
        ("right_shoulder", "right_shoulder"),
        ("right_elbow", "right_elbow"),
        ("right_wrist", "right_wrist"),
        ("left_shoulder", "left_shoulder"),
        ("left_elbow", "left_elbow"),
        ("left_wrist", "left_wrist"),
        ("right_hip", "right_hip"),
        ("right_knee", "right_knee"),
        ("right_ankle", "right_ankle"),
        ("left_hip", "left_hip"),
        ("left_knee", "left_knee"),
        ("left_ankle", "left_ankle"),
    ),
)

_LEGS = ("FR", "FL", "RR", "RL")
# laikago_toes.urdf is already in metres (a 0.57 m tall, 0.75 m long robot dog): scale 1.
# Directions and offsets map laikago_walk.txt angles to URDF angles, as pybullet's
# testLaikago.py does; with them the toes touch the ground in turn.
QUADRUPED = FigureSpec(
    urdf="laikago/laikago_toes.urdf",
    scale=1.0,
    keypoints=(("body", "base"),)
    + tuple(
        (f"{leg}_{part}", f"{leg}_{link}")
        for leg in _LEGS
        for part, link in (("hip", "upper_leg"), ("knee", "lower_leg"))
    )
    + tuple((f"{leg}_foot", f"toe{leg}") for leg in _LEGS),
    joint_directions=(-1, 1, 1, 1, 1, 1, -1, 1, 1, 1, 1, 1),
    joint_offsets=(0.0, -0.7, 0.7) * 4,
)

FIGURE_SPECS = {"humanoid": HUMANOID, "quadruped": QUADRUPED}
"""Category -> figure."""

# DeepMimic humanoid clips are y-up; +90 deg about x takes their +y to our +z.
_Y_UP_TO_Z_UP = np.array([np.sqrt(0.5), np.sqrt(0.5), 0.0, 0.0])  # (w, x, y, z)


@dataclass(frozen=True)
class Figure:
    """A loaded figure: its body in a client and how to read its keypoints."""

    category: str
    """'humanoid' or 'quadruped'."""
    client_id: int
    """pybullet physics client holding the body."""
    body_id: int
    """Body unique id in that client."""
    keypoint_names: tuple[str, ...]
    """(J,) names of the keypoints pose_figure returns, in order."""
    joint_indices: dict
    """URDF joint name -> joint index."""
    link_indices: dict
    """URDF link name -> link index (= index of the joint above it)."""


def spec_for(category: str) -> FigureSpec:
    """The figure spec of `category`; raises SyntheticWorldError naming the known ones."""
    if category not in FIGURE_SPECS:
        raise SyntheticWorldError(f"category must be one of {sorted(FIGURE_SPECS)}, got {category!r}")
    return FIGURE_SPECS[category]


def load_figure(client_id: int, category: str) -> Figure:
    """Load the figure of `category` ('humanoid' or 'quadruped') into `client_id`."""
    import pybullet_data

    spec = spec_for(category)
    pb.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=client_id)
    with c_stdout_silenced():
        body = pb.loadURDF(spec.urdf, globalScaling=spec.scale, physicsClientId=client_id)
    infos = [
        pb.getJointInfo(body, j, physicsClientId=client_id)
        for j in range(pb.getNumJoints(body, physicsClientId=client_id))
    ]
    names = tuple(name for name, _ in spec.keypoints)
    return Figure(
        category=category,
        client_id=client_id,
        body_id=body,
        keypoint_names=names,
        joint_indices={info[1].decode(): info[0] for info in infos},
        link_indices={info[12].decode(): info[0] for info in infos},
    )


def draw_link_colours(figure: Figure, rng: np.random.Generator) -> np.ndarray:
    """A random colour per link, base first: (links + 1, 3) in [0.05, 0.85].

    World version 1 paints these; version 2 draws them too, as its per-link jitter, so
    that what the generator draws next (yaw and shift) is the same in both versions.
    """
    # Kept away from white so no part vanishes into the white background.
    return rng.uniform(0.05, 0.85, size=(len(figure.joint_indices) + 1, 3))


def paint_links(figure: Figure, colours: np.ndarray) -> None:
    """Give link k - 1 the opaque colour colours[k] (links + 1, 3) in [0, 1]."""
    if colours.shape != (len(figure.joint_indices) + 1, 3):
        raise SyntheticWorldError(
            f"colours must be ({len(figure.joint_indices) + 1}, 3), got {colours.shape}"
        )
    for link, rgb in enumerate(colours, start=-1):
        pb.changeVisualShape(
            figure.body_id, link, rgbaColor=[*map(float, rgb), 1.0], physicsClientId=figure.client_id
        )


def randomise_colours(figure: Figure, rng: np.random.Generator) -> np.ndarray:
    """Give every link a random opaque colour (version 1). Returns the colours (links + 1, 3)."""
    colours = draw_link_colours(figure, rng)
    paint_links(figure, colours)
    return colours


def _xyzw(q: np.ndarray) -> list[float]:
    return [float(q[1]), float(q[2]), float(q[3]), float(q[0])]


def _set_joints(figure: Figure, pose: Pose, spec: FigureSpec) -> None:
    offset = 0
    for k, (name, dofs) in enumerate(zip(pose.layout.joint_names, pose.layout.joint_dofs, strict=True)):
        value = pose.joint_values[offset : offset + dofs]
        offset += dofs
        index = figure.joint_indices[name]
        if dofs == 4:
            pb.resetJointStateMultiDof(figure.body_id, index, _xyzw(value), physicsClientId=figure.client_id)
        else:
            sign = spec.joint_directions[k] if spec.joint_directions else 1.0
            shift = spec.joint_offsets[k] if spec.joint_offsets else 0.0
            pb.resetJointState(
                figure.body_id, index, sign * float(value[0]) + shift, physicsClientId=figure.client_id
            )


def figure_bounds(figure: Figure) -> tuple[np.ndarray, np.ndarray]:
    """World AABB (min (3,), max (3,)) of all links' collision shapes."""
    boxes = [
        pb.getAABB(figure.body_id, link, physicsClientId=figure.client_id)
        for link in range(-1, len(figure.joint_indices))
    ]
    return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)


def keypoints_of(figure: Figure) -> np.ndarray:
    """World positions (J, 3) of the figure's keypoints in its current state."""
    spec = spec_for(figure.category)
    points = []
    for _, link in spec.keypoints:
        if link == "base":
            points.append(
                pb.getBasePositionAndOrientation(figure.body_id, physicsClientId=figure.client_id)[0]
            )
            continue
        index = figure.link_indices["neck" if link == "head" else link]
        state = pb.getLinkState(
            figure.body_id, index, computeForwardKinematics=True, physicsClientId=figure.client_id
        )
        points.append(state[0] if link == "head" else state[4])
    return np.asarray(points, dtype=np.float64)


def pose_figure(
    figure: Figure, pose: Pose, rng: np.random.Generator | None = None, max_shift: float = 0.05
) -> np.ndarray:
    """Put the figure in `pose`, centred on the origin; return keypoints (J, 3), metres.

    The clip's root translation is dropped (the bounding box is recentred every time);
    its root rotation is kept, converted to z-up. With `rng`, the figure also gets a
    uniform random yaw about +z and a uniform shift in [-max_shift, max_shift]^3.
    """
    spec = spec_for(figure.category)
    if pose.layout is not CLIP_LAYOUTS[figure.category]:
        raise SyntheticWorldError(f"pose is for another category's layout than {figure.category!r}")
    if max_shift < 0:
        raise SyntheticWorldError(f"max_shift must be >= 0, got {max_shift}")
    rotation = pose.root_rotation
    if pose.layout.up_axis == "y":
        rotation = quaternion_multiply(_Y_UP_TO_Z_UP, rotation)
    yaw, shift = 0.0, np.zeros(3)
    if rng is not None:
        yaw = rng.uniform(0.0, 2.0 * np.pi)
        shift = rng.uniform(-max_shift, max_shift, size=3)
    rotation = quaternion_multiply(np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]), rotation)
    client = figure.client_id
    pb.resetBasePositionAndOrientation(
        figure.body_id, [0.0, 0.0, 0.0], _xyzw(rotation), physicsClientId=client
    )
    _set_joints(figure, pose, spec)
    low, high = figure_bounds(figure)
    centre = 0.5 * (low + high)
    pb.resetBasePositionAndOrientation(
        figure.body_id, list(shift - centre), _xyzw(rotation), physicsClientId=client
    )
    return keypoints_of(figure)
