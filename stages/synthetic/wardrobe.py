"""Dress a posed figure in a version-2 Look: link colours, textures, props.

The textures are grey patterns the renderer multiplies by each link's colour; they are
written once per renderer as small PNG files into a temporary folder, loaded into the
client, and the folder removed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pybullet as pb
from PIL import Image

from stages.synthetic.appearance import TEXTURES, Look, link_classes
from stages.synthetic.figures import Figure, paint_links
from stages.synthetic.props import Prop, add_props, place_props

_TEXTURE_SIZE = 64
_SHADE = 0.62
"""Grey of a pattern's dark cells: the class colour stays what one sees."""


def texture_pattern(name: str, size: int = _TEXTURE_SIZE) -> np.ndarray:
    """Grey pattern (size, size) in [0, 1] of a texture name; 'plain' is all ones.

    As the renderer maps them (looked at): row stripes run along a capsule limb and round a
    sphere like latitudes; column stripes ring a limb and run down a sphere like meridians.
    """
    rows, columns = np.indices((size, size))
    cell = size // 8
    patterns = {
        "plain": np.zeros((size, size), dtype=bool),
        "row_stripes": (rows // cell) % 2 == 1,
        "wide_row_stripes": (rows // (2 * cell)) % 2 == 1,
        "column_stripes": (columns // cell) % 2 == 1,
        "checker": (rows // cell + columns // cell) % 2 == 1,
    }
    return np.where(patterns[name], _SHADE, 1.0)


class Wardrobe:
    """A figure's props and textures in its client, and how to put a Look on it."""

    def __init__(self, figure: Figure):
        self.figure = figure
        self.props: tuple[Prop, ...] = add_props(figure)
        self.link_names = tuple(sorted(figure.link_indices, key=figure.link_indices.get))
        """URDF links in index order."""
        self.link_classes = link_classes(figure.category, self.link_names)
        self.texture_ids = {"plain": -1}  # -1: the renderer's own plain white texture
        with tempfile.TemporaryDirectory(prefix="keydiff3d-textures-") as folder:
            for name in TEXTURES:
                if name == "plain":
                    continue
                # PNG: pybullet refuses PPM ("unsupported texture image format").
                path = Path(folder) / f"{name}.png"
                grey = np.round(255 * texture_pattern(name)).astype(np.uint8)
                Image.fromarray(np.repeat(grey[..., None], 3, axis=-1)).save(path)
                self.texture_ids[name] = pb.loadTexture(str(path), physicsClientId=figure.client_id)

    def dress(self, look: Look) -> np.ndarray:
        """Colour and texture the links, colour the props and put them on the current pose.

        Call after every pose_figure. Returns the props' centres (P, 3), metres.
        """
        figure, client = self.figure, self.figure.client_id
        paint_links(figure, look.link_colours)
        for link, part in enumerate(self.link_classes, start=-1):
            texture = self.texture_ids[look.textures[part]]
            pb.changeVisualShape(figure.body_id, link, textureUniqueId=texture, physicsClientId=client)
        for prop in self.props:
            rgb = look.class_colours[prop.spec.part]
            pb.changeVisualShape(prop.body_id, -1, rgbaColor=[*map(float, rgb), 1.0], physicsClientId=client)
        return place_props(figure, self.props)
