"""Render a .glb the way a web viewer does: three.js's GLTFLoader in headless Chromium, one PNG per
keyframe time, and fail unless the object shows up in the picture; given the rig and cache it was
exported from, also fail unless three.js's silhouette matches the project's own render.

    python docs/render_gltf.py --synthetic --out renders/   # export a synthetic humanoid, compare
    python docs/render_gltf.py --rig demo/rig.json --cache demo/test.zarr --sample 18 \
        --pose examples/poses/lift_foot.json                # export a sample, compare
    python docs/render_gltf.py object.glb --out renders/ --times 0 1 2   # any .glb: pictures only

Comparing: the script exports the .glb with `keydiff3d manipulate export` (keyframe i at i
seconds, i = 0 the rest pose) and renders each keyframe from the cache's camera --view of the
sample: three.js through a camera with that view's intrinsics and extrinsics (in the file's +Y-up
frame), once lit and once as a black silhouette on white (scene.overrideMaterial, still skinned
by three.js); the project's side is the same visual-hull mesh (stages.manipulation.mesh, the one
the export writes) posed by `pose`'s forward kinematics and linear blend skinning, with every
bone's weight rather than the file's 4 strongest, rasterised at pixel centres
(render.triangle_mask). It writes iou.json, silhouettes.png (ours | three.js | XOR) and fails
when a keyframe's IoU is under --min-iou.

Needs node's `three` package under --three (`npm install --prefix .three three@0.187.0`, as the
nox session `render_gltf` does) and a Chromium (Debian: `apt install chromium`). Chromium has no
GPU here, so WebGL runs on SwiftShader. The page is served over a local HTTP server because
Chromium refuses ES modules from file:// URLs.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BACKGROUND = (238, 238, 238)

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><style>body {{ margin: 0; }} canvas {{ display: block; }}</style>
<script type="importmap">
{{"imports": {{"three": "./three/build/three.module.js", "three/addons/": "./three/examples/jsm/"}}}}
</script></head><body>
<script type="module">
import * as THREE from "three";
import {{ GLTFLoader }} from "three/addons/loaders/GLTFLoader.js";
const size = {size}, spec = {camera};  // spec null: frame the object as a viewer opens it
const renderer = new THREE.WebGLRenderer({{ antialias: true, preserveDrawingBuffer: true }});
renderer.setSize(spec ? 2 * size : size, size);
renderer.setClearColor(new THREE.Color("rgb({background})"));
renderer.setScissorTest(true);
document.body.appendChild(renderer.domElement);
const scene = new THREE.Scene();
scene.add(new THREE.HemisphereLight(0xffffff, 0x666666, 2.5));
const sun = new THREE.DirectionalLight(0xffffff, 1.5);
sun.position.set(2, 4, 3);
scene.add(sun);
new GLTFLoader().load("object.glb", (gltf) => {{
  scene.add(gltf.scene);
  if (gltf.animations.length) {{
    const mixer = new THREE.AnimationMixer(gltf.scene);
    const action = mixer.clipAction(gltf.animations[0]);
    // Played once and held: a looping clip would wrap its last keyframe's time back to the first.
    action.setLoop(THREE.LoopOnce);
    action.clampWhenFinished = true;
    action.play();
    mixer.setTime({time});
  }}
  gltf.scene.updateMatrixWorld(true);
  let camera;
  if (spec) {{  // the cache's camera: pose and projection (principal point included) from Python
    camera = new THREE.PerspectiveCamera(spec.fov, 1, spec.near, spec.far);
    camera.matrixAutoUpdate = false;
    camera.matrix.fromArray(spec.camera_to_world);
    camera.updateMatrixWorld(true);
    camera.projectionMatrix.fromArray(spec.projection);
    camera.projectionMatrixInverse.copy(camera.projectionMatrix).invert();
  }} else {{
    const box = new THREE.Box3().setFromObject(gltf.scene, true);  // precise: skinned vertices
    const centre = box.getCenter(new THREE.Vector3());
    const radius = box.getSize(new THREE.Vector3()).length() / 2;
    // +Y is up in glTF: look from the front (+Z) and a little above, as a viewer opens it.
    camera = new THREE.PerspectiveCamera(35, 1, radius / 100, radius * 100);
    camera.position.copy(centre).add(new THREE.Vector3(0.8, 0.5, 2.2).multiplyScalar(radius * 1.3));
    camera.lookAt(centre);
  }}
  renderer.setViewport(0, 0, size, size);
  renderer.setScissor(0, 0, size, size);
  renderer.render(scene, camera);
  if (spec) {{  // right half: the silhouette, black on white
    scene.background = new THREE.Color(0xffffff);
    scene.overrideMaterial = new THREE.MeshBasicMaterial({{ color: 0x000000 }});
    renderer.setViewport(size, 0, size, size);
    renderer.setScissor(size, 0, size, size);
    renderer.render(scene, camera);
  }}
  document.title = "rendered";
}}, undefined, (error) => {{ document.title = "error: " + error; }});
</script></body></html>
"""


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    """A quiet HTTP server of `folder` on a free local port, running in a thread."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=folder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def render(
    glb: Path, out: Path, time: float, size: int, three: Path, chromium: str, camera: dict | None = None
) -> Path:
    """Screenshot of the .glb at animation time `time`, seconds: size x size PNG, or with a
    `camera` (silhouettes.three_camera) 2 size x size, lit | silhouette."""
    with tempfile.TemporaryDirectory() as folder:
        site = Path(folder)
        shutil.copy(glb, site / "object.glb")
        (site / "three").symlink_to(three.resolve())
        background = ", ".join(str(c) for c in BACKGROUND)
        page = PAGE.format(size=size, time=time, background=background, camera=json.dumps(camera))
        (site / "index.html").write_text(page)
        server, port = serve(site)
        try:
            command = [
                chromium,
                "--headless",
                "--no-sandbox",  # root in a container has no user namespace for the sandbox
                "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader",
                "--hide-scrollbars",
                f"--window-size={2 * size if camera else size},{size}",
                "--virtual-time-budget=20000",  # let the page load the file and render first
                f"--screenshot={out.resolve()}",
                f"http://127.0.0.1:{port}/index.html",
            ]
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        finally:
            server.shutdown()
    if done.returncode != 0 or not out.is_file():
        raise SystemExit(f"chromium failed on {glb} ({done.returncode}): {done.stderr[-2000:]}")
    return out


def object_fraction(pixels: np.ndarray) -> float:
    """Fraction of a picture's pixels (H, W, 3) that are not the renderer's background; 0 when
    the corners are not that background either (the page stayed white: nothing was rendered)."""
    differs = np.abs(pixels.astype(np.int64) - np.array(BACKGROUND)).sum(axis=-1) > 24
    if differs[[0, 0, -1, -1], [0, -1, 0, -1]].any():
        return 0.0
    return float(differs.mean())


def synthetic_inputs(folder: Path) -> tuple[Path, Path, str, list[Path]]:
    """A 128-pixel synthetic humanoid cache, a rig of sample 0 with its true joints, the example poses."""
    from cache_schema import CacheReader
    from pipeline.generate import GenerateJob, run_generate
    from stages.config import GenerationConfig
    from stages.manipulation.rig import build_rig
    from stages.synthetic.world import SyntheticWorldConfig

    cache = folder / "humanoid.zarr"
    if not cache.exists():
        world = SyntheticWorldConfig("humanoid", "test", num_samples=1, seed=0)
        config = GenerationConfig(resolution=128)
        run_generate(GenerateJob(None, None, cache, config, "render", world, progress=False))
    reader = CacheReader(cache)
    joints = reader.read_ground_truth([0])["joints_3d"][0].astype(np.float64)
    names = reader.layout.ground_truth.joint_names
    rig = build_rig(joints, None, keypoint_names=names, notes={"sample": 0}).save(folder / "rig.json")
    poses = [ROOT / "examples" / "poses" / name for name in ("lift_foot.json", "raise_left_arm.json")]
    return rig, cache, "0", poses


def export(rig: Path, cache: Path, sample: str, poses: list[Path], voxels: int, glb: Path) -> Path:
    """`keydiff3d manipulate export`, as a user runs it (keyframes 1 second apart, from rest)."""
    beside = Path(sys.executable).with_name("keydiff3d")  # this Python's, before the PATH's
    command = [str(beside) if beside.is_file() else "keydiff3d", "manipulate", "export", str(rig), str(cache)]
    command += ["--sample", sample, "--out", str(glb), "--voxels", str(voxels), "--seconds-per-pose", "1"]
    subprocess.run(command + [w for p in poses for w in ("--pose", str(p))], check=True)
    return glb


def compare(args: argparse.Namespace, rig: Path, cache: Path, sample: str, poses: list[Path]) -> list[str]:
    """Export, render every keyframe both ways, write iou.json and silhouettes.png; the failures."""
    from silhouettes import Scene, sheet  # docs/silhouettes.py

    from stages.manipulation.render import silhouette_iou

    glb = export(rig, cache, sample, poses, args.voxels, args.out / "object.glb")
    scene = Scene.build(rig, cache, sample, poses, args.voxels, args.view, args.size)
    rows, records = [], []
    for key, name in enumerate(["rest", *(p.stem for p in poses)]):
        png = args.out / f"object_t{key}.png"
        render(glb, png, float(key), args.size, args.three, args.chromium, scene.three_camera())
        picture = np.asarray(Image.open(png).convert("RGB"))
        lit, silhouette = picture[:, : args.size], picture[:, args.size :]
        # 4x MSAA resolves edge pixels to 64, 128 or 192: in when at least half the samples are.
        three = silhouette.mean(axis=-1) < 160
        ours = scene.mask(key)
        iou = float(silhouette_iou(ours[None], three[None])[0])
        records.append(
            {
                "time": float(key),
                "pose": name,
                "iou": round(iou, 4),
                "pixels_ours": int(ours.sum()),
                "pixels_three": int(three.sum()),
                "picture": png.name,
            }
        )
        rows.append((ours, lit, three, f"{name} (t={key}s) IoU {iou:.3f}"))
    Image.fromarray(sheet(rows)).save(args.out / "silhouettes.png")
    result = {
        "glb": str(glb),
        "rig": str(rig),
        "cache": str(cache),
        "sample": scene.sample_id,
        "view": args.view,
        "size": args.size,
        "voxels": args.voxels,
        "min_iou": args.min_iou,
        "keyframes": records,
        "ours": "visual-hull mesh posed by forward_kinematics + linear_blend_skinning (all bone weights), "
        "rasterised at pixel centres (stages.manipulation.render.triangle_mask)",
        "three": "three.js GLTFLoader + AnimationMixer in headless Chromium, the cache camera, "
        "black MeshBasicMaterial silhouette, pixels at least half covered (< 160 of 255)",
    }
    (args.out / "iou.json").write_text(json.dumps(result, indent=1))
    print(f"{'keyframe':<16} {'time':>5} {'IoU':>6} {'ours px':>8} {'three px':>8}")
    for r in records:
        print(
            f"{r['pose']:<16} {r['time']:>5g} {r['iou']:>6.3f} {r['pixels_ours']:>8} {r['pixels_three']:>8}"
        )
    print(f"wrote {args.out / 'iou.json'} and {args.out / 'silhouettes.png'}")
    return [f"{r['pose']} (IoU {r['iou']:.3f})" for r in records if r["iou"] < args.min_iou]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("glb", nargs="?", type=Path, help="A .glb to render (pictures only, no comparison).")
    parser.add_argument("--synthetic", action="store_true", help="Make a synthetic humanoid and compare.")
    parser.add_argument("--rig", type=Path, help="Rig JSON (`keydiff3d manipulate rig`): export and compare.")
    parser.add_argument("--cache", type=Path, help="The rig's cache (with --rig).")
    parser.add_argument("--sample", help="The rig's sample, index or id (with --rig).")
    parser.add_argument(
        "--pose",
        type=Path,
        action="append",
        default=[],
        help="Pose JSON, repeated (--synthetic: the examples).",
    )
    parser.add_argument("--view", type=int, default=0, help="The cache camera to compare in.")
    parser.add_argument("--voxels", type=int, default=64, help="Mesh grid of the export.")
    parser.add_argument("--min-iou", type=float, default=0.9, help="Fail under this silhouette IoU.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "render_gltf")
    parser.add_argument("--times", type=float, nargs="+", default=[0.0, 1.0, 2.0], help="Seconds (a .glb).")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--three", type=Path, default=ROOT / ".three" / "node_modules" / "three")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args()
    if sum([args.glb is not None, args.synthetic, args.rig is not None]) != 1:
        parser.error("give one of: a .glb, --synthetic, --rig with --cache and --sample")
    if args.rig is not None and (args.cache is None or args.sample is None):
        parser.error("--rig needs --cache and --sample (and --pose files for an animation)")
    if args.chromium is None:
        parser.error("no chromium on PATH (Debian: apt install chromium); or pass --chromium")
    if not (args.three / "build" / "three.module.js").is_file():
        parser.error(f"--three {args.three}: no three.js there (npm install --prefix .three three@0.187.0)")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.glb is None:
        if args.synthetic:
            rig, cache, sample, poses = synthetic_inputs(args.out)
            inputs = (rig, cache, sample, args.pose or poses)
        else:
            inputs = (args.rig, args.cache, args.sample, args.pose)
        failed = compare(args, *inputs)
        if failed:
            sys.exit(f"three.js's silhouette is under IoU {args.min_iou} of the project's in {failed}")
        return
    failed = []
    for time in args.times:
        png = render(
            args.glb, args.out / f"{args.glb.stem}_t{time:g}.png", time, args.size, args.three, args.chromium
        )
        fraction = object_fraction(np.asarray(Image.open(png).convert("RGB")))
        print(f"{png}: the object covers {fraction:.1%} of the picture")
        if fraction < 0.01:
            failed.append(png.name)
    if failed:
        sys.exit(f"nothing rendered in {failed}: three.js could not load or draw {args.glb}")


if __name__ == "__main__":
    main()
