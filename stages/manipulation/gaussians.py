"""A set of 3D Gaussians (the object representation that 3DGS and Gaussian Frosting write)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from stages.manipulation.shapes import check_shape

SH_C0 = 0.28209479177387814
"""Zeroth-order real spherical harmonic, 1 / (2 sqrt(pi)): colour = SH_C0 * f_dc + 0.5."""


def rgb_to_sh_dc(rgb: np.ndarray) -> np.ndarray:
    """Colours (P, 3) in [0, 1] -> SH DC coefficients (P, 3) as 3DGS stores them."""
    return (np.asarray(rgb, dtype=np.float64) - 0.5) / SH_C0


def sh_dc_to_rgb(dc: np.ndarray) -> np.ndarray:
    """SH DC coefficients (P, 3) -> view-independent colours (P, 3), clipped to [0, 1]."""
    return np.clip(np.asarray(dc, dtype=np.float64) * SH_C0 + 0.5, 0.0, 1.0)


@dataclass(frozen=True, eq=False)
class Gaussians:
    """P anisotropic 3D Gaussians in the cache's world frame (metres for the synthetic world)."""

    means: np.ndarray
    """(P, 3) centres."""
    sh_dc: np.ndarray
    """(P, 3) zeroth-order SH coefficients; `colours` gives RGB in [0, 1]."""
    opacities: np.ndarray
    """(P,) in (0, 1) (the PLY stores their logit)."""
    scales: np.ndarray
    """(P, 3) standard deviations along the Gaussian's axes (the PLY stores their log)."""
    rotations: np.ndarray
    """(P, 4) unit quaternions (w, x, y, z) from the Gaussian's axes to the world."""
    normals: np.ndarray | None = None
    """(P, 3) optional surface normals (3DGS writes zeros; carving writes estimates)."""
    sh_rest: np.ndarray | None = None
    """(P, 3 * (D - 1)) optional higher-order SH coefficients in the PLY's f_rest order,
    kept for round trips of files made elsewhere; posing does not rotate them."""

    def __post_init__(self) -> None:
        means = check_shape("means", self.means, (None, 3))
        p = len(means)
        check_shape("sh_dc", self.sh_dc, (p, 3))
        check_shape("opacities", self.opacities, (p,))
        check_shape("scales", self.scales, (p, 3))
        check_shape("rotations", self.rotations, (p, 4))
        if self.normals is not None:
            check_shape("normals", self.normals, (p, 3))
        if self.sh_rest is not None:
            check_shape("sh_rest", self.sh_rest, (p, None))

    @classmethod
    def from_colours(
        cls,
        means: np.ndarray,
        colours: np.ndarray,
        scale: float | np.ndarray,
        opacity: float = 0.95,
        normals: np.ndarray | None = None,
    ) -> Gaussians:
        """Isotropic, axis-aligned Gaussians of one `scale` (or (P,) scales) with colours (P, 3)."""
        means = check_shape("means", means, (None, 3))
        p = len(means)
        sizes = np.broadcast_to(np.asarray(scale, dtype=np.float64).reshape(-1, 1), (p, 3)).copy()
        rotations = np.zeros((p, 4))
        rotations[:, 0] = 1.0
        return cls(
            means=means,
            sh_dc=rgb_to_sh_dc(check_shape("colours", colours, (p, 3))),
            opacities=np.full(p, float(opacity)),
            scales=sizes,
            rotations=rotations,
            normals=normals,
        )

    @property
    def num_points(self) -> int:
        return len(self.means)

    @property
    def colours(self) -> np.ndarray:
        """(P, 3) RGB in [0, 1]."""
        return sh_dc_to_rgb(self.sh_dc)

    def moved(self, means: np.ndarray, rotations: np.ndarray, normals: np.ndarray | None = None) -> Gaussians:
        """The same Gaussians at new centres (P, 3) with new orientations (P, 4)."""
        return replace(self, means=means, rotations=rotations, normals=normals)
