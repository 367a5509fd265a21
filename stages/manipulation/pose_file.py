"""Pose files: JSON that says how to move a rig, checked against the rig it is applied to.

Schema (every section optional; coordinates in the cache's world frame, +z up):
    {
      "rotations": {BONE: {"axis": [x, y, z], "degrees": d} | {"quaternion_wxyz": [w, x, y, z]}},
      "targets":   {KEYPOINT: [x, y, z]},       absolute positions, solved by IK
      "offsets":   {KEYPOINT: [dx, dy, dz]},    targets relative to the rest position
      "root":      {"translation": [x, y, z], "rotation": ROTATION, "fit_to_targets": false},
      "ik":        {"iterations": 20, "chain_length": null}
    }
KEYPOINT: an index ("6"), a keypoint name when the rig has names ("left_wrist"), or the
rest pose's extreme along an axis ("max:z" is the highest keypoint, "min:y"), which
names the same body part for any run whose keypoints are unlabelled.
BONE: "PARENT-CHILD" with two KEYPOINTs joined by a tree edge (either order), or
"to:KEYPOINT", the bone ending at that keypoint.
Rotations turn a bone's subtree about its parent joint; targets are then reached by
IK starting from those rotations. "fit_to_targets" first moves the whole object
rigidly onto the targets (used to transfer a whole pose).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stages.manipulation.errors import PoseFileError
from stages.manipulation.kinematics import SkeletonPose, fit_root, solve_targets
from stages.manipulation.rig import Rig
from stages.rotations import axis_angle_to_matrix, quaternion_to_matrix

SECTIONS = ("rotations", "targets", "offsets", "root", "ik")
AXES = {"x": 0, "y": 1, "z": 2}


@dataclass(frozen=True, eq=False)
class PoseRequest:
    """A pose file resolved against one rig."""

    rotations: dict[int, np.ndarray] = field(default_factory=dict)
    """Bone index -> local rotation (3, 3)."""
    targets: dict[int, np.ndarray] = field(default_factory=dict)
    """Keypoint index -> target position (3,) (offsets already added to the rest pose)."""
    root_rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    """(3, 3) about the root keypoint."""
    root_translation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    """(3,)."""
    fit_root_to_targets: bool = False
    """Rigidly align the rest keypoints to the targets before IK."""
    ik_iterations: int = 20
    """CCD sweeps."""
    chain_length: int | None = None
    """Bones above a target that IK may turn (None: all)."""


def keypoint_index(rig: Rig, key: str, where: str) -> int:
    """Resolve a KEYPOINT selector (see the module docstring) or raise naming `where`."""
    n = len(rig.joints)
    text = str(key).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < n:
            raise PoseFileError(f"{where}: keypoint {index} is not in [0, {n})")
        return index
    if text in rig.keypoint_names:
        return rig.keypoint_names.index(text)
    extreme, _, axis = text.partition(":")
    if extreme in ("max", "min") and axis in AXES:
        column = rig.joints[:, AXES[axis]]
        return int(np.argmax(column) if extreme == "max" else np.argmin(column))
    names = f", a name in {list(rig.keypoint_names)}" if rig.keypoint_names else ""
    raise PoseFileError(
        f"{where}: unknown keypoint {text!r}; use an index in [0, {n}){names} or max:z / min:x ..."
    )


def bone_index(rig: Rig, key: str, where: str) -> int:
    """Resolve a BONE selector or raise naming it and the rig's bones."""
    text = str(key).strip()
    if text.startswith("to:"):
        child = keypoint_index(rig, text[3:], where)
        for index, (_, c) in enumerate(rig.bones):
            if c == child:
                return index
        raise PoseFileError(f"{where}: keypoint {child} is the root; no bone ends there")
    parts = text.split("-")
    if len(parts) == 2 and all(parts):
        a, b = (keypoint_index(rig, part, where) for part in parts)
        for index, bone in enumerate(rig.bones):
            if set(bone) == {a, b}:
                return index
    raise PoseFileError(
        f"{where}: unknown bone {text!r}; this rig's bones are {rig.bone_names} "
        "(or use 'to:KEYPOINT' for the bone ending at a keypoint)"
    )


