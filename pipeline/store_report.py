"""`inspect`, `verify` and `preview` of a store: what people look at before trusting a cache."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cache_schema import (
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_NAMES,
    CacheError,
    CacheStore,
)
from cache_schema.repair import ShardDamage, find_damaged_shards
from stages.synthetic.versions import world_version


def _stored_bytes(store: CacheStore, name: str) -> int:
    root = store.path / name
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.name != "zarr.json")


def _world_lines(source: dict) -> list[str]:
    """The synthetic world of a render store, or nothing for other stores."""
    world = source.get("world")
    if not isinstance(world, dict):
        return []
    return [
        f"world          {world.get('category')} split {world.get('split')} seed {world.get('seed')} "
        f"version {world_version(world)}"
    ]


def inspect_lines(path: Path) -> list[str]:
    """A human-readable description of a store."""
    store = CacheStore.open(path)
    meta = store.metadata
    status = store.statuses()
    counts = {name: int(np.sum(status == code)) for code, name in STATUS_NAMES.items()}
    lines = [
        f"store          {path}",
        f"schema         v{meta.schema_version}  fingerprint {meta.fingerprint[:16]}",
        f"backend        {meta.source.get('backend')}  inputs {meta.source.get('inputs')}",
        *_world_lines(meta.source),
        f"model          {meta.model.get('path', meta.model.get('model_dir', '-'))}",
        f"samples        {len(status)}: " + ", ".join(f"{v} {k}" for k, v in counts.items()),
        f"shards         {meta.layout.num_shards} x {meta.layout.samples_per_shard} samples",
        "",
        f"{'array':34s} {'shape':26s} {'dtype':8s} {'chunks':22s} {'shards':22s} "
        f"{'stored':>10s} {'raw':>10s} {'ratio':>6s}",
    ]
    total_stored = total_raw = 0
    for name, spec in meta.layout.arrays().items():
        array = store.array(name)
        stored = _stored_bytes(store, name)
        raw = int(np.prod(spec.shape)) * (np.dtype(spec.dtype).itemsize if spec.dtype != "str" else 0)
        total_stored += stored
        total_raw += raw
        ratio = f"{raw / stored:6.2f}" if stored and raw else "     -"
        lines.append(
            f"{name:34s} {str(tuple(array.shape)):26s} {spec.dtype:8s} {str(spec.chunks):22s} "
            f"{str(spec.shards or '-'):22s} {stored / 1e6:9.2f}M {raw / 1e6:9.2f}M {ratio}"
        )
    lines.append(
        f"{'total':34s} {'':26s} {'':8s} {'':22s} {'':22s} {total_stored / 1e6:9.2f}M {total_raw / 1e6:9.2f}M"
    )
    failed = np.flatnonzero(status == STATUS_FAILED)
    if failed.size:
        reasons = store.failure_reasons()
        ids = store.sample_ids()
        lines += ["", "failed samples:"] + [f"  {ids[i]}: {reasons[i]}" for i in failed[:20]]
        if failed.size > 20:
            lines.append(f"  ... and {failed.size - 20} more")
    lines += ["", "generation config:", json.dumps(meta.generation, indent=2, sort_keys=True)]
    if meta.capture:
        lines += ["feature capture:", json.dumps(meta.capture, indent=2, sort_keys=True)]
    lines += ["cameras:", json.dumps(meta.cameras, indent=2, sort_keys=True)]
    return lines


@dataclass(frozen=True)
class VerifyReport:
    """What `verify` found in a store that opened (one that does not raises CacheError)."""

    missing: list[str]
    """Shard files of done samples that are not on disk (they would read as zeros)."""
    problems: list[str]
    """Chunks that do not decode, and contents that break the schema's promises."""
    checked: int
    """Chunks read back."""
    damaged: bool = False
    """Whether a file is missing or does not decode, or status holds unknown codes: damage
    that `verify --repair` marks pending (NaN features or bad cameras it leaves alone)."""


def verify_store(path: Path) -> tuple[list[str], int]:
    """Every finding of `verify_report` as lines, and the chunks read; a store that does
    not open is one finding."""
    try:
        report = verify_report(path)
    except CacheError as exc:
        return [str(exc)], 0
    return report.missing + report.problems, report.checked


def verify_report(path: Path) -> VerifyReport:
    """Check that every file of every done sample exists, read every chunk back and check
    the contents. Raises CacheError when the store does not open (e.g. a damaged zarr.json)."""
    return scan_store(CacheStore.open(path)).report()


