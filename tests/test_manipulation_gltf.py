"""`keydiff3d manipulate export`: a rigged, animated glTF that the Khronos validator accepts, that a
maintained reader loads, and whose skinning (done here in numpy, as the glTF spec says) moves
the mesh where the project's own `pose` command moves it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pygltflib as gl
import pytest

pytest.importorskip("pybullet")

from typer.testing import CliRunner  # noqa: E402

from cache_schema import CacheReader  # noqa: E402
from pipeline.generate import GenerateJob, run_generate  # noqa: E402
from pipeline.manipulate_cli import app  # noqa: E402
from stages.cameras import orbit_cameras, project_points  # noqa: E402
from stages.config import GenerationConfig  # noqa: E402
from stages.manipulation.gaussians import Gaussians  # noqa: E402
from stages.manipulation.gltf_export import (  # noqa: E402
    Z_UP_TO_Y_UP,
    joint_parents,
    joint_pivots,
    joint_weights,
    node_rotations,
    opengl_camera,
    rest_translations,
)
from stages.manipulation.kinematics import SkeletonPose, forward_kinematics  # noqa: E402
from stages.manipulation.mesh import extract_surface, signed_volume, vertex_normals  # noqa: E402
from stages.manipulation.ply import read_gaussians_ply, write_gaussians_ply  # noqa: E402
from stages.manipulation.render import triangle_mask  # noqa: E402
from stages.manipulation.rig import RigConfig, build_rig  # noqa: E402
from stages.rotations import axis_angle_to_matrix, quaternion_to_matrix  # noqa: E402
from stages.synthetic.world import SyntheticWorldConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
POSES = ROOT / "examples" / "poses"
# Where .ci/run installs the validator with npm; KEYDIFF3D_GLTF_VALIDATOR points elsewhere.
VALIDATOR = Path(os.environ.get("KEYDIFF3D_GLTF_VALIDATOR", ROOT / ".gltf-validator"))


def invoke(*args: object):  # noqa: ANN201
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_torch_thread) -> dict:
    """A 2-sample synthetic cache, a ground-truth rig of sample 0 and its .glb with 2 poses."""
    root = tmp_path_factory.mktemp("gltf")
    cache = root / "humanoid.zarr"
    world = SyntheticWorldConfig("humanoid", "test", num_samples=2, seed=0)
    config = GenerationConfig(resolution=48)
    run_generate(GenerateJob(None, None, cache, config, "render", world, samples_per_shard=2, progress=False))
    reader = CacheReader(cache)
    joints = reader.read_ground_truth([0])["joints_3d"][0].astype(np.float64)
    rig = build_rig(joints, None, keypoint_names=reader.layout.ground_truth.joint_names, notes={"sample": 0})
    rig_path = rig.save(root / "rig.json")
    out = root / "object.glb"
    poses = [POSES / "lift_foot.json", POSES / "raise_left_arm.json"]
    args = ["export", rig_path, cache, "--sample", 0, "--out", out, "--voxels", 32]
    result = invoke(*args, *(w for p in poses for w in ("--pose", p)))
    assert result.exit_code == 0, result.output
    assert "3 keyframes" in result.output
    return {"root": root, "cache": cache, "rig": rig, "rig_path": rig_path, "glb": out, "poses": poses}


def accessor(gltf: gl.GLTF2, index: int) -> np.ndarray:
    """An accessor's data as (count, components) (or (count,) for scalars), from the GLB's blob."""
    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    dtype = {gl.FLOAT: np.float32, gl.UNSIGNED_BYTE: np.uint8, gl.UNSIGNED_SHORT: np.uint16}.get(
        acc.componentType, np.uint32
    )
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}[acc.type]
    start = (view.byteOffset or 0) + (acc.byteOffset or 0)
    data = np.frombuffer(gltf.binary_blob(), dtype=dtype, count=acc.count * width, offset=start)
    return data.reshape(acc.count, width) if width > 1 else data


def trs(translation, rotation_xyzw, scale) -> np.ndarray:  # noqa: ANN001
    """A glTF node's local matrix (4, 4) = T * R * S."""
    matrix = np.eye(4)
    x, y, z, w = rotation_xyzw if rotation_xyzw is not None else (0.0, 0.0, 0.0, 1.0)
    matrix[:3, :3] = quaternion_to_matrix(np.array([w, x, y, z], dtype=np.float64)) * np.asarray(
        scale if scale is not None else (1.0, 1.0, 1.0)
    )
    matrix[:3, 3] = translation if translation is not None else 0.0
    return matrix