def parse_pose(data: dict[str, Any], rig: Rig, source: str = "pose") -> PoseRequest:
    """Check a pose file's content against `rig`. `source` names the file in errors."""
    if not isinstance(data, dict):
        raise PoseFileError(f"{source}: must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise PoseFileError(f"{source}: unknown sections {unknown}; allowed: {list(SECTIONS)}")
    rotations = {}
    for key, value in _mapping(data, "rotations", source).items():
        where = f"{source}: rotations[{key!r}]"
        rotations[bone_index(rig, key, where)] = _rotation(value, where)
    targets = {}
    for key, value in _mapping(data, "targets", source).items():
        where = f"{source}: targets[{key!r}]"
        targets[keypoint_index(rig, key, where)] = _vector(value, where)
    for key, value in _mapping(data, "offsets", source).items():
        where = f"{source}: offsets[{key!r}]"
        index = keypoint_index(rig, key, where)
        if index in targets:
            raise PoseFileError(f"{where}: keypoint {index} already has a target")
        targets[index] = rig.joints[index] + _vector(value, where)
    root = _mapping(data, "root", source)
    extra = sorted(set(root) - {"translation", "rotation", "fit_to_targets"})
    if extra:
        raise PoseFileError(f"{source}: root has unknown keys {extra}")
    ik = _mapping(data, "ik", source)
    extra = sorted(set(ik) - {"iterations", "chain_length"})
    if extra:
        raise PoseFileError(f"{source}: ik has unknown keys {extra}")
    chain = ik.get("chain_length")
    iterations = ik.get("iterations", 20)
    if not isinstance(iterations, int) or iterations < 0:
        raise PoseFileError(f"{source}: ik.iterations must be an integer >= 0, got {iterations!r}")
    if chain is not None and (not isinstance(chain, int) or chain < 1):
        raise PoseFileError(f"{source}: ik.chain_length must be null or an integer >= 1, got {chain!r}")
    fit = root.get("fit_to_targets", False)
    if fit and not targets:
        raise PoseFileError(f"{source}: root.fit_to_targets needs targets or offsets")
    return PoseRequest(
        rotations=rotations,
        targets=targets,
        root_rotation=_rotation(root["rotation"], f"{source}: root.rotation")
        if "rotation" in root
        else np.eye(3),
        root_translation=_vector(root["translation"], f"{source}: root.translation")
        if "translation" in root
        else np.zeros(3),
        fit_root_to_targets=bool(fit),
        ik_iterations=iterations,
        chain_length=chain,
    )


def load_pose(path: str | Path, rig: Rig) -> PoseRequest:
    """Read and check a pose JSON file against `rig`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise PoseFileError(f"{path}: no such pose file") from exc
    except ValueError as exc:
        raise PoseFileError(f"{path}: not valid JSON ({exc})") from exc
    return parse_pose(data, rig, str(path))


def solve_pose(rig: Rig, request: PoseRequest) -> SkeletonPose:
    """The skeleton pose a request asks for: root, then bone rotations, then IK to the targets."""
    local = np.broadcast_to(np.eye(3), (len(rig.bones), 3, 3)).copy()
    for index, rotation in request.rotations.items():
        local[index] = rotation
    root_rotation, root_translation = request.root_rotation, request.root_translation
    if request.fit_root_to_targets:
        root_rotation, root_translation = fit_root(rig, request.targets)
        if rig.root in request.targets:
            # IK turns bones about their parent joints and never moves the root keypoint.
            root_translation = request.targets[rig.root] - rig.joints[rig.root]
    pose = SkeletonPose(local, root_rotation, root_translation)
    if not request.targets:
        return pose
    return solve_targets(rig, request.targets, pose, request.ik_iterations, request.chain_length)


def _mapping(data: dict[str, Any], section: str, source: str) -> dict[str, Any]:
    value = data.get(section, {})
    if not isinstance(value, dict):
        raise PoseFileError(f"{source}: {section} must be a JSON object, got {type(value).__name__}")
    return value


def _vector(value: Any, where: str) -> np.ndarray:
    try:
        vector = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PoseFileError(f"{where}: expected [x, y, z], got {value!r}") from exc
    if vector.shape != (3,) or not np.all(np.isfinite(vector)):
        raise PoseFileError(f"{where}: expected [x, y, z] (3 finite numbers), got {value!r}")
    return vector


def _rotation(value: Any, where: str) -> np.ndarray:
    if isinstance(value, dict) and set(value) == {"axis", "degrees"}:
        axis = _vector(value["axis"], where + ".axis")
        if not np.any(axis):
            raise PoseFileError(f"{where}.axis must be non-zero")
        try:
            degrees = float(value["degrees"])
        except (TypeError, ValueError) as exc:
            raise PoseFileError(f"{where}.degrees must be a number, got {value['degrees']!r}") from exc
        return axis_angle_to_matrix(axis, np.deg2rad(degrees))
    if isinstance(value, dict) and set(value) == {"quaternion_wxyz"}:
        quaternion = np.asarray(value["quaternion_wxyz"], dtype=np.float64)
        if quaternion.shape != (4,) or not np.linalg.norm(quaternion) > 0:
            raise PoseFileError(f"{where}.quaternion_wxyz must be 4 numbers, not all zero")
        return quaternion_to_matrix(quaternion)
    raise PoseFileError(
        f"{where}: a rotation is {{'axis': [x, y, z], 'degrees': d}} or {{'quaternion_wxyz': [w, x, y, z]}}, "
        f"got {value!r}"
    )
