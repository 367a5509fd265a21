"""glTF 2.0 (.glb) export of a rigged object: coloured mesh, skin from the rig, poses as an animation.

Joints. One joint node per keypoint, in the rig's tree: node 0 is the root keypoint,
node b + 1 is keypoint `child` of bone b = (parent, child), and its parent node is the
node of keypoint `parent`. In this project a bone turns its child's subtree about its
PARENT joint (kinematics.py), and a keypoint can have several child bones turning
differently, so a node sitting at the parent keypoint cannot carry them all. Node b + 1
therefore sits at its bone's pivot (the parent keypoint's rest position), carries the
bone's local rotation and bone b's skinning weight; the root node sits at the root
keypoint, carries the root's rotation and translation and no weight. Then the node's
global transform times its inverse bind matrix (a translation by minus the pivot) is
exactly the bone's world transform x -> R_b x + t_b of kinematics.forward_kinematics,
so glTF skinning is the project's linear blend skinning (up to the 4 strongest
influences per vertex, renormalised), rotating a node in Blender turns the limb about
its upper joint, and the animation animates rotations only (plus the root's
translation), which a viewer's slerp interpolates without bending bone lengths. Each
node's `extras` names its keypoint, the keypoint's rest position and the pivot.

Frame. The cache is +Z up, glTF is +Y up: the skeleton hangs from one static node
"z_up_to_y_up" rotating (x, y, z) -> (x, z, -y); nothing else changes axes or units.
Mesh vertices and inverse bind matrices stay in the cache frame (the skinned mesh's
bind space), so the mesh node sits at the scene root, untransformed, as glTF wants.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pygltflib as gl

from stages.manipulation.kinematics import SkeletonPose
from stages.manipulation.mesh import Mesh
from stages.manipulation.rig import Rig
from stages.manipulation.shapes import check_shape
from stages.rotations import matrix_to_quaternion

Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
"""(3, 3): the cache's +z becomes glTF's +y, a -90 degree turn about x."""


@dataclass(frozen=True)
class ExportConfig:
    """What goes into the glTF file."""

    max_influences: int = 4
    """Joints per vertex (JOINTS_0 / WEIGHTS_0 hold 4); the strongest are kept, renormalised."""
    seconds_per_pose: float = 1.0
    """Time between keyframes of the animation."""
    from_rest: bool = True
    """Start the animation at the rest pose, so that even one pose file plays as a motion."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_influences <= 4:
            raise ValueError(f"max_influences must be in [1, 4], got {self.max_influences}")
        if not self.seconds_per_pose > 0:
            raise ValueError(f"seconds_per_pose must be > 0, got {self.seconds_per_pose}")


def joint_parents(rig: Rig) -> np.ndarray:
    """Parent node (N,) of each joint node (-1 for node 0, the root); nodes are ordered as
    [root, child of bone 0, child of bone 1, ...], so parents come before children."""
    node_of = {rig.root: 0, **{child: b + 1 for b, (_, child) in enumerate(rig.bones)}}
    return np.array([-1] + [node_of[parent] for parent, _ in rig.bones], dtype=np.int64)


def joint_keypoints(rig: Rig) -> np.ndarray:
    """Keypoint index (N,) of each joint node."""
    return np.array([rig.root] + [child for _, child in rig.bones], dtype=np.int64)


def joint_pivots(rig: Rig) -> np.ndarray:
    """Rest position (N, 3) of each joint node: the root keypoint, then each bone's parent keypoint."""
    return rig.joints[[rig.root] + [parent for parent, _ in rig.bones]]