def skin_vertices(gltf: gl.GLTF2, keyframe: int | None) -> np.ndarray:
    """The skinned mesh's vertices (V, 3) in glTF's world, at an animation keyframe (None: bind pose):
    vertex = sum_i w_i jointMatrix[j_i] @ v, jointMatrix = globalTransform(joint) @ inverseBindMatrix."""
    local = {i: [node.translation, node.rotation, node.scale] for i, node in enumerate(gltf.nodes)}
    if keyframe is not None:
        (animation,) = gltf.animations
        for channel in animation.channels:
            values = accessor(gltf, animation.samplers[channel.sampler].output)[keyframe]
            slot = {"translation": 0, "rotation": 1, "scale": 2}[channel.target.path]
            local[channel.target.node][slot] = values.astype(np.float64)
    parent = {c: i for i, node in enumerate(gltf.nodes) for c in node.children}

    def world(node: int) -> np.ndarray:
        above = world(parent[node]) if node in parent else np.eye(4)
        return above @ trs(*local[node])

    (skin,) = gltf.skins
    inverse_bind = accessor(gltf, skin.inverseBindMatrices).reshape(-1, 4, 4).transpose(0, 2, 1)
    joint_matrices = np.stack([world(j) @ inverse_bind[k] for k, j in enumerate(skin.joints)])
    attributes = gltf.meshes[0].primitives[0].attributes
    positions = accessor(gltf, attributes.POSITION).astype(np.float64)
    joints = accessor(gltf, attributes.JOINTS_0).astype(np.int64)
    weights = accessor(gltf, attributes.WEIGHTS_0).astype(np.float64)
    homogeneous = np.concatenate([positions, np.ones((len(positions), 1))], axis=1)
    blended = np.einsum("vk,vkij->vij", weights, joint_matrices[joints])
    return np.einsum("vij,vj->vi", blended, homogeneous)[:, :3]


