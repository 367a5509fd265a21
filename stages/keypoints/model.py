"""KeyDiff3D's stage-two network: features -> voxel volume -> 3D keypoints -> skeleton -> views."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from stages.keypoints import geometry
from stages.keypoints.decoder import AppearanceEncoder, AppearanceTransport, ViewDecoder
from stages.keypoints.features import DeepPixelEncoder, HyperfeatureAggregator, KeypointHead, PixelEncoder
from stages.keypoints.v2v import V2VNet

TRANSPORT_CHANNELS = 8
"""T, channels of the per-keypoint appearance that AppearanceTransport carries between views."""


class KeyDiff3DModel(ModelMixin, ConfigMixin):
    """All trainable parts of stage two; `save_pretrained` / `from_pretrained` on local dirs."""

    @register_to_config
    def __init__(
        self,
        image_size: int,
        volume_half_extent: float,
        feature_layer_channels: tuple[int, ...] = (),
        feature_source: str = "diffusion",
        num_keypoints: int = 18,
        volume_size: int = 72,
        feature_channels: int = 64,
        feature_size: int = 72,
        keypoint_channels: int = 32,
        aggregation: str = "softmax",
        volume_channels: tuple[int, ...] = (32, 64, 128),
        render_size: int = 128,
        edge_sigma: float = 1.5,
        heatmap_sigma: float = 2.0,
        decoder_channels: int = 64,
        pixel_encoder: str = "shallow",
        pixel_input_size: int = 0,
        appearance_transport: bool = False,
        adjacency_init: float = 0.0,
        keypoint_spread: float = 0.0,
        keypoint_spread_steps: int = 0,
        structure_heatmaps: bool = True,
        skeleton: str = "learned",
    ):
        super().__init__()
        if feature_source == "diffusion":
            self.features = HyperfeatureAggregator(
                tuple(feature_layer_channels), feature_channels, feature_size
            )
        elif pixel_encoder == "deep":
            self.features = DeepPixelEncoder(feature_channels, feature_size)
        else:
            self.features = PixelEncoder(feature_channels, feature_size)
        self.keypoint_head = KeypointHead(feature_channels, keypoint_channels)
        self.volume_net = V2VNet(keypoint_channels, num_keypoints, tuple(volume_channels))
        # Small random values break the symmetry between pairs from the first step.
        self.adjacency = nn.Parameter(adjacency_init + torch.randn(num_keypoints, num_keypoints) * 0.01)
        # Keypoints 2m and 2m + 1 are the ends of segment m; no other pair is drawn.
        graph = None
        if skeleton == "sticks":
            graph = torch.zeros(num_keypoints, num_keypoints)
            ends = torch.arange(0, num_keypoints - 1, 2)
            graph[ends, ends + 1] = graph[ends + 1, ends] = 1.0
        self.register_buffer("stick_graph", graph, persistent=False)
        self.appearance = AppearanceEncoder(decoder_channels)
        self.transport = AppearanceTransport(TRANSPORT_CHANNELS) if appearance_transport else None
        transported = TRANSPORT_CHANNELS if appearance_transport else 0
        identity = num_keypoints if structure_heatmaps else 0
        self.decoder = ViewDecoder(identity + 1 + transported, decoder_channels)
        centres = geometry.voxel_centres(volume_size, volume_half_extent)
        self.register_buffer("voxel_centres", centres, persistent=False)
        self.spread_anchors = None
        if keypoint_spread > 0:
            # Learnable anchors on a sphere of radius keypoint_spread * half extent: each
            # keypoint's logits get -|x - anchor|^2 / (2 sigma^2), so training starts from N
            # keypoints spread over the volume rather than N at its centre.
            anchors = fibonacci_sphere(num_keypoints) * keypoint_spread * volume_half_extent
            self.spread_anchors = nn.Parameter(anchors)
            if keypoint_spread_steps > 0:
                # The prior's weight, set by the training loop as it fades; saved with the
                # weights so that a checkpoint predicts with the prior it was trained under.
                self.register_buffer("spread_weight", torch.ones(()))

    def keypoint_parameters(self, with_adjacency: bool = True) -> list[nn.Parameter]:
        """The keypoint network (lr), as opposed to the reconstruction network (lr_reconstruction)."""
        parts = (self.features, self.keypoint_head, self.volume_net)
        adjacency = [self.adjacency] if with_adjacency else []
        anchors = [self.spread_anchors] if self.spread_anchors is not None else []
        return [p for part in parts for p in part.parameters()] + adjacency + anchors

    def reconstruction_parameters(self) -> list[nn.Parameter]:
        parts = [self.appearance, self.decoder] + ([self.transport] if self.transport is not None else [])
        return [p for part in parts for p in part.parameters()]

    def edge_weights(self) -> torch.Tensor:
        """w_ij = softplus(A_ij), symmetric, zero diagonal; the fixed segments with skeleton
        'sticks'. Shape (N, N)."""
        if self.stick_graph is not None:
            return self.stick_graph
        weights = F.softplus(0.5 * (self.adjacency + self.adjacency.T))
        return weights * (1.0 - torch.eye(len(weights), device=weights.device, dtype=weights.dtype))

    def view_features(self, inputs: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Cached layers [(B, V, C_l, h_l, w_l)] or views (B, V, 3, H, W) -> (B, V, C', h, w)."""
        return self.features(inputs)

    def lift(
        self, features: torch.Tensor, intrinsics: torch.Tensor, world_to_camera: torch.Tensor
    ) -> torch.Tensor:
        """Per-view features (B, V, C', h, w) -> voxel volume (B, C, M, M, M) in the world frame.

        intrinsics (B, V, 3, 3) and world_to_camera (B, V, 4, 4) are the cache's cameras at
        image_size pixels.
        """
        head = self.keypoint_head(features)
        b = head.shape[0]
        m = self.config.volume_size
        points = self.voxel_centres.reshape(1, -1, 3).expand(b, -1, -1)
        with _full_precision(head):
            uv, depth = geometry.project_to_views(points.float(), intrinsics.float(), world_to_camera.float())
        sampled, inside = geometry.sample_views(head, uv, self.config.image_size, depth=depth)
        values, logits = sampled[:, :, :-1], sampled[:, :, -1]
        if self.config.aggregation == "softmax":
            volume = geometry.aggregate_views_softmax(values, logits, inside)
        else:
            volume = geometry.aggregate_views_mean(values, inside)
        return volume.reshape(b, -1, m, m, m)

    def predict_keypoints(
        self,
        inputs: list[torch.Tensor] | torch.Tensor,
        intrinsics: torch.Tensor,
        world_to_camera: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """3D keypoints (B, N, 3) in the world frame and their voxel probabilities (B, N, M, M, M)."""
        volume = self.lift(self.view_features(inputs), intrinsics, world_to_camera)
        return self.keypoints_from_volume(volume)

    def keypoint_logits(self, volume: torch.Tensor, prior_points: torch.Tensor | None = None) -> torch.Tensor:
        """Lifted volume (B, C, M, M, M) -> keypoint logits (B, N, M, M, M): V2V, plus the
        spread prior around each keypoint's anchor when keypoint_spread > 0.

        prior_points (B, M, M, M, 3): where to read the prior for each voxel (a bent volume
        reads it where its voxels came from); default the voxel centres."""
        logits = self.volume_net(volume)
        if self.spread_anchors is None:
            return logits
        sigma = 0.25 * self.config.volume_half_extent
        points = self.voxel_centres[None] if prior_points is None else prior_points
        anchors = self.spread_anchors[None, :, None, None, None]  # (1, N, 1, 1, 1, 3)
        distance_sq = ((points[:, None] - anchors) ** 2).sum(-1)  # (B or 1, N, M, M, M)
        prior = -distance_sq / (2.0 * sigma**2)
        if hasattr(self, "spread_weight"):
            prior = prior * self.spread_weight
        return logits + prior.to(logits.dtype)

    def keypoints_from_volume(
        self, volume: torch.Tensor, prior_points: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Lifted volume (B, C, M, M, M) -> 3D keypoints (B, N, 3) in the world frame and
        their voxel probabilities (B, N, M, M, M); prior_points as in `keypoint_logits`."""
        heatmaps = self.keypoint_logits(volume, prior_points)
        with _full_precision(heatmaps):
            return geometry.soft_argmax_3d(heatmaps.float(), self.voxel_centres.float())

    def fade_spread_prior(self, step: int) -> None:
        """Weight the spread prior for 0-based training `step`: 1 at step 0, falling linearly
        to 0 at keypoint_spread_steps and 0 after. No-op when the prior does not fade."""
        if hasattr(self, "spread_weight"):
            fade = self.config.keypoint_spread_steps
            self.spread_weight.fill_(max(0.0, 1.0 - step / fade))

    def project(
        self, keypoints: torch.Tensor, intrinsics: torch.Tensor, world_to_camera: torch.Tensor
    ) -> torch.Tensor:
        """Keypoints (B, N, 3) -> pixels (B, V, N, 2) at render_size."""
        scale = self.config.render_size / self.config.image_size
        scaled = intrinsics.float().clone()
        scaled[..., :2, :] = scaled[..., :2, :] * scale
        with _full_precision(keypoints):
            uv, _ = geometry.project_to_views(keypoints.float(), scaled, world_to_camera.float())
        return uv

    def structure_maps(self, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Edge maps (B, V, H, W) and structure input (B, V, N + 1, H, W) at render_size;
        (B, V, 1, H, W), the edge map alone, without structure_heatmaps (AutoLink's input)."""
        size = self.config.render_size
        with _full_precision(uv):
            edges = geometry.edge_maps(
                uv.float(), self.edge_weights().float(), size, size, self.config.edge_sigma
            )
            if not self.config.structure_heatmaps:
                return edges, edges.unsqueeze(2)
            heatmaps = geometry.gaussian_heatmaps(uv.float(), size, size, self.config.heatmap_sigma)
        return edges, torch.cat([edges.unsqueeze(2), heatmaps], dim=2)

    def reconstruct(
        self,
        structure: torch.Tensor,
        appearance_image: torch.Tensor,
        view0: torch.Tensor | None = None,
        uv: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Structure (B, V, N + 1, H, W) and the input view (B, 3, H, W) -> views (B, V, 3, H, W).

        With appearance transport, also view0 (B, 3, H, W), the un-augmented input view at
        render_size, and uv (B, V, N, 2), the keypoints' pixels at render_size."""
        if self.transport is not None:
            if view0 is None or uv is None:
                raise ValueError("appearance transport needs view0 and uv")
            painted = self.transport(view0, uv[:, 0], structure[:, :, 1:])
            structure = torch.cat([structure, painted], dim=2)
        return self.decoder(structure, self.appearance(appearance_image))


def fibonacci_sphere(count: int) -> torch.Tensor:
    """count (P,) points spread evenly over the unit sphere, (P, 3), deterministic."""
    index = torch.arange(count, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * index / count
    radius = torch.sqrt(1.0 - z**2)
    angle = index * math.pi * (3.0 - math.sqrt(5.0))
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle), z], dim=-1).float()


def _full_precision(tensor: torch.Tensor) -> torch.autocast:
    """Geometry runs in float32 even under mixed precision: bf16 pixels are off by pixels."""
    return torch.autocast(tensor.device.type, enabled=False)