@dataclass
class StoreScan:
    """One read of a whole store: what `verify` reports and what `verify --repair` marks
    pending, so that repairing and verifying read the store once."""

    store: CacheStore
    partial: list[Path]
    """Temporary files left by a killed writer."""
    status: np.ndarray | None
    """(S,) status codes, or None when status or failure_reason does not read."""
    unreadable_status: str = ""
    """Why status/failure_reason did not read; the contents were then not checked."""
    reasons: np.ndarray | None = None
    damage: list[ShardDamage] = field(default_factory=list)
    """The damaged shards (cache_schema.repair.find_damaged_shards)."""
    content: list[tuple[int, str]] = field(default_factory=list)
    """(shard, finding) of the content checks of done samples."""
    checked: int = 0
    """Chunks read back, including those that do not decode."""

    @property
    def complete(self) -> bool:
        """Whether the contents were checked (status read); if not, a report after a
        repair needs a new scan."""
        return self.status is not None

    def report(self, repaired: frozenset[int] = frozenset()) -> VerifyReport:
        """The findings, leaving out those of the `repaired` shards: marked pending, none of
        their samples is done any more, so nothing found in them still holds."""
        layout = self.store.layout
        problems: list[str] = []
        if self.partial:
            problems.append(
                f"{len(self.partial)} temporary files left by a killed writer (e.g. {self.partial[0]}); "
                "rerunning generate removes them"
            )
        if self.status is None or self.reasons is None:
            findings = [f"status/failure_reason unreadable: {self.unreadable_status}"]
            return VerifyReport([], problems + findings, 0, True)
        kept = np.ones(layout.num_samples, dtype=bool)
        for shard in repaired:
            kept[slice(*layout.shard_range(shard))] = False
        damage = [d for d in self.damage if d.shard not in repaired]
        missing = []
        for d in damage:
            start, stop = layout.shard_range(d.shard)
            done = int(np.sum(self.status[start:stop] == STATUS_DONE))
            missing += [
                f"{name} shard {d.shard} (samples {start}..{stop - 1}, {done} done): "
                f"file {key} is missing or empty; its done samples would read as zeros"
                for name, key in d.missing
            ]
        bad_status = np.setdiff1d(np.unique(self.status[kept]), list(STATUS_NAMES))
        if bad_status.size:
            problems.append(f"status holds unknown codes {bad_status.tolist()}")
        unexplained = (self.status == STATUS_FAILED) & (self.reasons == "") & kept
        problems += [f"sample {i} is failed without a reason" for i in np.flatnonzero(unexplained)]
        for d in damage:
            start, stop = layout.shard_range(d.shard)
            problems += [
                f"{name} shard {d.shard} (samples {start}..{stop - 1}) unreadable: {why}"
                for name, why in zip(d.undecodable, d.errors, strict=True)
            ]
        problems += [finding for shard, finding in self.content if shard not in repaired]
        return VerifyReport(missing, problems, self.checked, bool(damage))


def scan_store(store: CacheStore) -> StoreScan:
    """Read every chunk of `store` once: its damaged shards and the content checks of its
    done samples (intrinsics, rotations, camera distances, masks, NaNs, black views)."""
    scan = StoreScan(store, sorted(store.path.rglob("*.partial")), None)
    try:
        status = store.statuses()
        scan.reasons = store.failure_reasons()
    except CacheError as exc:  # a damaged status chunk is a finding; repair still needs the scan
        scan.unreadable_status = str(exc)
        scan.damage = find_damaged_shards(store)
        return scan
    scan.status = status
    arrays = store.layout.arrays()

    def count_chunks(name: str, shard: int) -> None:
        spec = arrays[name]
        start, stop = store.layout.shard_range(shard)
        scan.checked += 1 if spec.shards or spec.chunks[0] > 1 else stop - start

    def check(name: str, shard: int, block: np.ndarray) -> None:
        count_chunks(name, shard)
        start, stop = store.layout.shard_range(shard)
        spec = arrays[name]
        done = status[start:stop] == STATUS_DONE
        if done.any() and spec.kind != "text":
            found = _check_block(name, block[done], start + np.flatnonzero(done), store)
            scan.content += [(shard, finding) for finding in found]

    scan.damage = find_damaged_shards(store, check)
    for d in scan.damage:  # read too, though `check` did not see them
        for name in dict.fromkeys([*d.undecodable, *(name for name, _ in d.missing)]):
            count_chunks(name, d.shard)
    return scan


