"""Human3.6M in the widely used preprocessed layout (VideoPose3D's data_3d_h36m.npz).

Layout read (ROOT is the folder given as --source h36m:ROOT):

    ROOT/data_3d_h36m.npz
        positions_3d: {subject: {action: (F, 32, 3) float32}}, world positions in metres
        at 50 Hz, as written by VideoPose3D's data/prepare_data_h36m.py (action names
        such as 'Walking 1', 'WalkDog', 'Photo').
    ROOT/cameras.json
        {subject: {camera_id: {"orientation": [w, x, y, z], "translation": [x, y, z] (mm),
        "focal_length": [fx, fy], "center": [cx, cy], "res_w": W, "res_h": H}}};
        extra keys (radial_distortion, tangential_distortion, azimuth) are ignored. These
        are VideoPose3D's hard-coded values (common/h36m_dataset.py:
        h36m_cameras_extrinsic_params merged with h36m_cameras_intrinsic_params, one
        entry per camera, in pixels and millimetres as printed there) dumped to JSON.
    ROOT/images/<subject>/<action>.<camera_id>/<frame:06d>.jpg
        the video frames, numbered from 0 so that file N is row N of the npz (extract
        with e.g. `ffmpeg -i "Walking 1.54138969.mp4" -start_number 0 %06d.jpg`).
    ROOT/masks/<subject>/<action>.<camera_id>/<frame:06d>.png  (optional)
        foreground masks with the same naming; when ROOT/masks exists, every sample uses
        its mask (background made white) and a missing mask fails that sample.

Protocol: train subjects S1 S5 S6 S7 S8, test S9 S11; the 17 joints VideoPose3D keeps
(the 32 minus indices 4 5 9 10 11 16 20 21 22 23 24 28 29 30 31), named as in
Martinez et al.'s 3d-pose-baseline. Default stride 5 (every 5th frame: 10 Hz), since
neighbouring 50 Hz frames are nearly identical.

Ground truth per (subject, action, camera, frame): the 17 joints in that camera's frame
(metres, OpenCV axes), their pinhole projection in source pixels (distortion ignored,
see h36m_cameras), visible when in front of the camera and inside the image (Human3.6M
has no occlusion labels), and the crop box: the tight box of the projected joints,
each side moved out by BOX_MARGIN of its longer side (joints are bone ends: the body
reaches beyond them), clamped to the image. Frames whose image file is missing are
still listed; stage one records them as failed.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from cache_schema import GroundTruthSpec
from stages.datasets.annotations import INDEX_TO_CORNER, SourceAnnotation, box_around_points
from stages.datasets.errors import AnnotationError
from stages.datasets.files import require_file
from stages.datasets.h36m_cameras import H36MCamera, project_pinhole, read_cameras, world_to_camera
from stages.datasets.preparation import BACKGROUND_MASK, BACKGROUND_PHOTO
from stages.datasets.safe_npz import read_pickled_member
from stages.datasets.selection import DatasetSelection, DatasetSources, dataset_record
from stages.errors import ConfigError
from stages.sources import ImageSource

LAYOUT = """
ROOT/data_3d_h36m.npz       positions_3d: {subject: {action: (F, 32, 3) world metres}}
ROOT/cameras.json           {subject: {camera_id: {orientation [w, x, y, z], translation (mm),
                                                   focal_length [fx, fy], center [cx, cy], res_w, res_h}}}