def joint_weights(bone_weights: np.ndarray, max_influences: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Per-bone weights (P, N-1) -> joint node indices (P, K) and weights (P, K) float32 summing
    to 1, K = max_influences: the K strongest bones (bone b is node b + 1), renormalised.
    Unused slots (fewer than K bones) get weight 0 and node 0, which glTF asks for."""
    bone_weights = check_shape("bone_weights", bone_weights, (None, None))
    k = min(max_influences, bone_weights.shape[1])
    strongest = np.argsort(-bone_weights, axis=1, kind="stable")[:, :k]
    weights = np.take_along_axis(bone_weights, strongest, axis=1)
    weights /= weights.sum(axis=1, keepdims=True)
    joints = np.zeros((len(weights), max_influences), dtype=np.int64)
    joints[:, :k] = strongest + 1
    padded = np.zeros((len(weights), max_influences))
    padded[:, :k] = weights
    padded = padded.astype(np.float32)
    # float32 rounding can leave a sum off 1 by a few ulps; the heaviest weight absorbs it.
    padded[:, 0] += np.float32(1.0) - padded.sum(axis=1, dtype=np.float32)
    joints[padded == 0] = 0
    return joints, padded


def node_rotations(rig: Rig, pose: SkeletonPose) -> np.ndarray:
    """Local rotations (N, 3, 3) of the joint nodes in a pose: the root's, then each bone's."""
    local = check_shape("local_rotations", pose.local_rotations, (len(rig.bones), 3, 3))
    return np.concatenate([check_shape("root_rotation", pose.root_rotation, (3, 3))[None], local])


def rest_translations(rig: Rig) -> np.ndarray:
    """Local translations (N, 3) of the joint nodes: each pivot relative to its parent node's
    pivot, constant over poses because a node's rotation turns its children about its origin."""
    pivots = joint_pivots(rig)
    parents = joint_parents(rig)
    translations = pivots.copy()  # the root's is its position under the axis node
    translations[1:] -= pivots[parents[1:]]
    return translations


def _xyzw(rotations: np.ndarray) -> np.ndarray:
    """Rotations (..., 3, 3) -> glTF quaternions (..., 4) (x, y, z, w), w >= 0."""
    wxyz = matrix_to_quaternion(rotations)
    return np.concatenate([wxyz[..., 1:], wxyz[..., :1]], axis=-1)


def _continuous(quaternions: np.ndarray) -> np.ndarray:
    """Keyframes (T, N, 4) with signs flipped so consecutive ones are on the same hemisphere:
    q and -q are one rotation, but a viewer interpolating between opposite signs goes the long way."""
    out = quaternions.copy()
    for t in range(1, len(out)):
        flip = np.einsum("nk,nk->n", out[t], out[t - 1]) < 0
        out[t, flip] *= -1.0
    return out


class _Blob:
    """Accumulates arrays into the single binary buffer, one buffer view and accessor each."""

    def __init__(self, gltf: gl.GLTF2) -> None:
        self.gltf, self.length = gltf, 0
        self.parts: list[bytes] = []

    def add(self, array: np.ndarray, kind: str, target: int | None = None, bounds: bool = False) -> int:
        components = {
            np.dtype(np.float32): gl.FLOAT,
            np.dtype(np.uint8): gl.UNSIGNED_BYTE,
            np.dtype(np.uint16): gl.UNSIGNED_SHORT,
            np.dtype(np.uint32): gl.UNSIGNED_INT,
        }
        data = np.ascontiguousarray(array).tobytes()
        self.gltf.bufferViews.append(
            gl.BufferView(buffer=0, byteOffset=self.length, byteLength=len(data), target=target)
        )
        pad = (-len(data)) % 4  # every view starts 4-byte aligned, as float accessors need
        self.parts.append(data + b"\0" * pad)
        self.length += len(data) + pad
        flat = array.reshape(len(array), -1)
        accessor = gl.Accessor(
            bufferView=len(self.gltf.bufferViews) - 1,
            componentType=components[array.dtype],
            count=len(array),
            type=kind,
            min=flat.min(axis=0).tolist() if bounds else None,
            max=flat.max(axis=0).tolist() if bounds else None,
        )
        self.gltf.accessors.append(accessor)
        return len(self.gltf.accessors) - 1

    def finish(self) -> None:
        blob = b"".join(self.parts)
        self.gltf.buffers = [gl.Buffer(byteLength=len(blob))]
        self.gltf.set_binary_blob(blob)


def build_gltf(
    mesh: Mesh,
    rig: Rig,
    bone_weights: np.ndarray,
    poses: list[SkeletonPose] | tuple[SkeletonPose, ...] = (),
    config: ExportConfig = ExportConfig(),
    name: str = "object",
) -> gl.GLTF2:
    """A glTF document of a mesh (V vertices) skinned to a rig (N keypoints) with per-bone
    weights (V, N-1), animated through `poses` (none: a static skinned mesh)."""
    check_shape("bone_weights", bone_weights, (len(mesh.vertices), len(rig.bones)))
    n = len(rig.joints)
    gltf = gl.GLTF2(asset=gl.Asset(generator="keydiff3d manipulate export", version="2.0"))
    blob = _Blob(gltf)
    joints, weights = joint_weights(bone_weights, config.max_influences)
    attributes = gl.Attributes(
        POSITION=blob.add(mesh.vertices.astype(np.float32), gl.VEC3, gl.ARRAY_BUFFER, bounds=True),
        NORMAL=blob.add(mesh.normals.astype(np.float32), gl.VEC3, gl.ARRAY_BUFFER),
        COLOR_0=blob.add(mesh.colours.astype(np.float32), gl.VEC3, gl.ARRAY_BUFFER),
        JOINTS_0=blob.add(joints.astype(np.uint8 if n < 256 else np.uint16), gl.VEC4, gl.ARRAY_BUFFER),
        WEIGHTS_0=blob.add(weights, gl.VEC4, gl.ARRAY_BUFFER),
    )
    indices = blob.add(mesh.faces.reshape(-1).astype(np.uint32), gl.SCALAR, gl.ELEMENT_ARRAY_BUFFER)
    gltf.materials = [
        gl.Material(
            name="vertex colours",
            pbrMetallicRoughness=gl.PbrMetallicRoughness(metallicFactor=0.0, roughnessFactor=1.0),
        )
    ]
    gltf.meshes = [
        gl.Mesh(name=name, primitives=[gl.Primitive(attributes=attributes, indices=indices, material=0)])
    ]
    pivots = joint_pivots(rig)
    inverse_bind = np.broadcast_to(np.eye(4), (n, 4, 4)).copy()
    inverse_bind[:, :3, 3] = -pivots
    # glTF matrices are column-major: the transpose's rows are the columns.
    ibm = blob.add(inverse_bind.transpose(0, 2, 1).astype(np.float32), gl.MAT4)
    keypoints, parents = joint_keypoints(rig), joint_parents(rig)
    translations = rest_translations(rig)
    names = rig.keypoint_names or tuple(f"keypoint_{k}" for k in range(n))
    for node in range(n):
        keypoint = int(keypoints[node])
        gltf.nodes.append(
            gl.Node(
                name=names[keypoint],
                translation=translations[node].tolist(),
                children=[int(c) for c in np.flatnonzero(parents == node)],
                extras={
                    "keypoint": keypoint,
                    "keypoint_rest": rig.joints[keypoint].tolist(),
                    "pivot_keypoint": keypoint if node == 0 else int(keypoints[parents[node]]),
                },
            )
        )
    gltf.nodes.append(gl.Node(name=name, mesh=0, skin=0))
    axis = gl.Node(name="z_up_to_y_up", rotation=_xyzw(Z_UP_TO_Y_UP).tolist(), children=[0])
    gltf.nodes.append(axis)
    gltf.skins = [gl.Skin(name="keypoints", joints=list(range(n)), inverseBindMatrices=ibm, skeleton=n + 1)]
    gltf.scenes = [gl.Scene(name=name, nodes=[n, n + 1])]
    gltf.scene = 0
    if poses:
        _add_animation(gltf, blob, rig, list(poses), config)
    blob.finish()
    return gltf


def _add_animation(
    gltf: gl.GLTF2, blob: _Blob, rig: Rig, poses: list[SkeletonPose], config: ExportConfig
) -> None:
    """Keyframes every config.seconds_per_pose: node rotations and the root node's translation."""
    if config.from_rest:
        poses = [SkeletonPose.rest(len(rig.bones)), *poses]
    times = (np.arange(len(poses)) * config.seconds_per_pose).astype(np.float32)
    rotations = _continuous(np.stack([_xyzw(node_rotations(rig, pose)) for pose in poses]))
    root = rest_translations(rig)[0]
    moves = np.stack([root + pose.root_translation for pose in poses]).astype(np.float32)
    time_accessor = blob.add(times, gl.SCALAR, bounds=True)
    samplers, channels = [], []
    for node in range(len(rig.joints)):
        output = blob.add(rotations[:, node].astype(np.float32), gl.VEC4)
        samplers.append(gl.AnimationSampler(input=time_accessor, output=output, interpolation="LINEAR"))
        channels.append(
            gl.AnimationChannel(sampler=node, target=gl.AnimationChannelTarget(node=node, path="rotation"))
        )
    samplers.append(gl.AnimationSampler(input=time_accessor, output=blob.add(moves, gl.VEC3)))
    channels.append(
        gl.AnimationChannel(
            sampler=len(samplers) - 1, target=gl.AnimationChannelTarget(node=0, path="translation")
        )
    )
    gltf.animations = [gl.Animation(name="poses", samplers=samplers, channels=channels)]


def opengl_camera(
    intrinsics: np.ndarray, world_to_camera: np.ndarray, size: int, near: float, far: float
) -> tuple[np.ndarray, np.ndarray]:
    """A cache camera (OpenCV: x right, y down, looking along +z, in the cache's +Z-up frame)
    with intrinsics (3, 3) for a square image of `size` pixels, as an OpenGL / three.js camera
    looking at the exported file: its camera-to-world matrix (4, 4) in the glTF frame (+Y up,
    after the root node's turn) and its projection matrix (4, 4), principal point included, so a
    point lands on the same pixel (pixel (0, 0) spans [0, 1)^2, as in `project_points`)."""
    k = check_shape("intrinsics", intrinsics, (3, 3))
    w = check_shape("world_to_camera", world_to_camera, (4, 4))
    if not 0 < near < far:
        raise ValueError(f"need 0 < near < far, got {near}, {far}")
    flip = np.diag([1.0, -1.0, -1.0])  # OpenCV camera axes -> OpenGL's (y up, looking along -z)
    view = np.eye(4)
    view[:3, :3] = flip @ w[:3, :3] @ Z_UP_TO_Y_UP.T
    view[:3, 3] = flip @ w[:3, 3]
    projection = np.zeros((4, 4))
    projection[0, :3] = 2 * k[0, 0] / size, -2 * k[0, 1] / size, 1 - 2 * k[0, 2] / size  # y flipped
    projection[1, 1:3] = 2 * k[1, 1] / size, 2 * k[1, 2] / size - 1
    projection[2, 2], projection[2, 3] = -(far + near) / (far - near), -2 * far * near / (far - near)
    projection[3, 2] = -1.0
    return np.linalg.inv(view), projection


def write_glb(path: str | Path, gltf: gl.GLTF2) -> Path:
    """Write a glTF document as one binary .glb file. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gltf.save_binary(str(path))
    return path