def _check_block(name: str, block: np.ndarray, indices: np.ndarray, store: CacheStore) -> list[str]:
    """Content checks of the done samples of one shard of one array."""
    out: list[str] = []
    if block.dtype.kind == "f" and not np.all(np.isfinite(block)):
        bad = indices[~np.isfinite(block.reshape(len(block), -1)).all(axis=1)]
        out.append(f"{name}: NaN or inf in samples {bad[:5].tolist()}")
        return out
    size = store.layout.image_size
    if name == "intrinsics":
        fx, fy, cx, cy = block[..., 0, 0], block[..., 1, 1], block[..., 0, 2], block[..., 1, 2]
        bad = (fx <= 0) | (fy <= 0) | (cx < 0) | (cx > size) | (cy < 0) | (cy > size)  # (n, V)
        if np.any(bad):
            out.append(
                "intrinsics: non-positive focal or principal point outside the image in "
                f"{indices[bad.reshape(len(block), -1).any(axis=1)][:5].tolist()}"
            )
    elif name == "world_to_camera":
        rot = block[..., :3, :3].astype(np.float64)
        eye = np.einsum("...ij,...kj->...ik", rot, rot)
        if np.abs(eye - np.eye(3)).max() > 1e-3 or np.abs(np.linalg.det(rot) - 1).max() > 1e-3:
            out.append("world_to_camera: rotation part is not a proper rotation")
        if np.abs(block[..., 3, :] - np.array([0, 0, 0, 1])).max() > 1e-6:
            out.append("world_to_camera: last row is not (0, 0, 0, 1)")
        radius = store.metadata.cameras.get("radius")
        if radius is not None:
            centers = -np.einsum("...ji,...j->...i", rot, block[..., :3, 3])
            dist = np.linalg.norm(centers, axis=-1)
            if np.abs(dist - radius).max() > 1e-3 * max(radius, 1.0):
                out.append(
                    f"world_to_camera: camera distance {dist.min():.3f}..{dist.max():.3f} != radius {radius}"
                )
    elif name in ("view_masks", "input_mask"):
        if block.max() > 1:
            out.append(f"{name}: values other than 0/1")
    elif name == "views" and np.any(block.reshape(len(block), -1).max(axis=1) == 0):
        out.append("views: a done sample has all-black views")
    return out


def write_preview(path: Path, out: Path, samples: int = 4, min_tile: int = 128) -> Path:
    """One PNG: per done sample, the input, every kept view and every view mask."""
    store = CacheStore.open(path)
    done = np.flatnonzero(store.statuses() == STATUS_DONE)[:samples]
    if done.size == 0:
        raise CacheError(f"{path}: no done samples to preview")
    ids = store.sample_ids()
    size = store.layout.image_size
    tile = max(size, min_tile)
    k = store.layout.num_views
    label_h = 14
    grid = Image.new("RGB", ((1 + 2 * k) * tile, len(done) * (tile + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    azimuths = store.metadata.cameras.get("frame_azimuths_deg")
    kept = store.metadata.cameras.get("kept_frames")
    has_joints = "ground_truth/joints_2d" in store.layout.arrays()
    for row, index in enumerate(done):
        data = {n: np.asarray(store.array(n)[index]) for n in ("input_image", "views", "view_masks")}
        # Ground truth is drawn for people to check the cameras; training never reads it.
        joints = np.asarray(store.array("ground_truth/joints_2d")[index]) if has_joints else None
        # Dataset caches know 2D joints in the input view only: the others are marked invisible.
        visible = np.asarray(store.array("ground_truth/joints_2d_visible")[index]) if has_joints else None
        tiles = (
            [data["input_image"]]
            + list(data["views"])
            + [np.repeat(m[None] * 255, 3, 0) for m in data["view_masks"]]
        )
        top = row * (tile + label_h)
        for col, chw in enumerate(tiles):
            img = Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0)).astype(np.uint8))
            left = col * tile
            grid.paste(img.resize((tile, tile), Image.Resampling.NEAREST), (left, top + label_h))
            # a frame, so that an all-white mask does not vanish into the page
            draw.rectangle([left, top + label_h, left + tile - 1, top + label_h + tile - 1], outline="grey")
        if joints is not None and visible is not None:
            scale = tile / size
            for v in range(k):
                for u, w in joints[v][visible[v] > 0] * scale:
                    x, y = (1 + v) * tile + u, top + label_h + w
                    draw.ellipse([x - 2, y - 2, x + 2, y + 2], outline="red", fill="yellow")
        caption = "input | views" + (" + ground-truth joints" if joints is not None else "") + " | masks"
        draw.text((2, top), f"{ids[index]}  ({caption})", fill="black")
        if azimuths and kept:
            for v in range(k):
                draw.text(((1 + v) * tile + 2, top + label_h + 2), f"az {azimuths[kept[v]]:.0f}", fill="red")
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out
