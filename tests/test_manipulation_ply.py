"""3D Gaussian Splatting PLY files: exact round trip, the standard layout, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from stages.manipulation.errors import PlyFormatError, ShapeError
from stages.manipulation.gaussians import SH_C0, Gaussians, rgb_to_sh_dc, sh_dc_to_rgb
from stages.manipulation.ply import REQUIRED, read_gaussians_ply, write_gaussians_ply


def random_gaussians(count: int, rest: int = 0, seed: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    rotations = rng.normal(size=(count, 4))
    rotations /= np.linalg.norm(rotations, axis=1, keepdims=True)
    normals = rng.normal(size=(count, 3))
    # float32 values, so that writing float32 loses nothing and the round trip is exact.
    return Gaussians(
        means=rng.normal(size=(count, 3)).astype(np.float32).astype(np.float64),
        sh_dc=rng.normal(size=(count, 3)).astype(np.float32).astype(np.float64),
        opacities=rng.uniform(0.05, 0.95, count),
        scales=rng.uniform(0.001, 0.1, (count, 3)),
        rotations=rotations,
        normals=normals.astype(np.float32).astype(np.float64),
        sh_rest=rng.normal(size=(count, rest)).astype(np.float32).astype(np.float64) if rest else None,
    )


@pytest.mark.parametrize("rest", [0, 45])
def test_round_trip_keeps_every_value_and_rewrites_the_same_bytes(tmp_path, rest):
    gaussians = random_gaussians(50, rest)
    first = write_gaussians_ply(tmp_path / "a.ply", gaussians)
    loaded = read_gaussians_ply(first)
    for name in ("means", "sh_dc", "normals"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(gaussians, name))
    # Stored as logit, log and float32: equal to float32 precision.
    np.testing.assert_allclose(loaded.opacities, gaussians.opacities, rtol=1e-6)
    np.testing.assert_allclose(loaded.scales, gaussians.scales, rtol=1e-6)
    np.testing.assert_allclose(loaded.rotations, gaussians.rotations, atol=1e-6)
    if rest:
        np.testing.assert_array_equal(loaded.sh_rest, gaussians.sh_rest)
    else:
        assert loaded.sh_rest is None
    second = write_gaussians_ply(tmp_path / "b.ply", loaded)
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize("rest", [0, 9, 45])
def test_the_file_has_the_standard_3dgs_layout(tmp_path, rest):
    path = write_gaussians_ply(tmp_path / "g.ply", random_gaussians(3, rest=rest))
    header = path.read_bytes().split(b"end_header")[0].decode()
    assert "format binary_little_endian 1.0" in header
    names = [line.split()[-1] for line in header.splitlines() if line.startswith("property")]
    assert names == [
        *("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"),
        *(f"f_rest_{i}" for i in range(45)),
        *("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"),
    ]
    assert all(line.split()[1] == "float" for line in header.splitlines() if line.startswith("property"))


def reference_load_ply(path, max_sh_degree: int = 3) -> dict[str, np.ndarray]:
    """The property checks and reshapes of graphdeco-inria gaussian-splatting's
    `GaussianModel.load_ply` (scene/gaussian_model.py), in numpy instead of torch."""
    plydata = PlyData.read(str(path))
    element = plydata.elements[0]
    xyz = np.stack([np.asarray(element["x"]), np.asarray(element["y"]), np.asarray(element["z"])], axis=1)
    opacities = np.asarray(element["opacity"])[..., np.newaxis]
    features_dc = np.zeros((xyz.shape[0], 3, 1))
    for i in range(3):
        features_dc[:, i, 0] = np.asarray(element[f"f_dc_{i}"])
    extra = [p.name for p in element.properties if p.name.startswith("f_rest_")]
    extra = sorted(extra, key=lambda x: int(x.split("_")[-1]))
    assert len(extra) == 3 * (max_sh_degree + 1) ** 2 - 3
    features_extra = np.zeros((xyz.shape[0], len(extra)))
    for idx, attr_name in enumerate(extra):
        features_extra[:, idx] = np.asarray(element[attr_name])
    features_extra = features_extra.reshape((features_extra.shape[0], 3, (max_sh_degree + 1) ** 2 - 1))
    scale_names = sorted(
        (p.name for p in element.properties if p.name.startswith("scale_")),
        key=lambda x: int(x.split("_")[-1]),
    )
    scales = np.stack([np.asarray(element[n]) for n in scale_names], axis=1)
    rot_names = sorted(
        (p.name for p in element.properties if p.name.startswith("rot")), key=lambda x: int(x.split("_")[-1])
    )
    rots = np.stack([np.asarray(element[n]) for n in rot_names], axis=1)
    assert scales.shape == (len(xyz), 3) and rots.shape == (len(xyz), 4)
    return {"xyz": xyz, "opacity": opacities, "dc": features_dc, "rest": features_extra}


@pytest.mark.parametrize("rest", [0, 9, 45])
def test_the_reference_3dgs_loader_accepts_what_we_write(tmp_path, rest):
    gaussians = random_gaussians(20, rest=rest)
    loaded = reference_load_ply(write_gaussians_ply(tmp_path / "g.ply", gaussians))
    np.testing.assert_array_equal(loaded["xyz"], gaussians.means)
    np.testing.assert_allclose(loaded["dc"][:, :, 0], gaussians.sh_dc, rtol=1e-6)
    if rest == 0:
        assert not loaded["rest"].any()
    else:  # degree 1 or 3, channel-major: each channel's coefficients first, zeros after
        per_channel = rest // 3
        np.testing.assert_array_equal(
            loaded["rest"][:, :, :per_channel], gaussians.sh_rest.reshape(20, 3, per_channel)
        )
        assert not loaded["rest"][:, :, per_channel:].any()


def test_files_without_f_rest_still_read(tmp_path):
    table = np.zeros(2, dtype=[(name, "<f4") for name in REQUIRED])
    table["rot_0"] = 1.0
    PlyData([PlyElement.describe(table, "vertex")]).write(str(tmp_path / "bare.ply"))
    loaded = read_gaussians_ply(tmp_path / "bare.ply")
    assert loaded.num_points == 2 and loaded.sh_rest is None and loaded.normals is None


def test_colours_go_through_the_sh_dc_term():
    rgb = np.array([[0.0, 0.5, 1.0]])
    np.testing.assert_allclose(rgb_to_sh_dc(rgb), [[-0.5 / SH_C0, 0.0, 0.5 / SH_C0]])
    np.testing.assert_allclose(sh_dc_to_rgb(rgb_to_sh_dc(rgb)), rgb)


def test_a_ply_missing_gaussian_properties_is_refused_naming_them(tmp_path):
    table = np.zeros(4, dtype=[(name, "<f4") for name in REQUIRED if name not in ("opacity", "rot_3")])
    PlyData([PlyElement.describe(table, "vertex")]).write(str(tmp_path / "points.ply"))
    with pytest.raises(
        PlyFormatError, match=r"points.ply: missing 3D Gaussian properties \['opacity', 'rot_3'\]"
    ):
        read_gaussians_ply(tmp_path / "points.ply")


def test_other_bad_files_are_refused_by_name(tmp_path):
    with pytest.raises(PlyFormatError, match="nothing.ply: no such file"):
        read_gaussians_ply(tmp_path / "nothing.ply")
    (tmp_path / "text.ply").write_text("hello")
    with pytest.raises(PlyFormatError, match="text.ply: not a readable PLY"):
        read_gaussians_ply(tmp_path / "text.ply")
    faces = np.zeros(2, dtype=[("a", "<f4")])
    PlyData([PlyElement.describe(faces, "face")]).write(str(tmp_path / "faces.ply"))
    with pytest.raises(PlyFormatError, match="faces.ply: no 'vertex' element"):
        read_gaussians_ply(tmp_path / "faces.ply")


def test_gaussians_check_their_shapes_by_name():
    good = random_gaussians(2)
    with pytest.raises(ShapeError, match=r"rotations must have shape \(2, 4\), got \(2, 3\)"):
        Gaussians(good.means, good.sh_dc, good.opacities, good.scales, good.rotations[:, :3])
