"""The synthetic world as a stage-one source: posed, coloured figures rendered on the orbit.

It stands in for a PERFECT multi-view generator: the input view and the kept views are
renders of the same 3D figure on the same cameras stage one records, with the figure's
3D joints as ground truth. Splits are by motion clip for the humanoid; pybullet ships a
single quadruped clip, so the quadruped's split is by contiguous time segment of it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from cache_schema import FeatureLayerSpec, GroundTruthSpec
from stages.cameras import project_points
from stages.config import GenerationConfig
from stages.sources import sample_seed
from stages.stage_one import SampleFailure, kept_view_cameras
from stages.synthetic.appearance import draw_look
from stages.synthetic.errors import SyntheticWorldError
from stages.synthetic.figures import draw_link_colours, load_figure, paint_links, pose_figure, spec_for
from stages.synthetic.mocap import load_clip, pose_at
from stages.synthetic.render import radius_to_fit, render_views
from stages.synthetic.versions import LATEST_WORLD_VERSION, WORLD_VERSIONS, world_version
from stages.synthetic.wardrobe import Wardrobe

SPLITS = ("train", "test")
HUMANOID_CLIPS = {
    "train": (
        "walk",
        "run",
        "jump",
        "kick",
        "dance_a",
        "cartwheel",
        "backflip",
        "spin",
        "roll",
        "getup_facedown",
    ),
    "test": ("punch", "dance_b", "spinkick", "crawl", "getup_faceup"),
}
QUADRUPED_SEGMENTS = {"train": (0.0, 0.7), "test": (0.7, 1.0)}
"""Fractions of the laikago walk clip per split (the only quadruped clip there is)."""
HALF_EXTENT = {"humanoid": 1.0, "quadruped": 0.55}
"""Radius (m) of a sphere that holds the posed figure, for the default camera distance."""


@dataclass(frozen=True)
class SyntheticWorldConfig:
    """Which figures, motions and appearances a synthetic cache holds."""

    category: str = "humanoid"
    """'humanoid' or 'quadruped'."""
    split: str = "train"
    """'train' or 'test': disjoint motion clips (humanoid) or clip segments (quadruped)."""
    num_samples: int = 1000
    """Samples to generate."""
    seed: int = 0
    """Each sample's clip, time, colours, light, yaw and shift come from (seed, sample id)."""
    radius: float | None = None
    """Camera distance in metres; None fits the figure in the view at the orbit's fov."""
    max_shift: float = 0.05
    """Largest random translation of the figure, metres, per axis."""
    version: int = LATEST_WORLD_VERSION
    """1: a random colour per link (nothing tells left from right or front from back);
    2: colours per body-part class, a face, a chest badge, a quadruped head, textures and
    random light (stages/synthetic/appearance.py). Same joints for the same sample id."""

    def __post_init__(self) -> None:
        spec_for(self.category)
        if self.version not in WORLD_VERSIONS:
            raise SyntheticWorldError(f"version must be one of {WORLD_VERSIONS}, got {self.version!r}")
        if self.split not in SPLITS:
            raise SyntheticWorldError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.num_samples < 1:
            raise SyntheticWorldError(f"num_samples must be >= 1, got {self.num_samples}")

    def clips(self) -> tuple[str, ...]:
        if self.category == "humanoid":
            return tuple(f"humanoid3d_{name}" for name in HUMANOID_CLIPS[self.split])
        return ("laikago_walk",)

    def camera_radius(self, fov_deg: float) -> float:
        return self.radius or radius_to_fit(HALF_EXTENT[self.category], fov_deg)

    def sample_ids(self) -> list[str]:
        return [f"{self.category}/{self.split}/{i:06d}" for i in range(self.num_samples)]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "clips": list(self.clips())}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SyntheticWorldConfig:
        """The config a store's source metadata `world` describes; no version means 1."""
        fields = {field.name for field in dataclasses.fields(cls)} - {"version"}
        return cls(**{k: v for k, v in data.items() if k in fields}, version=world_version(data))


def ground_truth_spec(category: str) -> GroundTruthSpec:
    return GroundTruthSpec(tuple(name for name, _ in spec_for(category).keypoints))


class ViewFeatureModel(Protocol):
    """A diffusion model giving decoder features of given views (stages.sv3d.backend.SV3DBackend)."""

    def feature_layers(self) -> tuple[FeatureLayerSpec, ...]: ...

    def features_of_views(self, views: np.ndarray, seed: int) -> dict[str, np.ndarray]: ...


def time_segment(category: str, split: str) -> tuple[float, float]:
    """The fractions of every clip a split draws its times from."""
    return QUADRUPED_SEGMENTS[split] if category == "quadruped" else (0.0, 1.0)


