"""Read and write 3D Gaussians in the PLY layout of 3D Gaussian Splatting (Kerbl et al. 2023).

One `vertex` element, float32 properties in this order: x y z nx ny nz f_dc_0..2
f_rest_0..44 opacity scale_0..2 rot_0..3, binary little endian. Opacity is stored as its
logit and scales as their log, as the reference code and common viewers expect; rot_*
is a (w, x, y, z) quaternion, normalised on reading (3DGS normalises at render time).
Gaussian Frosting and other 3DGS-derived tools export the same layout.

The reference loader (graphdeco-inria gaussian-splatting, `GaussianModel.load_ply`)
asserts exactly 3 * (3 + 1)**2 - 3 = 45 f_rest_* properties (SH degree 3), so they are
always written: zeros when the Gaussians have no higher-order SH, and SH of degree 1 or 2
padded with zeros per colour channel (f_rest is channel-major: 15 coefficients of red,
then green, then blue). Reading accepts files without them, and all-zero f_rest_* reads
as no higher-order SH, so a round trip of view-independent Gaussians stays one.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from stages.manipulation.errors import PlyFormatError
from stages.manipulation.gaussians import Gaussians

REQUIRED = (
    "x",
    "y",
    "z",
    "f_dc_0",
    "f_dc_1",
    "f_dc_2",
    "opacity",
    "scale_0",
    "scale_1",
    "scale_2",
    "rot_0",
    "rot_1",
    "rot_2",
    "rot_3",
)
REST_COEFFICIENTS = 15
"""Higher-order SH coefficients per colour channel at degree 3 ((3 + 1)**2 - 1)."""
# Keeps opacities of exactly 0 or 1 finite in logit space.
_OPACITY_EPS = 1e-7


def write_gaussians_ply(path: str | Path, gaussians: Gaussians) -> Path:
    """Write `gaussians` to `path` (binary little endian). Returns the path."""
    path = Path(path)
    normals = gaussians.normals if gaussians.normals is not None else np.zeros_like(gaussians.means)
    opacity = np.clip(gaussians.opacities, _OPACITY_EPS, 1.0 - _OPACITY_EPS)
    columns: list[tuple[str, np.ndarray]] = [
        ("x", gaussians.means[:, 0]),
        ("y", gaussians.means[:, 1]),
        ("z", gaussians.means[:, 2]),
        ("nx", normals[:, 0]),
        ("ny", normals[:, 1]),
        ("nz", normals[:, 2]),
        *((f"f_dc_{i}", gaussians.sh_dc[:, i]) for i in range(3)),
    ]
    rest = degree_three_rest(gaussians.sh_rest, gaussians.num_points)
    columns += [(f"f_rest_{i}", rest[:, i]) for i in range(rest.shape[1])]
    columns += [("opacity", np.log(opacity) - np.log1p(-opacity))]
    columns += [(f"scale_{i}", np.log(gaussians.scales[:, i])) for i in range(3)]
    columns += [(f"rot_{i}", gaussians.rotations[:, i]) for i in range(4)]
    table = np.empty(gaussians.num_points, dtype=[(name, "<f4") for name, _ in columns])
    for name, values in columns:
        table[name] = values
    path.parent.mkdir(parents=True, exist_ok=True)
    PlyData([PlyElement.describe(table, "vertex")], text=False, byte_order="<").write(str(path))
    return path


def degree_three_rest(sh_rest: np.ndarray | None, count: int) -> np.ndarray:
    """f_rest columns (P, 45) for higher-order SH (P, 3 * K) of degree 1-3 (K = 3, 8, 15) or None.

    Other widths (degree 4 and up, or not an SH layout) are returned unchanged: padding
    cannot make them degree 3, and truncating would lose data a round trip must keep."""
    if sh_rest is None:
        return np.zeros((count, 3 * REST_COEFFICIENTS))
    per_channel = sh_rest.shape[1] // 3
    if sh_rest.shape[1] % 3 or per_channel not in (3, 8, REST_COEFFICIENTS):
        return sh_rest
    padded = np.zeros((count, 3, REST_COEFFICIENTS))
    padded[:, :, :per_channel] = sh_rest.reshape(count, 3, per_channel)
    return padded.reshape(count, 3 * REST_COEFFICIENTS)


def read_gaussians_ply(path: str | Path) -> Gaussians:
    """Read a 3DGS / Gaussian Frosting PLY. Raises PlyFormatError naming the file and what is missing."""
    path = Path(path)
    if not path.is_file():
        raise PlyFormatError(f"{path}: no such file")
    try:
        data = PlyData.read(str(path))
    except Exception as exc:  # plyfile raises several types for malformed headers and bodies
        raise PlyFormatError(f"{path}: not a readable PLY file ({exc})") from exc
    if "vertex" not in data:
        raise PlyFormatError(f"{path}: no 'vertex' element (has {[e.name for e in data.elements]})")
    vertex = data["vertex"].data
    have = set(vertex.dtype.names or ())
    missing = [name for name in REQUIRED if name not in have]
    if missing:
        raise PlyFormatError(
            f"{path}: missing 3D Gaussian properties {missing}; a 3DGS / Gaussian Frosting PLY has "
            f"{list(REQUIRED)} (a plain point cloud is not enough)"
        )

    def column(name: str) -> np.ndarray:
        return np.asarray(vertex[name], dtype=np.float64)

    def stack(names: list[str]) -> np.ndarray:
        return np.stack([column(n) for n in names], axis=1) if names else np.zeros((len(vertex), 0))

    rest = sorted((n for n in have if re.fullmatch(r"f_rest_\d+", n)), key=lambda n: int(n[7:]))
    rotations = stack([f"rot_{i}" for i in range(4)])
    norms = np.linalg.norm(rotations, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(rotations)):
        raise PlyFormatError(f"{path}: rot_0..3 holds zero or non-finite quaternions")
    has_normals = {"nx", "ny", "nz"} <= have
    higher = stack(rest)  # (P, 0) without f_rest_*; all zeros is what we write for "none"
    return Gaussians(
        means=stack(["x", "y", "z"]),
        sh_dc=stack(["f_dc_0", "f_dc_1", "f_dc_2"]),
        opacities=1.0 / (1.0 + np.exp(-column("opacity"))),
        scales=np.exp(stack(["scale_0", "scale_1", "scale_2"])),
        rotations=rotations / norms,
        normals=stack(["nx", "ny", "nz"]) if has_normals else None,
        sh_rest=higher if np.any(higher) else None,
    )
