"""`keydiff3d predict`: image files in, 3D keypoints and 2D keypoints on the original images out.

Stage one runs on the images with the SV3D-p model (same generation settings as the run's
training cache, which `fit` keeps in the run's stage_one.json; see predict_stage_one.py),
then the run's keypoint model predicts.
The 2D keypoints are the 3D ones projected into view 0, which is the input image itself
(`replace_input_frame`), mapped back through the preprocessing crop to source pixels.

Inputs are image files or folders (their images, recursively, sorted by path); a file given
twice is predicted once. Each image's overlay is OUT/<stem>_keypoints.png; images that share
a stem (a/x.png and b/x.png, or x.png and x.jpg) get <stem>_1_keypoints.png,
<stem>_2_keypoints.png, ... in the order of their full paths, so no overlay overwrites
another and the same inputs always get the same names. keypoints.json maps every image to
its overlay.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cache_schema import CacheReader, CacheStore  # noqa: E402
from cache_schema.layout import STATUS_FAILED  # noqa: E402
from pipeline.backends import model_dir_exists  # noqa: E402
from pipeline.generate import GenerateJob, run_generate  # noqa: E402
from pipeline.predict_stage_one import check_model_fits_run, choose_stage_one  # noqa: E402
from pipeline.train_report import draw_keypoints  # noqa: E402
from stages.images import prepared_to_source, read_rgba  # noqa: E402
from stages.keypoints.checkpoint import TrainedRun, load_run  # noqa: E402
from stages.keypoints.predict import predict_cache  # noqa: E402
from stages.keypoints.skeleton import maximum_spanning_tree  # noqa: E402
from stages.sources import list_image_sources  # noqa: E402


@dataclass(frozen=True)
class PredictJob:
    """One `keydiff3d predict` call."""

    images: tuple[Path, ...]
    """Image files (any format stage one reads) or folders of them."""
    model: Path
    """Local SV3D-p model directory (the one the run's caches were made with)."""
    run_dir: Path
    """Training run directory (its latest checkpoint is used)."""
    out: Path
    """Folder for keypoints.json and one overlay PNG per image."""
    cache: Path | None = None
    """Keep stage one's output in this store (resumable); default: a temporary one."""
    device: str = "cpu"
    progress: bool = True
    stage_one_defaults: bool = False
    """For a run from before stage_one.json whose training cache is gone: use the SV3D-p
    defaults instead of refusing (runs trained on synthetic renders)."""


def predict_images(job: PredictJob, notice: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run both stages on the images; write keypoints.json and overlays; return the record.

    Everything that can be refused (images, run, stage-one settings, the model's sizes) is
    checked before stage one runs: it is by far the slowest part. notice(line) gets each
    note on the stage-one settings (also kept under "notes") before stage one starts."""
    images = input_images(job.images)
    run = load_run(job.run_dir, job.device)
    tell = notice or (lambda line: None)
    stage_one = choose_stage_one(job.run_dir, job.stage_one_defaults)
    for note in stage_one.notes:  # told before the model check, which may refuse
        tell(note)
    model_dir_exists(str(job.model))
    model_notes = check_model_fits_run(job.model, stage_one, run, job.run_dir)
    for note in model_notes:
        tell(note)
    notes = [*stage_one.notes, *model_notes]
    job.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="keydiff3d-predict-") as scratch:
        listing = Path(scratch) / "images.txt"
        # Absolute paths as the list entries make each sample id the image's own path.
        listing.write_text("".join(f"{p}\n" for p in images))
        cache = job.cache or Path(scratch) / "stage_one.zarr"
        run_generate(
            GenerateJob(listing, job.model, cache, stage_one.config, device=job.device, progress=job.progress)
        )
        record = _predict(run, cache, job)
    record["checkpoint"] = str(run.checkpoint)
    record["stage_one_cache"] = str(job.cache) if job.cache else None
    record["notes"] = notes
    (job.out / "keypoints.json").write_text(json.dumps(record, indent=2))
    return record


def input_images(paths: Iterable[Path]) -> list[Path]:
    """Absolute paths of the image files and of the images in the folders, each once, in order."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"no such image file or folder: {', '.join(missing)}")
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        inside = [s.path for s in list_image_sources(path)] if path.is_dir() else [path]
        found.update((p.resolve(), None) for p in inside)
    return list(found)


def overlay_names(images: Iterable[str | Path]) -> dict[str, str]:
    """The overlay file name of each image: <stem>_keypoints.png, or <stem>_<n>_keypoints.png
    (n = 1, 2, ... in path order) for images that share a stem. A name still taken (an input
    literally called x_1.png) gets a further _<n>. Names are compared without case, as macOS
    and Windows file systems do."""
    ordered = sorted({str(p) for p in images})
    stems = Counter(Path(p).stem.lower() for p in ordered)
    seen: Counter[str] = Counter()
    used: set[str] = set()
    names = {}
    for image in ordered:
        stem = Path(image).stem
        seen[stem.lower()] += 1
        base = stem if stems[stem.lower()] == 1 else f"{stem}_{seen[stem.lower()]}"
        name, extra = f"{base}_keypoints.png", 1
        while name.lower() in used:  # an input literally named like another's overlay
            extra += 1
            name = f"{base}_{extra}_keypoints.png"
        used.add(name.lower())
        names[image] = name
    return names


def _predict(run: TrainedRun, cache: Path, job: PredictJob) -> dict[str, Any]:
    store = CacheStore.open(cache)
    rows = zip(store.sample_ids(), store.statuses(), store.failure_reasons(), strict=True)
    failed = [{"image": str(i), "reason": str(why)} for i, status, why in rows if status == STATUS_FAILED]
    reader = CacheReader(cache)
    predictions = []
    weights = run.model.edge_weights().detach().cpu().numpy()
    edges = maximum_spanning_tree(weights)
    if len(reader.done_indices()):
        result = predict_cache(run.model, cache, run.num_views, device=job.device)
        boxes = reader.read_batch(result["index"].tolist(), ("crop_box",))["crop_box"]
        size = reader.layout.image_size
        names = overlay_names([*input_images(job.images), *map(str, result["sample_id"])])
        for i, image in enumerate(result["sample_id"]):
            source_uv = prepared_to_source(result["keypoints_2d"][i, 0], boxes[i], size)
            overlay = job.out / names[str(image)]
            write_overlay(overlay, Path(str(image)), source_uv, edges)
            predictions.append(
                {
                    "image": str(image),
                    "keypoints_3d": result["keypoints_3d"][i].tolist(),
                    "keypoints_2d": source_uv.tolist(),
                    "depth": result["depth"][i, 0].tolist(),
                    "overlay": str(overlay),
                }
            )
    return {
        "frames": {
            "keypoints_3d": "the stage-one world frame (the model frame): object at the origin, +z up, "
            "cameras on the SV3D-p orbit looking at the origin, the input camera at azimuth 0",
            "keypoints_2d": "pixels of the ORIGINAL image, x right, y down, corner at 0",
            "depth": "camera z of the input view (OpenCV camera: +z forward)",
        },
        "skeleton": [list(e) for e in edges],
        "edge_weights": weights.tolist(),
        "predictions": predictions,
        "failed": failed,
    }


def write_overlay(out: Path, image: Path, uv: np.ndarray, edges: Sequence[tuple[int, int]]) -> Path:
    """The keypoints (N, 2) and skeleton drawn over the original image file."""
    rgba, _ = read_rgba(image, max_pixels=100_000_000)
    height, width = rgba.shape[:2]
    scale = 6.0 / max(height, width)
    fig, ax = plt.subplots(figsize=(max(2.0, width * scale), max(2.0, height * scale)))
    draw_keypoints(ax, rgba[..., :3], uv, list(edges), image.name)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