def test_the_khronos_validator_finds_no_errors(exported):
    node = shutil.which("node")
    package = VALIDATOR / "node_modules" / "gltf-validator"
    if node is None or not package.is_dir():
        pytest.skip(
            f"the Khronos glTF validator is not installed ({'no node' if node is None else package} "
            "missing); `nox -s tests` installs it with npm into .gltf-validator/"
        )
    script = ROOT / "tests" / "node" / "validate_gltf.mjs"
    done = subprocess.run([node, script, VALIDATOR, exported["glb"]], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    issues = report["issues"]
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"]
    info = report["info"]
    assert info["hasSkins"] and info["animationCount"] == 1 and info["maxInfluences"] == 4
    assert 300 < info["totalTriangleCount"] < 20_000


def test_a_maintained_reader_loads_the_skeleton_and_weights(exported):
    rig = exported["rig"]
    gltf = gl.GLTF2().load(str(exported["glb"]))
    (skin,) = gltf.skins
    assert len(skin.joints) == len(rig.joints)
    keypoint = {j: gltf.nodes[j].extras["keypoint"] for j in skin.joints}
    assert sorted(keypoint.values()) == list(range(len(rig.joints)))
    assert [gltf.nodes[j].name for j in skin.joints] == [rig.keypoint_names[keypoint[j]] for j in skin.joints]
    parent = {c: i for i, node in enumerate(gltf.nodes) for c in node.children}
    tree = {(keypoint[parent[j]], keypoint[j]) for j in skin.joints if parent[j] in keypoint}
    assert tree == set(rig.bones)
    (root,) = [j for j in skin.joints if parent[j] not in keypoint]
    assert keypoint[root] == rig.root and gltf.nodes[parent[root]].name == "z_up_to_y_up"
    attributes = gltf.meshes[0].primitives[0].attributes
    weights = accessor(gltf, attributes.WEIGHTS_0)
    np.testing.assert_allclose(weights.sum(axis=1, dtype=np.float64), 1.0, atol=1e-6)
    assert (weights >= 0).all() and (accessor(gltf, attributes.JOINTS_0)[weights == 0] == 0).all()
    # Bind pose: skinning gives back the mesh, turned once from +Z up to +Y up.
    positions = accessor(gltf, attributes.POSITION).astype(np.float64)
    np.testing.assert_allclose(skin_vertices(gltf, None), positions @ Z_UP_TO_Y_UP.T, atol=1e-5)
    np.testing.assert_allclose(Z_UP_TO_Y_UP @ [0.0, 0.0, 1.0], [0.0, 1.0, 0.0])


def test_keyframes_reproduce_the_pose_command(exported, tmp_path):
    gltf = gl.GLTF2().load(str(exported["glb"]))
    attributes = gltf.meshes[0].primitives[0].attributes
    positions = accessor(gltf, attributes.POSITION).astype(np.float64)
    colours = accessor(gltf, attributes.COLOR_0).astype(np.float64)
    size = float(np.linalg.norm(positions.max(axis=0) - positions.min(axis=0)))
    # The first keyframe is the rest pose (--from-rest), then one per pose file.
    np.testing.assert_allclose(skin_vertices(gltf, 0), positions @ Z_UP_TO_Y_UP.T, atol=1e-5)
    ply = write_gaussians_ply(tmp_path / "mesh.ply", Gaussians.from_colours(positions, colours, 0.01))
    for keyframe, pose in enumerate(exported["poses"], start=1):
        posed = tmp_path / f"posed_{keyframe}.ply"
        result = invoke("pose", exported["rig_path"], ply, pose, "--out", posed)
        assert result.exit_code == 0, result.output
        expected = read_gaussians_ply(posed).means
        skinned = skin_vertices(gltf, keyframe) @ Z_UP_TO_Y_UP  # back to the cache's +Z up
        distance = np.linalg.norm(skinned - expected, axis=1)
        moved = np.linalg.norm(expected - positions, axis=1)
        print(
            f"{pose.name}: mean vertex distance {distance.mean():.2e} = {distance.mean() / size:.2e} "
            f"of the object's size {size:.3f} (max {distance.max():.2e}; moved up to {moved.max():.3f})"
        )
        assert moved.max() > 0.05 * size  # the pose does move the object
        assert distance.mean() < 0.01 * size


def test_bad_inputs_name_the_file_or_option(exported, tmp_path):
    rig, cache, glb = exported["rig_path"], exported["cache"], tmp_path / "o.glb"
    folder = tmp_path / "taken.glb"
    folder.mkdir()
    pose = tmp_path / "bad_pose.json"
    pose.write_text(json.dumps({"rotations": {"left_knee-nose": {"axis": [0, 0, 1], "degrees": 20}}}))
    cases = {
        "--out": (["export", rig, cache, "--sample", 0, "--out", tmp_path / "o.gltf"], "must end in .glb"),
        "sample": (
            ["export", rig, cache, "--sample", 1, "--out", glb],
            "rig.json: made for sample 0, not sample 1",
        ),
        "pose": (["export", rig, cache, "--sample", 0, "--out", glb, "--pose", pose], "bad_pose.json: rot"),
        "rig": (["export", tmp_path / "no.json", cache, "--sample", 0, "--out", glb], "no.json: no such rig"),
        "--out folder": (["export", rig, cache, "--sample", 0, "--out", folder], "is a folder; give a file"),
    }
    for name, (args, message) in cases.items():
        result = invoke(*args)
        assert result.exit_code == 2 and message in " ".join(result.output.split()), (name, result.output)
        assert "Traceback" not in result.output
    assert not glb.exists()


def test_marching_cubes_surface_is_closed_outward_and_the_right_size():
    m, half, radius = 24, 1.0, 0.6
    axis = -half + (2 * half / m) * (np.arange(m) + 0.5)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    fraction = np.clip(0.5 + (radius - np.sqrt(x**2 + y**2 + z**2)) / (2 * half / m), 0.0, 1.0)
    vertices, faces = extract_surface(fraction, half)
    np.testing.assert_allclose(signed_volume(vertices, faces), 4 / 3 * np.pi * radius**3, rtol=0.03)
    np.testing.assert_allclose(np.linalg.norm(vertices, axis=1), radius, atol=0.02)
    normals = vertex_normals(vertices, faces)
    assert (np.einsum("vk,vk->v", normals, vertices) > 0).all()  # outward
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all()  # closed: every edge shared by exactly two triangles


def test_bone_weights_map_to_the_child_joint_nodes_keeping_the_four_strongest():
    bone_weights = np.array([[0.1, 0.2, 0.3, 0.25, 0.15], [0.0, 1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0, 0, 0]])
    joints, weights = joint_weights(bone_weights)
    assert weights.dtype == np.float32
    np.testing.assert_array_equal(joints[0], [3, 4, 2, 5])  # bone b is joint node b + 1
    np.testing.assert_allclose(weights[0], np.array([0.3, 0.25, 0.2, 0.15]) / 0.9, rtol=1e-6)
    np.testing.assert_array_equal(joints[1], [2, 0, 0, 0])
    np.testing.assert_array_equal(weights[1], [1, 0, 0, 0])
    np.testing.assert_array_equal(joints[2], [1, 2, 0, 0])
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-7)


