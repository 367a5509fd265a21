"""Human3.6M cameras: ROOT/cameras.json, and the pure geometry that uses them.

Conventions (those of VideoPose3D's common/camera.py, which the values come from):
`orientation` is a unit quaternion [w, x, y, z] that rotates CAMERA axes into the
world, `translation` is the camera centre in world coordinates in MILLIMETRES, so a
world point X (metres) is X_cam = R(q)^T (X - t / 1000) in the camera's frame. Camera
axes are OpenCV's (x right, y down, z forward) and a camera point projects to the
pixel-index coordinates (fx * x / z + cx, fy * y / z + cy). Lens distortion (present
in the file as radial/tangential coefficients) is ignored: it moves points by a few
pixels near the image border and the cache's cameras are distortion-free pinholes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages import rotations
from stages.datasets.files import json_error, json_numbers, load_json


@dataclass(frozen=True)
class H36MCamera:
    """One calibrated camera of one subject."""

    camera_id: str
    orientation: tuple[float, float, float, float]
    """Unit quaternion [w, x, y, z], camera-to-world rotation."""
    translation_mm: tuple[float, float, float]
    """Camera centre in world coordinates, millimetres."""
    focal_length: tuple[float, float]
    """fx, fy in pixels."""
    center: tuple[float, float]
    """cx, cy in pixel-index coordinates."""
    width: int
    height: int


def read_cameras(path: Path) -> dict[str, dict[str, H36MCamera]]:
    """subject -> camera id -> camera, from ROOT/cameras.json (errors name the file and key)."""
    data = load_json(path)
    if not isinstance(data, dict) or not data:
        raise json_error(path, "(top level)", 'expected an object of subjects, e.g. {"S1": {...}}')
    cameras: dict[str, dict[str, H36MCamera]] = {}
    for subject, per_camera in data.items():
        if not isinstance(per_camera, dict) or not per_camera:
            raise json_error(path, subject, 'expected an object of camera ids, e.g. {"54138969": {...}}')
        cameras[subject] = {}
        for camera_id, fields in per_camera.items():
            key = f"{subject}/{camera_id}"
            if not isinstance(fields, dict):
                raise json_error(path, key, f"expected an object of camera fields, got {fields!r}")
            for name in ("orientation", "translation", "focal_length", "center", "res_w", "res_h"):
                if name not in fields:
                    raise json_error(path, key, f"missing field {name!r}")
            orientation = json_numbers(path, f"{key}/orientation", fields["orientation"], 4)
            norm = float(np.linalg.norm(orientation))
            if abs(norm - 1.0) > 1e-3:
                raise json_error(
                    path, f"{key}/orientation", f"expected a unit quaternion, its norm is {norm:.4f}"
                )
            sizes = []
            for name in ("res_w", "res_h"):
                value = fields[name]
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise json_error(path, f"{key}/{name}", f"expected a positive integer, got {value!r}")
                sizes.append(value)
            focal = json_numbers(path, f"{key}/focal_length", fields["focal_length"], 2)
            if min(focal) <= 0:
                raise json_error(path, f"{key}/focal_length", f"expected positive values, got {focal}")
            qw, qx, qy, qz = (v / norm for v in orientation)
            tx, ty, tz = json_numbers(path, f"{key}/translation", fields["translation"], 3)
            cx, cy = json_numbers(path, f"{key}/center", fields["center"], 2)
            cameras[subject][str(camera_id)] = H36MCamera(
                camera_id=str(camera_id),
                orientation=(qw, qx, qy, qz),
                translation_mm=(tx, ty, tz),
                focal_length=(focal[0], focal[1]),
                center=(cx, cy),
                width=sizes[0],
                height=sizes[1],
            )
    return cameras


def quaternion_to_matrix(quaternion: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) of a unit quaternion (4,) = [w, x, y, z]."""
    q = np.asarray(quaternion, dtype=np.float64)
    if q.shape != (4,):
        raise ValueError(f"quaternion must be (4,) = [w, x, y, z], got {q.shape}")
    return rotations.quaternion_to_matrix(q)


def world_to_camera(points: np.ndarray, orientation: np.ndarray, translation_m: np.ndarray) -> np.ndarray:
    """World points (..., 3) in metres into the camera's frame (..., 3), metres.

    orientation: (4,) camera-to-world quaternion [w, x, y, z]; translation_m: (3,)
    camera centre in the world, metres. X_cam = R^T (X - t).
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim < 1 or points.shape[-1] != 3:
        raise ValueError(f"points must be (..., 3), got {points.shape}")
    translation_m = np.asarray(translation_m, dtype=np.float64)
    if translation_m.shape != (3,):
        raise ValueError(f"translation_m must be (3,), got {translation_m.shape}")
    rotation = quaternion_to_matrix(orientation)
    # Row vectors times R is R^T applied to each point.
    return (points - translation_m) @ rotation


def project_pinhole(points: np.ndarray, focal_length: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Camera points (..., 3) to pixel-index coordinates (..., 2); no distortion.

    focal_length: (2,) fx, fy; center: (2,) cx, cy. Points at z <= 0 give inf/nan.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim < 1 or points.shape[-1] != 3:
        raise ValueError(f"points must be (..., 3), got {points.shape}")
    focal_length = np.asarray(focal_length, dtype=np.float64)
    center = np.asarray(center, dtype=np.float64)
    if focal_length.shape != (2,) or center.shape != (2,):
        raise ValueError(f"focal_length and center must be (2,), got {focal_length.shape} and {center.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return points[..., :2] / points[..., 2:3] * focal_length + center
