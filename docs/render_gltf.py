"""Render a .glb the way a web viewer does: three.js's GLTFLoader in headless Chromium, one PNG per
keyframe time, and fail unless the object shows up in the picture.

    python docs/render_gltf.py object.glb --out renders/ --times 0 1 2
    python docs/render_gltf.py --synthetic --out renders/    # export a synthetic humanoid first

Needs node's `three` package under --three (`npm install --prefix .three three@0.187.0`, as the
nox session `render_gltf` does) and a Chromium (Debian: `apt install chromium`). Chromium has no
GPU here, so WebGL runs on SwiftShader. The page is served over a local HTTP server because
Chromium refuses ES modules from file:// URLs.
"""

from __future__ import annotations

import argparse
import functools
import http.server
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
<html><head><meta charset="utf-8"><style>body {{ margin: 0; }}</style>
<script type="importmap">
{{"imports": {{"three": "./three/build/three.module.js", "three/addons/": "./three/examples/jsm/"}}}}
</script></head><body>
<script type="module">
import * as THREE from "three";
import {{ GLTFLoader }} from "three/addons/loaders/GLTFLoader.js";
const renderer = new THREE.WebGLRenderer({{ antialias: true, preserveDrawingBuffer: true }});
renderer.setSize({size}, {size});
renderer.setClearColor(new THREE.Color("rgb({background})"));
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
  const box = new THREE.Box3().setFromObject(gltf.scene, true);  // precise: skinned vertices
  const centre = box.getCenter(new THREE.Vector3());
  const radius = box.getSize(new THREE.Vector3()).length() / 2;
  // +Y is up in glTF: look from the front (+Z) and a little above, as a viewer opens it.
  const camera = new THREE.PerspectiveCamera(35, 1, radius / 100, radius * 100);
  camera.position.copy(centre).add(new THREE.Vector3(0.8, 0.5, 2.2).multiplyScalar(radius * 1.3));
  camera.lookAt(centre);
  renderer.render(scene, camera);
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


def render(glb: Path, out: Path, time: float, size: int, three: Path, chromium: str) -> Path:
    """Screenshot (size x size PNG) of the .glb at animation time `time`, seconds."""
    with tempfile.TemporaryDirectory() as folder:
        site = Path(folder)
        shutil.copy(glb, site / "object.glb")
        (site / "three").symlink_to(three.resolve())
        background = ", ".join(str(c) for c in BACKGROUND)
        (site / "index.html").write_text(PAGE.format(size=size, time=time, background=background))
        server, port = serve(site)
        try:
            command = [
                chromium,
                "--headless",
                "--no-sandbox",  # root in a container has no user namespace for the sandbox
                "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader",
                "--hide-scrollbars",
                f"--window-size={size},{size}",
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


def object_fraction(png: Path) -> float:
    """Fraction of the picture's pixels that are not the renderer's background; 0 when the
    corners are not that background either (the page stayed white: nothing was rendered)."""
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.int64)
    differs = np.abs(pixels - np.array(BACKGROUND)).sum(axis=-1) > 24
    if differs[[0, 0, -1, -1], [0, -1, 0, -1]].any():
        return 0.0
    return float(differs.mean())


def synthetic_glb(folder: Path) -> Path:
    """Export a 128-pixel synthetic humanoid, rigged with its true joints, with the example poses."""
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
    glb = folder / "object.glb"
    poses = [ROOT / "examples" / "poses" / name for name in ("lift_foot.json", "raise_left_arm.json")]
    command = ["keydiff3d", "manipulate", "export", str(rig), str(cache), "--sample", "0", "--out", str(glb)]
    subprocess.run(command + [w for p in poses for w in ("--pose", str(p))], check=True)
    return glb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("glb", nargs="?", type=Path, help="The .glb to render.")
    parser.add_argument("--synthetic", action="store_true", help="Export a synthetic humanoid and render it.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "render_gltf")
    parser.add_argument("--times", type=float, nargs="+", default=[0.0, 1.0, 2.0], help="Seconds.")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--three", type=Path, default=ROOT / ".three" / "node_modules" / "three")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args()
    if (args.glb is None) == (not args.synthetic):
        parser.error("give a .glb or --synthetic (not both)")
    if args.chromium is None:
        parser.error("no chromium on PATH (Debian: apt install chromium); or pass --chromium")
    if not (args.three / "build" / "three.module.js").is_file():
        parser.error(f"--three {args.three}: no three.js there (npm install --prefix .three three@0.187.0)")
    args.out.mkdir(parents=True, exist_ok=True)
    glb = args.glb or synthetic_glb(args.out)
    failed = []
    for time in args.times:
        png = render(glb, args.out / f"{glb.stem}_t{time:g}.png", time, args.size, args.three, args.chromium)
        fraction = object_fraction(png)
        print(f"{png}: the object covers {fraction:.1%} of the picture")
        if fraction < 0.01:
            failed.append(png.name)
    if failed:
        sys.exit(f"nothing rendered in {failed}: three.js could not load or draw {glb}")


if __name__ == "__main__":
    main()