def test_the_gltf_root_node_matches_forward_kinematics_on_a_branching_rig():
    """Keypoint 0 has two children turning differently: a node per bone at its pivot handles it."""
    rig = build_rig(
        np.array([[0.0, 0, 0], [1.0, 0, 0], [-1.0, 0, 0], [-1.0, 0, 1]]), config=RigConfig(root=0)
    )
    assert rig.bones == ((0, 1), (0, 2), (2, 3))
    rng = np.random.default_rng(1)
    local = np.stack([axis_angle_to_matrix(rng.normal(size=3), rng.normal()) for _ in rig.bones])
    pose = SkeletonPose(local, axis_angle_to_matrix(np.array([0, 0, 1.0]), 0.4), np.array([0.1, 0.2, 0.3]))
    transforms = forward_kinematics(rig, pose)
    parents, rotations, translations = joint_parents(rig), node_rotations(rig, pose), rest_translations(rig)
    translations[0] += pose.root_translation
    world = []
    for node in range(len(parents)):
        matrix = np.eye(4)
        matrix[:3, :3], matrix[:3, 3] = rotations[node], translations[node]
        world.append(matrix if parents[node] < 0 else world[parents[node]] @ matrix)
    for b in range(len(rig.bones)):
        skin = world[b + 1].copy()
        skin[:3, 3] -= skin[:3, :3] @ joint_pivots(rig)[b + 1]  # @ inverse bind = translate(-pivot)
        np.testing.assert_allclose(skin[:3, :3], transforms.rotations[b], atol=1e-12)
        np.testing.assert_allclose(skin[:3, 3], transforms.translations[b], atol=1e-12)


def test_the_opengl_camera_puts_points_of_the_gltf_frame_on_the_cache_cameras_pixels():
    elevations, azimuths = np.array([20.0, -5.0]), np.array([30.0, 200.0])
    intrinsics, world_to_camera = orbit_cameras(elevations, azimuths, 2.5, 40.0, 64)
    k = intrinsics[0].copy()
    k[0, 2] += 3.0  # an off-centre principal point and a skew must carry over too
    k[1, 2] -= 2.0
    k[0, 1] = 0.7
    points = np.random.default_rng(0).uniform(-0.5, 0.5, (20, 3))
    for w in (world_to_camera[0], world_to_camera[1]):
        uv, depth = project_points(points, k[None], w[None])
        camera_to_world, projection = opengl_camera(k, w, 64, 0.1, 10.0)
        gltf_points = np.c_[points @ Z_UP_TO_Y_UP.T, np.ones(len(points))]  # the root node's turn
        clip = (projection @ np.linalg.inv(camera_to_world) @ gltf_points.T).T
        ndc = clip[:, :3] / clip[:, 3:]
        pixels = np.c_[(ndc[:, 0] + 1) * 32, (1 - ndc[:, 1]) * 32]  # OpenGL y is up, rows go down
        np.testing.assert_allclose(pixels, uv[0], atol=1e-9)
        assert np.all(clip[:, 3] > 0) and np.all(np.abs(ndc[:, 2]) < 1)
        np.testing.assert_allclose(clip[:, 3], depth[0], atol=1e-9)


def test_triangle_mask_covers_the_pixel_centres_inside_either_winding():
    k = np.array([[10.0, 0.0, 5.0], [0.0, 10.0, 5.0], [0.0, 0.0, 1.0]])
    w = np.eye(4)  # camera at the origin looking along +z: (x, y, 1) lands on pixel 10 x + 5
    square = np.array([[-0.3, -0.2, 1.0], [0.2, -0.2, 1.0], [0.2, 0.3, 1.0], [-0.3, 0.3, 1.0]])
    faces = np.array([[0, 1, 2], [0, 3, 2]])  # the second one clockwise
    mask = triangle_mask(square, faces, k, w, 10)
    expected = np.zeros((10, 10), dtype=bool)
    expected[3:8, 2:7] = True  # pixel centres 2.5 .. 6.5 lie in [2, 7], 3.5 .. 7.5 in [3, 8]
    np.testing.assert_array_equal(mask, expected)
    behind = square * np.array([1.0, 1.0, -1.0])
    assert not triangle_mask(behind, faces, k, w, 10).any()
