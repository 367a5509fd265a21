"""`keydiff3d manipulate`: reconstruct a cache sample, rig it with its keypoints, pose it, check it.

Thin: parse options, call stages.manipulation, write files, print what was written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from tqdm.auto import tqdm

from cache_schema import CacheError, CacheReader
from pipeline.cli_errors import fail
from pipeline.manipulate_report import labelled, overlay_sheet, render_row, save_png, skinning_colours
from pipeline.out_paths import check_out_file
from stages.devices import resolve_device
from stages.errors import StageError
from stages.keypoints.checkpoint import load_run
from stages.manipulation.check import (
    draw_frame_pairs,
    ground_truth_keypoints,
    mean_scores,
    pair_keypoints,
    score_pair,
)
from stages.manipulation.errors import ManipulationError, RigFileError
from stages.manipulation.gaussians import Gaussians
from stages.manipulation.gltf_export import ExportConfig, build_gltf, write_glb
from stages.manipulation.keypoints import learned_adjacency, predict_sample_keypoints
from stages.manipulation.kinematics import forward_kinematics, pose_gaussians
from stages.manipulation.mesh import MeshConfig, hull_mesh
from stages.manipulation.ply import read_gaussians_ply, write_gaussians_ply
from stages.manipulation.pose_file import load_pose, solve_pose
from stages.manipulation.reconstruct import CarvingConfig, reconstruct_visual_hull
from stages.manipulation.render import preview_cameras, save_gif, silhouette_iou
from stages.manipulation.rig import Rig, RigConfig, build_rig, skinning_weights
from stages.manipulation.sample import read_object_views, sample_index
from stages.manipulation.transfer import splat_masks

app = typer.Typer(
    help="Pose the generated 3D object with its discovered keypoints: reconstruct, rig, pose, check.",
    no_args_is_help=True,
    add_completion=False,
)


def _write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


@app.command("reconstruct")
def reconstruct_command(
    cache: Path = typer.Argument(..., help="A stage-one cache (Zarr store)."),
    sample: str = typer.Option(..., "--sample", help="Sample index (3) or id (humanoid/test/000003)."),
    out: Path = typer.Option(..., "--out", help="3D Gaussian Splatting PLY to write."),
    grid: int | None = typer.Option(None, help="Voxels per side (default: 1.5 per image pixel)."),
    preview: Path | None = typer.Option(None, help="Also write a PNG of the object from 4 orbit views."),
) -> None:
    """Visual hull of one sample's views and masks, coloured from the views, in the cache's world frame."""
    try:
        views = read_object_views(cache, sample)
        result = reconstruct_visual_hull(views, CarvingConfig(grid=grid), progress=typer.echo)
        masks = splat_masks(result.gaussians, views.intrinsics, views.world_to_camera, views.masks.shape[-1])
    except (StageError, CacheError, ValueError) as exc:
        fail(str(exc))
    iou = silhouette_iou(masks, views.masks)
    write_gaussians_ply(out, result.gaussians)
    typer.echo(
        f"silhouette IoU in the sample's {len(iou)} views: mean {iou.mean():.3f} "
        f"(per view {', '.join(f'{x:.3f}' for x in iou)})"
    )
    if preview is not None:
        k, w = preview_cameras(result.gaussians.means, 256)
        save_png(render_row(result.gaussians, None, (), k, w, 256), preview)
        typer.echo(f"  preview: {preview}")
    typer.echo(
        f"wrote {result.gaussians.num_points} Gaussians of sample {views.sample_id} "
        f"(voxel {result.voxel_size:.4f}) to {out}"
    )


@app.command("load")
def load_command(ply: Path = typer.Argument(..., help="A 3DGS / Gaussian Frosting PLY.")) -> None:
    """Check that a PLY holds 3D Gaussians and print a summary."""
    try:
        gaussians = read_gaussians_ply(ply)
    except StageError as exc:
        fail(str(exc))
    low, high = gaussians.means.min(axis=0), gaussians.means.max(axis=0)
    rest = 0 if gaussians.sh_rest is None else gaussians.sh_rest.shape[1]
    typer.echo(f"{ply}: {gaussians.num_points} Gaussians")
    typer.echo(f"  bounds {np.round(low, 3).tolist()} .. {np.round(high, 3).tolist()}")
    typer.echo(
        f"  median scale {np.median(gaussians.scales):.4g}, mean opacity {gaussians.opacities.mean():.3f}, "
        f"{rest} higher-order SH coefficients"
    )


@app.command("rig")
def rig_command(
    run_dir: Path = typer.Argument(..., help="A training run directory (its last checkpoint is used)."),
    cache: Path = typer.Argument(..., help="The cache the sample is in."),
    sample: str = typer.Option(..., "--sample", help="Sample index or id."),
    out: Path = typer.Option(..., "--out", help="Rig JSON to write."),
    ply: Path | None = typer.Option(None, help="The sample's PLY: also write a PNG of its skinning."),
    keypoints: str = typer.Option(
        "predicted", help="predicted (the run's keypoints) | ground-truth (the cache's joints, synthetic)."
    ),
    root: int | None = typer.Option(None, help="Root keypoint (default: the one nearest the centroid)."),
    sigma_fraction: float = typer.Option(0.04, help="Skinning sigma / keypoints' bounding-box diagonal."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
) -> None:
    """Skeleton (minimum spanning tree of the keypoints) and skinning settings, as JSON."""
    try:
        config = RigConfig(root=root, sigma_fraction=sigma_fraction)
        reader = CacheReader(cache)
        index = sample_index(reader, sample)
        run = load_run(run_dir, resolve_device(device))
        if keypoints == "predicted":
            joints = predict_sample_keypoints(run, cache, index)
            names: tuple[str, ...] = ()
        elif keypoints == "ground-truth":
            if reader.layout.ground_truth is None:
                raise ManipulationError(f"{cache}: has no ground-truth joints; use --keypoints predicted")
            joints = reader.read_ground_truth([index])["joints_3d"][0].astype(np.float64)
            names = reader.layout.ground_truth.joint_names
        else:
            raise ValueError(f"--keypoints must be predicted or ground-truth, got {keypoints!r}")
        # Ground-truth joints have no learned adjacency: their tree is the Euclidean one.
        adjacency = learned_adjacency(run) if keypoints == "predicted" else None
        notes = {
            "run": str(run.checkpoint),
            "cache": str(cache),
            "sample": int(index),
            "keypoints": keypoints,
        }
        rig = build_rig(joints, adjacency, config, names, notes)
        gaussians = read_gaussians_ply(ply) if ply is not None else None
    except (StageError, CacheError, ValueError) as exc:
        fail(str(exc))
    rig.save(out)
    typer.echo(f"skeleton: {len(rig.bones)} bones from root {rig.root}: {', '.join(rig.bone_names)}")
    if gaussians is not None:
        painted = Gaussians.from_colours(
            gaussians.means,
            skinning_colours(skinning_weights(gaussians.means, rig)),
            gaussians.scales.max(axis=1),
        )
        k, w = preview_cameras(gaussians.means, 256)
        picture = out.with_suffix(".png")
        save_png(render_row(painted, rig.joints, rig.bones, k, w, 256), picture)
        typer.echo(f"  skinning preview: {picture}")
    typer.echo(f"wrote the rig of sample {index} ({keypoints} keypoints, sigma {rig.sigma:.4f}) to {out}")


@app.command("pose")
def pose_command(
    rig_path: Path = typer.Argument(..., metavar="RIG", help="Rig JSON from `rig`."),
    ply: Path = typer.Argument(..., help="The object's PLY (the one the rig was made for)."),
    pose_path: Path = typer.Argument(..., metavar="POSE", help="Pose JSON (see examples/poses/)."),
    out: Path = typer.Option(..., "--out", help="Posed PLY to write; posed keypoints go beside it."),
    renders: Path | None = typer.Option(None, help="Folder for before/after PNGs and the turntable GIF."),
    views: int = typer.Option(4, help="Orbit views in the before/after PNG."),
    size: int = typer.Option(256, help="Render size, pixels."),
    gif: bool = typer.Option(True, help="Also write a turntable GIF of the posed object."),
) -> None:
    """Pose the rig and deform the object by linear blend skinning."""
    try:
        rig = Rig.load(rig_path)
        gaussians = read_gaussians_ply(ply)
        request = load_pose(pose_path, rig)
        transforms = forward_kinematics(rig, solve_pose(rig, request))
        posed = pose_gaussians(gaussians, skinning_weights(gaussians.means, rig), transforms)
    except (StageError, ValueError) as exc:
        fail(str(exc))
    write_gaussians_ply(out, posed)
    keypoints_path = _write_json(
        out.with_suffix(".keypoints.json"),
        {
            "frame": "cache world frame",
            "rest": rig.joints.tolist(),
            "posed": transforms.joints.tolist(),
            "bones": rig.bone_names,
            "targets": {str(k): v.tolist() for k, v in request.targets.items()},
        },
    )
    typer.echo(f"wrote the posed object to {out} and its keypoints to {keypoints_path}")
    if renders is None:
        return
    everything = np.concatenate([gaussians.means, posed.means])
    k, w = preview_cameras(everything, size, views)
    before = labelled(render_row(gaussians, rig.joints, rig.bones, k, w, size), "before")
    after = labelled(render_row(posed, transforms.joints, rig.bones, k, w, size), "after")
    sheet = save_png(np.concatenate([before, after], axis=0), renders / "before_after.png")
    typer.echo(f"  renders: {sheet}")
    if gif:
        turns = 24
        k, w = preview_cameras(everything, size // 2, turns)
        frames = [
            np.concatenate(
                [
                    render_row(gaussians, None, (), k[i : i + 1], w[i : i + 1], size // 2),
                    render_row(posed, None, (), k[i : i + 1], w[i : i + 1], size // 2),
                ],
                axis=1,
            )
            for i in tqdm(range(turns), desc="turntable", unit="frame", leave=False)
        ]
        typer.echo(f"  turntable (before | after): {save_gif(frames, renders / 'turntable.gif')}")


@app.command("export")
def export_command(
    rig_path: Path = typer.Argument(..., metavar="RIG", help="Rig JSON from `rig`."),
    cache: Path = typer.Argument(..., help="The cache the rig's sample is in."),
    sample: str = typer.Option(..., "--sample", help="Sample index or id (the rig's)."),
    out: Path = typer.Option(..., "--out", help="glTF binary (.glb) to write."),
    poses: list[Path] | None = typer.Option(
        None, "--pose", help="Pose JSON; repeat for more keyframes (an animation that plays)."
    ),
    voxels: int = typer.Option(64, help="Mesh grid, voxels per side: sets the triangle count."),
    seconds_per_pose: float = typer.Option(1.0, help="Time between keyframes, seconds."),
    from_rest: bool = typer.Option(True, help="Start the animation at the rest pose."),
) -> None:
    """Rigged glTF (.glb) for Blender / three.js: visual-hull mesh, skin from the rig, poses as keyframes."""
    try:
        if out.suffix.lower() != ".glb":
            raise ValueError(f"--out {out}: must end in .glb (one binary glTF file)")
        check_out_file(out)  # before minutes of carving, not as an OSError when writing
        export = ExportConfig(seconds_per_pose=seconds_per_pose, from_rest=from_rest)
        mesh_config = MeshConfig(voxels=voxels)
        rig = Rig.load(rig_path)
        views = read_object_views(cache, sample)
        made_for = rig.notes.get("sample")
        if made_for is not None and int(made_for) != views.index:
            raise RigFileError(
                f"{rig_path}: made for sample {made_for}, not sample {views.index} ({views.sample_id})"
            )
        skeleton_poses = [
            solve_pose(rig, load_pose(path, rig)) for path in tqdm(poses or [], desc="poses", leave=False)
        ]
        mesh = hull_mesh(views, mesh_config, progress=typer.echo)
        gltf = build_gltf(mesh, rig, skinning_weights(mesh.vertices, rig), skeleton_poses, export)
    except (StageError, CacheError, ValueError) as exc:
        fail(str(exc))
    write_glb(out, gltf)
    keyframes = len(skeleton_poses) + int(from_rest)
    animation = f", an animation of {keyframes} keyframes" if skeleton_poses else ", no animation"
    typer.echo(
        f"wrote {out}: {len(mesh.vertices)} vertices, {len(mesh.faces)} triangles, "
        f"{len(rig.joints)} joints{animation} (+Y up: the cache's +Z turned by one root node)"
    )


@app.command("check")
def check_command(
    run_dir: Path = typer.Argument(..., help="A training run directory."),
    cache: Path = typer.Argument(..., help="A synthetic-world cache (render backend)."),
    out: Path = typer.Option(..., "--out", help="Folder for check.json and the silhouette PNGs."),
    sample_a: str | None = typer.Option(None, "--sample-a", help="Object sample (with --sample-b)."),
    sample_b: str | None = typer.Option(None, "--sample-b", help="Sample whose pose it is moved into."),
    pairs: int = typer.Option(5, help="Without --sample-a/-b: this many pairs of frames of one clip."),
    min_gap: float = typer.Option(0.3, help="Shortest time between the two frames of a pair, seconds."),
    max_gap: float = typer.Option(1.0, help="Longest time between the two frames of a pair, seconds."),
    seed: int = typer.Option(0, help="Seed of the pair draw."),
    ground_truth: bool = typer.Option(
        True, help="Also rig with the ground-truth joints when the cache has them."
    ),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
) -> None:
    """Reconstruct A, rig it, move it into B's pose; silhouette IoU with B's masks vs not moving it."""
    try:
        reader = CacheReader(cache)
        if (sample_a is None) != (sample_b is None):
            raise ValueError("give both --sample-a and --sample-b, or neither (then pairs are drawn)")
        if sample_a is not None and sample_b is not None:
            chosen = [(sample_index(reader, sample_a), sample_index(reader, sample_b))]
        else:
            chosen = draw_frame_pairs(reader, pairs, min_gap, max_gap, seed)
        run = load_run(run_dir, resolve_device(device))
        adjacency = learned_adjacency(run)
        truth = ground_truth_keypoints(reader) if ground_truth else None
        records = []
        for a, b in tqdm(chosen, desc="pairs", unit="pair"):
            first, second = read_object_views(cache, a), read_object_views(cache, b)
            gaussians = reconstruct_visual_hull(first).gaussians
            record: dict = {"sample_a": first.sample_id, "sample_b": second.sample_id, "index": [a, b]}
            for name, (joints_a, joints_b, weights) in pair_keypoints(
                run, cache, a, b, adjacency, truth
            ).items():
                record[name], result = score_pair(gaussians, joints_a, joints_b, weights, second)
                ious = {"undeformed": result.undeformed, "rigid": result.rigid, "deformed": result.deformed}
                save_png(overlay_sheet(result.masks, ious, second.masks), out / f"pair_{a}_{b}_{name}.png")
            records.append(record)
    except (StageError, CacheError, ValueError) as exc:
        fail(str(exc))
    summary = mean_scores(records)
    path = _write_json(
        out / "check.json",
        {"run": str(run.checkpoint), "cache": str(cache), "pairs": records, "mean": summary},
    )
    for name, values in summary.items():
        typer.echo(
            f"{name:>12} keypoints: IoU undeformed {values['iou_undeformed']:.3f}, "
            f"rigid {values['iou_rigid']:.3f}, deformed {values['iou_deformed']:.3f} "
            f"(mean of {len(records)} pairs)"
        )
    typer.echo(f"wrote {path} and {len(records) * len(summary)} silhouette PNGs to {out}")
