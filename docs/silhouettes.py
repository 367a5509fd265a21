"""The project's side of docs/render_gltf.py's comparison: a rigged sample's visual-hull mesh,
posed by `pose`'s kinematics, as a silhouette from one of the cache's cameras, and that camera
as three.js takes it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.manipulate_report import labelled, silhouette_overlay
from stages.manipulation.gltf_export import opengl_camera
from stages.manipulation.kinematics import SkeletonPose, forward_kinematics, linear_blend_skinning
from stages.manipulation.mesh import Mesh, MeshConfig, hull_mesh
from stages.manipulation.pose_file import load_pose, solve_pose
from stages.manipulation.render import triangle_mask
from stages.manipulation.rig import Rig, skinning_weights
from stages.manipulation.sample import read_object_views


@dataclass(frozen=True, eq=False)
class Scene:
    """A rigged mesh, its keyframe poses (rest first, as the export writes them) and one camera."""

    sample_id: str
    rig: Rig
    mesh: Mesh
    weights: np.ndarray
    """(V, N-1): every bone's skinning weight, as `pose` uses them."""
    poses: list[SkeletonPose]
    intrinsics: np.ndarray
    """(3, 3) scaled to `size`."""
    world_to_camera: np.ndarray
    size: int

    @classmethod
    def build(
        cls, rig_path: Path, cache: Path, sample: str, poses: list[Path], voxels: int, view: int, size: int
    ) -> Scene:
        rig = Rig.load(rig_path)
        views = read_object_views(cache, sample)
        if not 0 <= view < len(views.intrinsics):
            raise SystemExit(f"--view {view}: the cache has views 0 .. {len(views.intrinsics) - 1}")
        mesh = hull_mesh(views, MeshConfig(voxels=voxels))  # what `manipulate export` meshes
        skeleton = [SkeletonPose.rest(len(rig.bones))] + [solve_pose(rig, load_pose(p, rig)) for p in poses]
        scale = np.diag([size / views.masks.shape[-1]] * 2 + [1.0])
        return cls(
            views.sample_id,
            rig,
            mesh,
            skinning_weights(mesh.vertices, rig),
            skeleton,
            scale @ views.intrinsics[view],
            views.world_to_camera[view],
            size,
        )

    def mask(self, key: int) -> np.ndarray:
        """(size, size) bool: the mesh in keyframe `key`'s pose, rasterised."""
        bones = forward_kinematics(self.rig, self.poses[key])
        posed = linear_blend_skinning(self.mesh.vertices, self.weights, bones.rotations, bones.translations)
        return triangle_mask(posed, self.mesh.faces, self.intrinsics, self.world_to_camera, self.size)

    def three_camera(self) -> dict:
        """The camera for render_gltf's page: matrices column-major, as THREE.Matrix4.fromArray reads."""
        rotation, translation = self.world_to_camera[:3, :3], self.world_to_camera[:3, 3]
        distance = float(np.linalg.norm(rotation.T @ translation))  # camera centre to the origin
        near, far = distance / 20, distance * 20
        camera_to_world, projection = opengl_camera(
            self.intrinsics, self.world_to_camera, self.size, near, far
        )
        fov = float(np.degrees(2 * np.arctan(self.size / (2 * self.intrinsics[1, 1]))))
        return {
            "camera_to_world": camera_to_world.T.ravel().tolist(),
            "projection": projection.T.ravel().tolist(),
            "fov": fov,
            "near": near,
            "far": far,
        }


def sheet(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]]) -> np.ndarray:
    """One row per keyframe (ours mask, three.js picture, three.js mask, caption): ours | three.js
    | XOR (grey both, red ours only, blue three.js only), as a uint8 image."""
    lines = []
    for ours, lit, three, caption in rows:
        mask = np.where(ours[..., None], 0, 255).astype(np.uint8).repeat(3, axis=-1)
        tiles = [
            labelled(mask, f"ours: {caption}"),
            labelled(lit, "three.js"),
            silhouette_overlay(three, ours),
        ]
        lines.append(np.concatenate(tiles, axis=1))
    return np.concatenate(lines, axis=0)
