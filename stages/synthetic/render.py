"""Render a pybullet client on stages/cameras.py's OpenCV cameras with the CPU renderer.

pybullet takes OpenGL matrices (camera looks down -z with +y up, clip space to NDC in
[-1, 1]) flattened column-major, and returns image rows top-down; the conversions below
make a point projected by stages.cameras.project_points land on the pixel pybullet
draws it on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pybullet as pb

from stages.synthetic.errors import SyntheticWorldError

# OpenCV camera (x right, y down, z forward) -> OpenGL camera (x right, y up, z backward).
_CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Lighting:
    """The tiny renderer's light besides its direction (its defaults: white, 0.6, 0.35, 0.05)."""

    colour: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """RGB in [0, 1]; the renderer applies it to the diffuse and specular terms only."""
    ambient: float = 0.6
    """Ambient coefficient."""
    diffuse: float = 0.35
    """Diffuse coefficient."""
    specular: float = 0.05
    """Specular coefficient."""

    def __post_init__(self) -> None:
        if len(self.colour) != 3 or not all(0.0 <= c <= 1.0 for c in self.colour):
            raise SyntheticWorldError(f"lighting colour must be 3 values in [0, 1], got {self.colour}")
        if min(self.ambient, self.diffuse, self.specular) < 0:
            raise SyntheticWorldError(
                f"lighting coefficients must be >= 0, got {self.ambient}, {self.diffuse}, {self.specular}"
            )

    def camera_image_arguments(self) -> dict:
        """Keyword arguments of pb.getCameraImage. All four every time: the renderer keeps the
        last values it was given, so one omitted would silently repeat the previous sample's."""
        return {
            "lightColor": list(self.colour),
            "lightAmbientCoeff": self.ambient,
            "lightDiffuseCoeff": self.diffuse,
            "lightSpecularCoeff": self.specular,
        }


def opengl_view_matrix(world_to_camera: np.ndarray) -> np.ndarray:
    """OpenGL view matrix (4, 4) of an OpenCV world_to_camera (4, 4)."""
    return _CV_TO_GL @ world_to_camera


def opengl_projection_matrix(
    intrinsics: np.ndarray, width: int, height: int, near: float, far: float
) -> np.ndarray:
    """OpenGL projection (4, 4) of pinhole intrinsics (3, 3) for a W x H image.

    Chosen so that pybullet's CPU renderer draws a point on the pixel whose centre is
    nearest its OpenCV pixel (u, v), with (0, 0) the top-left corner of the image.
    """
    fx, fy = intrinsics[0, 0], intrinsics[1, 1]
    # The tiny renderer samples pixel column j at x = j (not j + 0.5) and stores row
    # H - 1 - i for raster row i; shifting the principal point by half a pixel makes
    # its samples fall on our pixel centres (measured: without it, small spheres land
    # +0.5 px right and -0.5 px up of where project_points puts them).
    cx, cy = intrinsics[0, 2] - 0.5, intrinsics[1, 2] + 0.5
    return np.array(
        [
            [2.0 * fx / width, 0.0, 1.0 - 2.0 * cx / width, 0.0],
            [0.0, 2.0 * fy / height, 2.0 * cy / height - 1.0, 0.0],
            [0.0, 0.0, -(far + near) / (far - near), -2.0 * far * near / (far - near)],
            [0.0, 0.0, -1.0, 0.0],
        ]
    )


def render_views(
    client_id: int,
    intrinsics: np.ndarray,
    world_to_camera: np.ndarray,
    image_size: int,
    light_direction: np.ndarray | None = None,
    lighting: Lighting | None = None,
    near: float = 0.05,
    far: float = 20.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Render every body of `client_id` from V cameras with ER_TINY_RENDERER.

    intrinsics: (V, 3, 3); world_to_camera: (V, 4, 4) OpenCV; square images of
    `image_size`; light_direction: (3,) world direction towards the light, default
    from above and in front of +x; lighting: colour and coefficients, None leaves the
    client's (its defaults unless set before: the renderer keeps them). Returns rgb
    (V, 3, H, W) uint8 on a white background and masks (V, H, W) uint8, 1 where any
    body is drawn (segmentation buffer).
    """
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    world_to_camera = np.asarray(world_to_camera, dtype=np.float64)
    if intrinsics.ndim != 3 or intrinsics.shape[1:] != (3, 3):
        raise SyntheticWorldError(f"intrinsics must be (V, 3, 3), got {intrinsics.shape}")
    if world_to_camera.shape != (len(intrinsics), 4, 4):
        raise SyntheticWorldError(
            f"world_to_camera must be ({len(intrinsics)}, 4, 4), got {world_to_camera.shape}"
        )
    if image_size < 1:
        raise SyntheticWorldError(f"image_size must be >= 1, got {image_size}")
    light = (
        np.array([1.0, 0.5, 2.0])
        if light_direction is None
        else np.asarray(light_direction, dtype=np.float64)
    )
    if light.shape != (3,) or not np.any(light):
        raise SyntheticWorldError(f"light_direction must be a non-zero (3,), got {light}")
    light_arguments = {} if lighting is None else lighting.camera_image_arguments()
    rgbs, masks = [], []
    for K, w2c in zip(intrinsics, world_to_camera, strict=True):
        # Transposed before flattening: pybullet reads its 16 floats column-major.
        view = opengl_view_matrix(w2c).T.reshape(-1).tolist()
        projection = opengl_projection_matrix(K, image_size, image_size, near, far).T.reshape(-1).tolist()
        _, _, rgba, _, segmentation = pb.getCameraImage(
            image_size,
            image_size,
            viewMatrix=view,
            projectionMatrix=projection,
            lightDirection=light.tolist(),
            shadow=0,
            renderer=pb.ER_TINY_RENDERER,
            physicsClientId=client_id,
            **light_arguments,
        )
        rgba = np.asarray(rgba, dtype=np.uint8).reshape(image_size, image_size, 4)
        mask = np.asarray(segmentation).reshape(image_size, image_size) >= 0  # -1 is background
        # In place on a channels-first copy: a third of np.where's time (measured, 128 px).
        rgb = np.ascontiguousarray(rgba[..., :3].transpose(2, 0, 1))
        np.putmask(rgb, np.broadcast_to(~mask, rgb.shape), np.uint8(255))
        rgbs.append(rgb)
        masks.append(mask.view(np.uint8))
    return np.stack(rgbs), np.stack(masks)


def radius_to_fit(half_extent: float, fov_deg: float, margin: float = 1.1) -> float:
    """Camera distance at which a sphere of radius `half_extent` at the origin fits the view."""
    if half_extent <= 0 or not 0 < fov_deg < 180:
        raise SyntheticWorldError(
            f"half_extent must be > 0 and fov_deg in (0, 180), got {half_extent}, {fov_deg}"
        )
    return margin * half_extent / np.sin(np.deg2rad(fov_deg) / 2.0)
