"""DeepMimic motion clips: reading and interpolation, pure numpy.

A clip file is JSON {"Loop": "wrap" | "none", "Frames": [[duration, root xyz,
root quaternion, joint values...], ...]}; `duration` is the time from that
frame to the next. Root positions are in the clip's own world frame (y-up for
humanoid3d clips, z-up for laikago_walk, see `CLIP_LAYOUTS`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.synthetic.errors import SyntheticWorldError


@dataclass(frozen=True)
class ClipLayout:
    """How the joint values after the root are laid out, and the clip's up axis."""

    joint_names: tuple[str, ...]
    """URDF joint names in the order the clip stores them."""
    joint_dofs: tuple[int, ...]
    """Values per joint: 4 is a quaternion (w, x, y, z) of a spherical joint, 1 an angle."""
    up_axis: str
    """'y' or 'z': the clip's world up axis."""
    root_quaternion_order: str
    """'wxyz' or 'xyzw': how the file stores the root quaternion (frame values 4..7)."""


# Checked against humanoid/humanoid.urdf (spherical chest, neck, hips, ankles,
# shoulders; revolute knees and elbows) and pybullet's humanoid_pose_interpolator.py,
# which reads the same indices (chest at 8..11, right knee at 20, left elbow at 43).
HUMANOID_LAYOUT = ClipLayout(
    joint_names=(
        "chest",
        "neck",
        "right_hip",
        "right_knee",
        "right_ankle",
        "right_shoulder",
        "right_elbow",
        "left_hip",
        "left_knee",
        "left_ankle",
        "left_shoulder",
        "left_elbow",
    ),
    joint_dofs=(4, 4, 4, 1, 4, 4, 1, 4, 1, 4, 4, 1),
    up_axis="y",
    root_quaternion_order="wxyz",
)

# laikago_walk.txt: 12 angles in the URDF's revolute order (front-right hip, upper, lower
# leg, then front-left, rear-right, rear-left), as pybullet's testLaikago.py applies them
# (URDF angle = direction * clip angle + offset, see figures.py). Its root pose is z-up.
QUADRUPED_LAYOUT = ClipLayout(
    joint_names=tuple(
        f"{leg}_{part}"
        for leg in ("FR", "FL", "RR", "RL")
        for part in (
            "hip_motor_2_chassis_joint",
            "upper_leg_2_hip_motor_joint",
            "lower_leg_2_upper_leg_joint",
        )
    ),
    joint_dofs=(1,) * 12,
    up_axis="z",
    # Read as (w, x, y, z), as pybullet's quadrupedPoseInterpolator.py does, the body
    # lies on its side; read as (x, y, z, w) it stands with all toes within 7 cm of
    # z = 0 through the walk (checked by posing laikago_toes.urdf), so the file is xyzw.
    root_quaternion_order="xyzw",
)

CLIP_LAYOUTS = {"humanoid": HUMANOID_LAYOUT, "quadruped": QUADRUPED_LAYOUT}
"""Category -> layout of its clips."""


@dataclass(frozen=True)
class MotionClip:
    """A DeepMimic clip as arrays. F is the number of frames."""

    name: str
    """File stem, e.g. 'humanoid3d_walk'."""
    loops: bool
    """True when the clip wraps ("Loop": "wrap"); pose_at then accepts any time."""
    frame_times: np.ndarray
    """(F,) start time of each frame, seconds; frame_times[0] = 0."""
    root_positions: np.ndarray
    """(F, 3) root position in the clip's world frame."""
    root_rotations: np.ndarray
    """(F, 4) root orientation quaternion (w, x, y, z), unit norm, whatever the file order."""
    joint_values: np.ndarray
    """(F, D) joint values laid out as `layout` says."""
    layout: ClipLayout
    """Joint names, dofs and up axis of this clip."""

    @property
    def duration(self) -> float:
        """Time of the last frame, seconds (one full cycle for a looping clip)."""
        return float(self.frame_times[-1])


def motions_dir() -> Path:
    """Folder of the DeepMimic clips shipped with pybullet_data."""
    import pybullet_data

    return Path(pybullet_data.getDataPath()) / "data" / "motions"


def layout_for_clip(name: str) -> ClipLayout:
    """The layout of a clip named like its file stem."""
    if name.startswith("humanoid3d_"):
        return HUMANOID_LAYOUT
    if name.startswith("laikago_"):
        return QUADRUPED_LAYOUT
    raise SyntheticWorldError(f"clip name must start with 'humanoid3d_' or 'laikago_', got {name!r}")


