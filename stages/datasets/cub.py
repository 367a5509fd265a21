"""CUB-200-2011 birds: images with a box and 15 part locations (2D ground truth only).

Layout read (the CUB_200_2011 folder of the official archive is ROOT):

    ROOT/images.txt              <image_id> <relative path>            (one image per line)
    ROOT/images/<relative path>  the photos
    ROOT/bounding_boxes.txt      <image_id> <x> <y> <width> <height>   (pixels)
    ROOT/parts/parts.txt         <part_id> <part name>                 (15 parts; names may hold spaces)
    ROOT/parts/part_locs.txt     <image_id> <part_id> <x> <y> <visible>
    ROOT/train_test_split.txt    <image_id> <is_training_image>        (1 train, 0 test)
    ROOT/segmentations/<relative path, .png>  (optional, the separate segmentations archive)

Part locations are pixel-index coordinates (converted to the cache's corner convention);
a part with visible 0 is not annotated. Joints are ordered by part id. The crop box is
the annotated bounding box. With ROOT/segmentations present every sample uses its mask
(grey >= 128, where most annotators agree) and the background is made white.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cache_schema import GroundTruthSpec
from stages.datasets.annotations import INDEX_TO_CORNER, SourceAnnotation
from stages.datasets.errors import AnnotationError
from stages.datasets.files import TableLine, read_table, require_file
from stages.datasets.preparation import BACKGROUND_MASK, BACKGROUND_PHOTO
from stages.datasets.selection import DatasetSelection, DatasetSources, dataset_record
from stages.errors import ConfigError
from stages.sources import ImageSource

LAYOUT = """
ROOT/images.txt              <image_id> <relative path>
ROOT/images/<relative path>
ROOT/bounding_boxes.txt      <image_id> <x> <y> <width> <height>
ROOT/parts/parts.txt         <part_id> <part name>
ROOT/parts/part_locs.txt     <image_id> <part_id> <x> <y> <visible>
ROOT/train_test_split.txt    <image_id> <is_training_image>
ROOT/segmentations/<relative path with .png>   (optional)
"""


def _by_image(lines: list[TableLine], known: dict[int, TableLine], what: str) -> dict[int, TableLine]:
    """One line per known image id; unknown or repeated ids are errors naming the line."""
    out: dict[int, TableLine] = {}
    for line in lines:
        image_id = line.int("image_id")
        if image_id not in known:
            raise line.error(f"image id {image_id} is not in images.txt")
        if image_id in out:
            raise line.error(f"second {what} for image id {image_id} (first on line {out[image_id].number})")
        out[image_id] = line
    for image_id, entry in known.items():
        if image_id not in out:
            raise AnnotationError(
                f"{lines[0].path}: no {what} for image id {image_id} ({entry.path.name}:{entry.number})"
            )
    return out


def read_cub(root: Path, selection: DatasetSelection) -> DatasetSources:
    """The selected split of CUB-200-2011 as annotated image sources (see the module docstring)."""
    root = Path(root)
    selection.refuse_h36m_options("cub")
    images: dict[int, TableLine] = {}
    for line in read_table(require_file(root / "images.txt", "cub", LAYOUT), ("image_id", "path")):
        image_id = line.int("image_id")
        if image_id in images:
            raise line.error(f"image id {image_id} is listed twice (first on line {images[image_id].number})")
        images[image_id] = line
    boxes = _by_image(
        read_table(
            require_file(root / "bounding_boxes.txt", "cub", LAYOUT),
            ("image_id", "x", "y", "width", "height"),
        ),
        images,
        "bounding box",
    )
    splits = _by_image(
        read_table(
            require_file(root / "train_test_split.txt", "cub", LAYOUT), ("image_id", "is_training_image")
        ),
        images,
        "split",
    )
    parts: dict[int, str] = {}
    for line in read_table(
        require_file(root / "parts" / "parts.txt", "cub", LAYOUT), ("part_id", "name"), rest=True
    ):
        part_id = line.int("part_id")
        if part_id in parts:
            raise line.error(f"part id {part_id} is listed twice")
        parts[part_id] = line.text("name").strip()
    part_index = {part_id: i for i, part_id in enumerate(sorted(parts))}

    joints = {image_id: np.zeros((len(parts), 2)) for image_id in images}
    visible = {image_id: np.zeros(len(parts), dtype=bool) for image_id in images}
    seen: set[tuple[int, int]] = set()
    locs_path = require_file(root / "parts" / "part_locs.txt", "cub", LAYOUT)
    for line in read_table(locs_path, ("img_id", "part_id", "x", "y", "visible")):
        image_id, part_id = line.int("img_id"), line.int("part_id")
        if image_id not in images:
            raise line.error(f"image id {image_id} is not in images.txt")
        if part_id not in parts:
            raise line.error(f"part id {part_id} is not in parts/parts.txt")
        if (image_id, part_id) in seen:
            raise line.error(f"second location of part {part_id} in image {image_id}")
        seen.add((image_id, part_id))
        flag = line.int("visible")
        if flag not in (0, 1):
            raise line.error(f"visible must be 0 or 1, got {flag}")
        if flag:
            joints[image_id][part_index[part_id]] = (
                line.float("x") + INDEX_TO_CORNER,
                line.float("y") + INDEX_TO_CORNER,
            )
            visible[image_id][part_index[part_id]] = True

    use_masks = (root / "segmentations").is_dir()
    wanted = 1 if selection.split == "train" else 0
    chosen = []
    for image_id in images:
        flag = splits[image_id].int("is_training_image")
        if flag not in (0, 1):
            raise splits[image_id].error(f"is_training_image must be 0 or 1, got {flag}")
        if flag == wanted:
            chosen.append(image_id)
    stride = selection.stride_or(1)
    sources = []
    for image_id in chosen[::stride]:
        relative = images[image_id].text("path")
        box_line = boxes[image_id]
        x, y, w, h = (box_line.float(k) for k in ("x", "y", "width", "height"))
        if w <= 0 or h <= 0:
            raise box_line.error(f"width and height must be > 0, got {w} x {h}")
        annotation = SourceAnnotation(
            joints_2d=joints[image_id],
            visible=visible[image_id],
            box=(x, y, w, h),
            mask_path=(root / "segmentations" / relative).with_suffix(".png") if use_masks else None,
        )
        sources.append(ImageSource(relative, root / "images" / relative, annotation))
    if not sources:
        raise ConfigError(f"cub:{root}: the {selection.split} split holds no image")
    names = tuple(parts[p] for p in sorted(parts))
    record = dataset_record(
        "cub",
        content={"joints_3d_frame": None, "background": BACKGROUND_MASK if use_masks else BACKGROUND_PHOTO},
        provenance={"root": str(root.resolve()), "split": selection.split, "stride": stride, "actions": None},
    )
    return DatasetSources(tuple(sources), GroundTruthSpec(names, has_3d=False, has_2d=True), record)