def draw_clip_moment(
    rng: np.random.Generator,
    clips: Sequence[str],
    segment: tuple[float, float],
    durations: Mapping[str, float],
) -> tuple[str, float]:
    """A sample's clip and time in seconds: the first two draws of its generator.

    Its appearance is drawn after them, so which moment a sample shows can be found
    from its seed alone, without rendering (stages/manipulation/frame_pairs.py).
    """
    name = clips[int(rng.integers(len(clips)))]
    return name, float(rng.uniform(*segment)) * durations[name]


class SyntheticRenderer:
    """Renders samples of one world in its own pybullet client (one per process)."""

    def __init__(
        self,
        world: SyntheticWorldConfig,
        config: GenerationConfig,
        feature_model: ViewFeatureModel | None = None,
    ):
        """config: the resolved stage-one config (its orbit radius and resolution are used).

        feature_model: when given, each sample also stores its features of the rendered
        kept views, with noise seeded by (config.seed, sample id) like the sv3d backend.
        """
        import pybullet as pb

        if config.resolution is None:
            raise SyntheticWorldError("the render backend needs an explicit resolution")
        self.world = world
        self.config = config
        self.size = config.resolution
        self.client = pb.connect(pb.DIRECT)
        self.figure = load_figure(self.client, world.category)
        self.clips = {name: load_clip(name) for name in world.clips()}
        self.durations = {name: clip.duration for name, clip in self.clips.items()}
        self.feature_model = feature_model
        self.wardrobe = Wardrobe(self.figure) if world.version >= 2 else None
        self.intrinsics, self.world_to_camera = kept_view_cameras(config, self.size)

    def __call__(self, sample_id: str) -> tuple[dict, float]:
        """(arrays of one sample, seconds spent rendering), for `write_shard`."""
        tic = time.perf_counter()
        rows = self.make_sample(sample_id, self.intrinsics, self.world_to_camera)
        return rows, time.perf_counter() - tic

    def make_sample(self, sample_id: str, intrinsics: np.ndarray, world_to_camera: np.ndarray) -> dict:
        """Every data array of one sample, ground truth included (no sample axis).

        intrinsics (K, 3, 3) and world_to_camera (K, 4, 4) are the kept views' cameras;
        view 0 (azimuth 0) is also the input image.
        """
        rng = np.random.default_rng(sample_seed(self.world.seed, sample_id))
        name, t = draw_clip_moment(
            rng, self.world.clips(), time_segment(self.world.category, self.world.split), self.durations
        )
        clip = self.clips[name]
        # Both versions draw per-link colours here, so yaw and shift (drawn next) and with
        # them the joints are the same in both; version 1 paints them, version 2 keeps
        # them as a small jitter on its class colours.
        link_draws = draw_link_colours(self.figure, rng)
        joints = pose_figure(self.figure, pose_at(clip, t), rng, self.world.max_shift)
        light = rng.normal(size=3) + np.array([0.0, 0.0, 2.0])
        lighting = None
        if self.wardrobe is None:
            paint_links(self.figure, link_draws)
        else:
            look = draw_look(self.world.category, self.wardrobe.link_names, link_draws, rng)
            self.wardrobe.dress(look)
            lighting = look.lighting
        views, masks = render_views(self.client, intrinsics, world_to_camera, self.size, light, lighting)
        uv, depth = project_points(joints, intrinsics, world_to_camera)
        inside = (depth > 0) & np.all((uv >= 0) & (uv < self.size), axis=-1)
        size = float(self.size)
        features = self.features_of(views, sample_id)
        return {
            **features,
            "input_image": views[0],
            "input_mask": masks[0],
            "crop_box": np.array([0.0, 0.0, size]),
            "source_size": np.array([self.size, self.size], dtype=np.int32),
            "views": views,
            "view_masks": masks,
            "intrinsics": intrinsics.astype(np.float32),
            "world_to_camera": world_to_camera.astype(np.float32),
            "ground_truth/joints_3d": joints.astype(np.float32),
            "ground_truth/joints_2d": uv.astype(np.float32),
            "ground_truth/joints_2d_visible": inside.astype(np.uint8),
        }

    def features_of(self, views: np.ndarray, sample_id: str) -> dict[str, np.ndarray]:
        """Feature arrays {'features/up_blocks_i': (K, C, h, w)} of views (K, 3, H, W) uint8."""
        if self.feature_model is None:
            return {}
        values = self.feature_model.features_of_views(views, sample_seed(self.config.seed, sample_id))
        rows = {}
        for layer in self.feature_model.feature_layers():
            value = values[layer.name].astype(self.config.feature_dtype)
            if not np.all(np.isfinite(value)):
                raise SampleFailure(
                    f"{sample_id}: non-finite values in feature {layer.name} "
                    f"(overflow in {self.config.feature_dtype}?)"
                )
            rows[layer.array_name] = value
        return rows