def load_clip(name: str, folder: Path | None = None) -> MotionClip:
    """Read clip `name` (file stem, e.g. 'humanoid3d_walk') from `folder` (default pybullet's)."""
    layout = layout_for_clip(name)
    folder = motions_dir() if folder is None else Path(folder)
    path = folder / f"{name}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.txt"))
        raise SyntheticWorldError(f"unknown clip name {name!r}: no {path}; known clips: {known}")
    data = json.loads(path.read_text())
    frames = np.asarray(data["Frames"], dtype=np.float64)
    width = 8 + sum(layout.joint_dofs)
    if frames.ndim != 2 or frames.shape[1] != width or len(frames) < 2:
        raise SyntheticWorldError(f"clip {path} must hold >= 2 frames of {width} values, got {frames.shape}")
    rotations = frames[:, 4:8]
    if layout.root_quaternion_order == "xyzw":
        rotations = rotations[:, [3, 0, 1, 2]]
    rotations = rotations / np.linalg.norm(rotations, axis=1, keepdims=True)
    # The last frame's duration is unused: it ends the clip (or equals frame 0 when looping).
    times = np.concatenate([[0.0], np.cumsum(frames[:-1, 0])])
    return MotionClip(
        name=name,
        loops=data.get("Loop", "none") == "wrap",
        frame_times=times,
        root_positions=frames[:, 1:4].copy(),
        root_rotations=rotations,
        joint_values=frames[:, 8:].copy(),
        layout=layout,
    )


def slerp(q0: np.ndarray, q1: np.ndarray, fraction: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions (4,) along the shorter arc."""
    q0 = q0 / np.linalg.norm(q0)
    q1 = q1 / np.linalg.norm(q1)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # q and -q are the same rotation; take the short way round
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly equal: linear is exact enough and avoids 0/0
        out = q0 + fraction * (q1 - q0)
        return out / np.linalg.norm(out)
    angle = np.arccos(dot)
    return (np.sin((1.0 - fraction) * angle) * q0 + np.sin(fraction * angle) * q1) / np.sin(angle)


@dataclass(frozen=True)
class Pose:
    """One interpolated pose of a clip, in the clip's world frame."""

    root_position: np.ndarray
    """(3,) root position."""
    root_rotation: np.ndarray
    """(4,) root quaternion (w, x, y, z)."""
    joint_values: np.ndarray
    """(D,) joint values laid out as `layout` says (quaternions w, x, y, z)."""
    layout: ClipLayout
    """Layout of `joint_values`."""


def pose_at(clip: MotionClip, t: float) -> Pose:
    """The clip's pose at time `t` seconds.

    Looping clips wrap t into [0, duration); others need 0 <= t <= duration. Positions
    and 1-DoF angles are linear between frames, quaternions are slerped.
    """
    if clip.loops:
        t = float(np.mod(t, clip.duration))
    elif not 0.0 <= t <= clip.duration:
        raise SyntheticWorldError(
            f"t must be in [0, {clip.duration}] for non-looping clip {clip.name!r}, got {t}"
        )
    index = int(np.clip(np.searchsorted(clip.frame_times, t, side="right") - 1, 0, len(clip.frame_times) - 2))
    start, end = clip.frame_times[index], clip.frame_times[index + 1]
    fraction = float(np.clip((t - start) / (end - start), 0.0, 1.0))
    a, b = clip.joint_values[index], clip.joint_values[index + 1]
    values = a + fraction * (b - a)
    offset = 0
    for dofs in clip.layout.joint_dofs:
        if dofs == 4:
            values[offset : offset + 4] = slerp(a[offset : offset + 4], b[offset : offset + 4], fraction)
        offset += dofs
    root = clip.root_positions
    return Pose(
        root_position=root[index] + fraction * (root[index + 1] - root[index]),
        root_rotation=slerp(clip.root_rotations[index], clip.root_rotations[index + 1], fraction),
        joint_values=values,
        layout=clip.layout,
    )


def rest_pose(layout: ClipLayout) -> Pose:
    """Identity root and joint rotations, zero angles (the humanoid stands, arms down)."""
    values = np.concatenate([[1.0, 0.0, 0.0, 0.0] if dofs == 4 else [0.0] for dofs in layout.joint_dofs])
    return Pose(
        root_position=np.zeros(3),
        root_rotation=np.array([1.0, 0.0, 0.0, 0.0]),
        joint_values=values,
        layout=layout,
    )
