"""Stanford Dogs with StanfordExtra keypoints: 20 dog joints, a box and a mask per dog (2D only).

Layout read (ROOT holds the Stanford Dogs 'Images' folder and the StanfordExtra v12
annotations, as unzipped from stanfordextra_v12.zip):

    ROOT/Images/<breed>/<file>.jpg                                 Stanford Dogs photos
    ROOT/StanfordExtra_v12/StanfordExtra_v12.json                  a list of entries
    ROOT/StanfordExtra_v12/train_stanford_StanfordExtra_v12.npy    int indices into that list
    ROOT/StanfordExtra_v12/test_stanford_StanfordExtra_v12.npy     int indices into that list

An entry is {"img_path": "<breed>/<file>.jpg" (relative to Images/), "img_width",
"img_height", "img_bbox": [x, y, w, h], "joints": 24 x [x, y, visible], "seg": COCO
compressed RLE counts of the dog's mask, "is_multiple_dogs": bool}. Of the 24 joints
only the first 20 are annotated in StanfordExtra (the last four, eyes, withers and
throat, come from Animal-Pose and are always zero), so 20 are read, named as in
StanfordExtra's keypoint_definitions.csv. A joint is visible when its flag is > 0;
(x, y, 0) means annotated but hidden and counts as not visible. Points are read as
pixel-index coordinates. The val split file is not read (--split is train or test).
The crop box is img_bbox; the 'seg' mask makes the background white (an entry without
'seg' keeps the photo background). An image with several dogs appears once per dog:
such sample ids get '#<entry index>' appended.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from cache_schema import GroundTruthSpec
from stages.datasets.annotations import INDEX_TO_CORNER, SourceAnnotation
from stages.datasets.errors import AnnotationError
from stages.datasets.files import json_error, json_numbers, load_json, require_file
from stages.datasets.preparation import BACKGROUND_MASK
from stages.datasets.selection import DatasetSelection, DatasetSources, dataset_record
from stages.errors import ConfigError
from stages.sources import ImageSource

LAYOUT = """
ROOT/Images/<breed>/<file>.jpg
ROOT/StanfordExtra_v12/StanfordExtra_v12.json                 [{img_path, img_bbox, joints, seg, ...}, ...]
ROOT/StanfordExtra_v12/train_stanford_StanfordExtra_v12.npy   indices into the JSON list
ROOT/StanfordExtra_v12/test_stanford_StanfordExtra_v12.npy
"""
ANNOTATIONS = "StanfordExtra_v12"
JOINT_NAMES = (
    "Left front leg: paw",
    "Left front leg: middle joint",
    "Left front leg: top",
    "Left rear leg: paw",
    "Left rear leg: middle joint",
    "Left rear leg: top",
    "Right front leg: paw",
    "Right front leg: middle joint",
    "Right front leg: top",
    "Right rear leg: paw",
    "Right rear leg: middle joint",
    "Right rear leg: top",
    "Tail start",
    "Tail end",
    "Base of left ear",
    "Base of right ear",
    "Nose",
    "Chin",
    "Left ear tip",
    "Right ear tip",
)
JOINTS_IN_FILE = 24


def read_split_indices(path: Path, count: int) -> list[int]:
    """The entry indices of a split file: a 1-D integer .npy, each in [0, count)."""
    try:
        indices = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise AnnotationError(f"{path}: not a readable .npy of indices ({exc})") from None
    if indices.ndim != 1 or indices.dtype.kind not in "iu":
        raise AnnotationError(f"{path}: expected a 1-D integer array, got {indices.shape} {indices.dtype}")
    bad = indices[(indices < 0) | (indices >= count)]
    if bad.size:
        raise AnnotationError(f"{path}: index {int(bad[0])} is outside the {count} entries of the JSON list")
    return [int(i) for i in indices]


def parse_entry(path: Path, index: int, entry: Any) -> tuple[str, SourceAnnotation]:
    """(img_path, annotation) of one JSON entry; errors name the file and the entry's key."""
    key = f"[{index}]"
    if not isinstance(entry, dict):
        raise json_error(path, key, f"expected an object, got {type(entry).__name__}")
    for name in ("img_path", "img_bbox", "joints"):
        if name not in entry:
            raise json_error(path, key, f"missing field {name!r}")
    img_path = entry["img_path"]
    if (
        not isinstance(img_path, str)
        or not img_path
        or Path(img_path).is_absolute()
        or ".." in Path(img_path).parts
    ):
        raise json_error(path, f"{key}/img_path", f"expected a relative path, got {img_path!r}")
    box = json_numbers(path, f"{key}/img_bbox", entry["img_bbox"], 4)
    if box[2] <= 0 or box[3] <= 0:
        raise json_error(path, f"{key}/img_bbox", f"width and height must be > 0, got {box}")
    rows = entry["joints"]
    if not isinstance(rows, list) or len(rows) != JOINTS_IN_FILE:
        got = len(rows) if isinstance(rows, list) else type(rows).__name__
        raise json_error(
            path, f"{key}/joints", f"expected {JOINTS_IN_FILE} joints [x, y, visible], got {got}"
        )
    joints = np.array(
        [json_numbers(path, f"{key}/joints/{j}", row, 3) for j, row in enumerate(rows[: len(JOINT_NAMES)])]
    )
    visible = joints[:, 2] > 0
    seg = entry.get("seg")
    if seg is not None and not isinstance(seg, str):
        raise json_error(
            path, f"{key}/seg", f"expected COCO compressed RLE counts (a string), got {type(seg).__name__}"
        )
    annotation = SourceAnnotation(
        joints_2d=np.where(visible[:, None], joints[:, :2] + INDEX_TO_CORNER, 0.0),
        visible=visible,
        box=(box[0], box[1], box[2], box[3]),
        mask_rle=seg or None,
    )
    return img_path, annotation


def read_stanford_dogs(root: Path, selection: DatasetSelection) -> DatasetSources:
    """The selected split of StanfordExtra as annotated image sources (see the module docstring)."""
    root = Path(root)
    selection.refuse_h36m_options("dogs")
    json_path = require_file(root / ANNOTATIONS / "StanfordExtra_v12.json", "dogs", LAYOUT)
    entries = load_json(json_path)
    if not isinstance(entries, list) or not entries:
        raise json_error(json_path, "(top level)", "expected a non-empty list of dog entries")
    split_path = require_file(
        root / ANNOTATIONS / f"{selection.split}_stanford_StanfordExtra_v12.npy", "dogs", LAYOUT
    )
    stride = selection.stride_or(1)
    chosen = read_split_indices(split_path, len(entries))[::stride]
    parsed = [(index, *parse_entry(json_path, index, entries[index])) for index in chosen]
    # Counted over the whole list, so that a sample's id does not depend on the split or stride.
    repeats = Counter(e.get("img_path") for e in entries if isinstance(e, dict))
    sources = tuple(
        ImageSource(
            img_path if repeats[img_path] == 1 else f"{img_path}#{index}",
            root / "Images" / img_path,
            annotation,
        )
        for index, img_path, annotation in parsed
    )
    if not sources:
        raise ConfigError(f"dogs:{root}: the {selection.split} split holds no entry")
    record = dataset_record(
        "dogs",
        content={
            "joints_3d_frame": None,
            "background": f"{BACKGROUND_MASK} (StanfordExtra seg; photo without)",
        },
        provenance={"root": str(root.resolve()), "split": selection.split, "stride": stride, "actions": None},
    )
    return DatasetSources(sources, GroundTruthSpec(JOINT_NAMES, has_3d=False, has_2d=True), record)