ROOT/images/<subject>/<action>.<camera_id>/<frame:06d>.jpg   frame = 0-based row of the npz (50 Hz)
ROOT/masks/<subject>/<action>.<camera_id>/<frame:06d>.png    optional foreground masks
"""
SUBJECTS = {"train": ("S1", "S5", "S6", "S7", "S8"), "test": ("S9", "S11")}
REMOVED_JOINTS = (4, 5, 9, 10, 11, 16, 20, 21, 22, 23, 24, 28, 29, 30, 31)
KEPT_JOINTS = tuple(i for i in range(32) if i not in REMOVED_JOINTS)
JOINT_NAMES = (
    "Hip",
    "RHip",
    "RKnee",
    "RFoot",
    "LHip",
    "LKnee",
    "LFoot",
    "Spine",
    "Thorax",
    "Neck/Nose",
    "Head",
    "LShoulder",
    "LElbow",
    "LWrist",
    "RShoulder",
    "RElbow",
    "RWrist",
)
PAPER_ACTIONS = ("Directions", "Discussion", "Posing", "Waiting", "Greeting", "Walking")
DEFAULT_STRIDE = 5
BOX_MARGIN = 0.1
"""Each side of the joints' tight box moves out by this share of the box's longer side."""


def action_base_name(action: str) -> str:
    """'Walking 1' -> 'Walking', 'WalkDog' -> 'WalkDog': the name before a space or digit."""
    match = re.match(r"[^\s\d]+", action)
    return match.group(0) if match else action


def select_actions(available: list[str], actions: str) -> list[str]:
    """The actions of `available` that 'all', 'paper' or a comma list of names selects.

    Names match an action's base name or its full name exactly ('Walking' selects
    'Walking' and 'Walking 1', never 'WalkDog' or 'WalkTogether').
    """
    if actions == "all":
        return list(available)
    wanted = (
        PAPER_ACTIONS if actions == "paper" else tuple(a.strip() for a in actions.split(",") if a.strip())
    )
    if not wanted:
        raise ConfigError(f"--actions must be 'all', 'paper' or a comma list of names, got {actions!r}")
    unknown = [w for w in wanted if not any(w in (a, action_base_name(a)) for a in available)]
    if unknown and actions != "paper":
        bases = sorted({action_base_name(a) for a in available})
        raise ConfigError(
            f"--actions: no action named {', '.join(unknown)}; the data has: {', '.join(bases)}"
        )
    return [a for a in available if a in wanted or action_base_name(a) in wanted]


def read_positions(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """positions_3d of data_3d_h36m.npz: subject -> action -> (F, 32, 3) world metres.

    The file holds a pickled dict (VideoPose3D's format); `read_pickled_member` interprets
    its pickle opcodes itself, building only dicts, strings, numbers and numeric numpy arrays,
    and never unpickles it, so a crafted file cannot run code.
    """
    try:
        data = read_pickled_member(path, "positions_3d")
    except ValueError as exc:
        raise AnnotationError(str(exc)) from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: positions_3d must hold a dict of subjects, got {type(data).__name__}")
    positions: dict[str, dict[str, np.ndarray]] = {}
    for subject, actions in data.items():
        if not isinstance(actions, dict):
            raise AnnotationError(f"{path}: positions_3d/{subject} must be a dict of actions")
        positions[str(subject)] = {}
        for action, array in actions.items():
            array = np.asarray(array)
            if array.ndim != 3 or array.shape[1:] != (32, 3) or array.dtype.kind != "f":
                raise AnnotationError(
                    f"{path}: positions_3d/{subject}/{action}: expected (F, 32, 3) float positions, "
                    f"got {array.shape} {array.dtype}"
                )
            positions[str(subject)][str(action)] = array
    return positions


def frame_annotations(
    world: np.ndarray, camera: H36MCamera, mask_paths: list[Path] | None
) -> list[SourceAnnotation]:
    """Ground truth of F frames seen by one camera. world: (F, 32, 3) metres."""
    joints_world = world[:, KEPT_JOINTS].astype(np.float64)
    joints_cam = world_to_camera(
        joints_world, np.array(camera.orientation), np.array(camera.translation_mm) / 1000.0
    )
    uv = project_pinhole(joints_cam, np.array(camera.focal_length), np.array(camera.center)) + INDEX_TO_CORNER
    in_front = joints_cam[..., 2] > 0
    uv = np.where(in_front[..., None], uv, 0.0)
    inside = np.all((uv >= 0) & (uv <= np.array([camera.width, camera.height])), axis=-1)
    visible = in_front & inside
    out = []
    for frame in range(len(world)):
        out.append(
            SourceAnnotation(
                joints_3d=joints_cam[frame],
                joints_2d=uv[frame],
                visible=visible[frame],
                box=box_around_points(uv[frame], visible[frame], BOX_MARGIN, camera.width, camera.height),
                mask_path=None if mask_paths is None else mask_paths[frame],
            )
        )
    return out


def read_h36m(root: Path, selection: DatasetSelection) -> DatasetSources:
    """The selected frames of Human3.6M as annotated image sources (see the module docstring)."""
    root = Path(root)
    positions = read_positions(require_file(root / "data_3d_h36m.npz", "h36m", LAYOUT))
    cameras_path = require_file(root / "cameras.json", "h36m", LAYOUT)
    cameras = read_cameras(cameras_path)
    subjects = [s for s in SUBJECTS[selection.split] if s in positions]
    if not subjects:
        raise AnnotationError(
            f"{root / 'data_3d_h36m.npz'}: holds none of the {selection.split} subjects "
            f"{', '.join(SUBJECTS[selection.split])} (it has: {', '.join(positions)})"
        )
    for subject in subjects:
        if subject not in cameras:
            raise AnnotationError(
                f"{cameras_path}: no cameras for subject {subject} (it has: {', '.join(cameras)})"
            )
    available = sorted({action for s in subjects for action in positions[s]})
    actions = select_actions(available, selection.actions)
    if selection.cameras is not None:
        known = sorted({c for s in subjects for c in cameras[s]})
        unknown = [c for c in selection.cameras if c not in known]
        if unknown:
            raise ConfigError(
                f"--cameras: unknown camera id {', '.join(unknown)}; choose from {', '.join(known)}"
            )
    stride = selection.stride_or(DEFAULT_STRIDE)
    use_masks = (root / "masks").is_dir()

    sources: list[ImageSource] = []
    for subject in subjects:
        for action in sorted(a for a in positions[subject] if a in actions):
            frames = list(range(0, len(positions[subject][action]), stride))
            for camera_id, camera in cameras[subject].items():
                if selection.cameras is not None and camera_id not in selection.cameras:
                    continue
                folder = f"{subject}/{action}.{camera_id}"
                masks = [root / "masks" / folder / f"{f:06d}.png" for f in frames] if use_masks else None
                annotations = frame_annotations(positions[subject][action][frames], camera, masks)
                for frame, annotation in zip(frames, annotations, strict=True):
                    sample_id = f"{folder}/{frame:06d}"
                    sources.append(ImageSource(sample_id, root / "images" / f"{sample_id}.jpg", annotation))
    if not sources:
        raise ConfigError(
            f"h36m:{root}: the selection (split {selection.split}, actions {selection.actions!r}, "
            f"cameras {selection.cameras}) holds no frame"
        )
    record = dataset_record(
        "h36m",
        content={
            "joints_3d_frame": "input_camera",
            "background": BACKGROUND_MASK if use_masks else BACKGROUND_PHOTO,
            "box_margin": BOX_MARGIN,
            "projection": "pinhole, lens distortion ignored",
        },
        provenance={
            "root": str(root.resolve()),
            "split": selection.split,
            "subjects": subjects,
            "stride": stride,
            "actions": selection.actions,
            "actions_read": actions,
            "cameras": list(selection.cameras) if selection.cameras is not None else "all",
            "frame_numbering": "0-based row of data_3d_h36m.npz (50 Hz)",
        },
    )
    return DatasetSources(tuple(sources), GroundTruthSpec(JOINT_NAMES, has_3d=True, has_2d=True), record)
