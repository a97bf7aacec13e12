"""Camera images -> observation tokens: FiLM-ResNet trunks, a pooling head, and random-shift augmentation.

encoder = VisionEncoder(num_cameras=2, cond_dim=384, feature_dim=128)
tokens = encoder(images, goal)  # (B, cameras, 3, H, W) normalised, goal (B, 384) -> (B, cameras, 128)

Each camera becomes one token of ``feature_dim`` values: the trunk's last feature map is pooled (spatial
softmax keypoints, as in Diffusion Policy / robomimic, or global average) and projected linearly. The
denoiser's own ``obs_proj`` then maps that token to its width. ``shared=True`` runs one trunk on every
camera (one batched call); ``False`` gives each camera its own trunk, head and FiLM.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mode_policy.nn.encoders.resnet import ARCHITECTURES, NORMS, ResNetTrunk

POOLS = ("spatial_softmax", "avg")
# Smallest last feature map (side, in cells) each pooling can read: keypoints on a single cell are constant.
MIN_FEATURE_MAP = {"spatial_softmax": 2, "avg": 1}


def feature_map_size(side: int) -> int:
    """Side of a ResNet's last feature map for an input side: five stride-2 stages (conv1, max-pool,
    layer2-4), each ``(n - 1) // 2 + 1`` (kernel 3 or 7 with padding), alike for ResNet-18, -34 and -50."""
    for _ in range(5):
        side = (side - 1) // 2 + 1
    return side


def smallest_image_size(pool: str = "spatial_softmax") -> int:
    """The smallest image side whose last feature map ``pool`` can read (33 px for spatial softmax)."""
    side = 1
    while feature_map_size(side) < MIN_FEATURE_MAP[pool]:
        side += 1
    return side


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SpatialSoftmax(nn.Module):
    """(B, C, H, W) -> (B, 2K): 1x1 conv to K keypoint maps, softmax over pixels, expected (x, y)."""

    def __init__(self, channels: int, num_keypoints: int = 32) -> None:
        super().__init__()
        self.keypoints = nn.Conv2d(channels, num_keypoints, 1)
        self.out_dim = 2 * num_keypoints

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.keypoints(x)
        batch, k, h, w = maps.shape
        attention = maps.flatten(2).softmax(dim=-1)  # (B, K, H*W)
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)  # (H*W, 2)
        return (attention @ coords).reshape(batch, 2 * k)


class CameraEncoder(nn.Module):
    """One trunk + pooling head + projection: (N, 3, H, W), cond (N, cond_dim) -> (N, feature_dim)."""

    def __init__(
        self, backbone: str, norm: str, pool: str, cond_dim: int, feature_dim: int, num_keypoints: int
    ) -> None:
        super().__init__()
        self.trunk = ResNetTrunk(backbone, norm=norm, cond_dim=cond_dim)
        if pool == "spatial_softmax":
            self.pool: nn.Module = SpatialSoftmax(self.trunk.out_channels, num_keypoints)
            pooled = self.pool.out_dim
        else:
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            pooled = self.trunk.out_channels
        self.proj = nn.Linear(pooled, feature_dim)

    def forward(self, images: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return self.proj(self.pool(self.trunk(images, cond)))


class VisionEncoder(nn.Module):
    """Every camera of every observation step to one ``feature_dim`` token, FiLM-conditioned on ``cond``.

    num_cameras: cameras per observation. cond_dim: size of the language embedding (0: no FiLM).
    backbone: resnet18 | resnet34 | resnet50. norm: "batch" | "group". pool: "spatial_softmax" | "avg".
    shared: one trunk for all cameras. pretrained_path: a local safetensors file of torchvision weights.
    """

    def __init__(
        self,
        num_cameras: int,
        cond_dim: int,
        feature_dim: int = 128,
        *,
        backbone: str = "resnet18",
        norm: str = "batch",
        pool: str = "spatial_softmax",
        shared: bool = False,
        num_keypoints: int = 32,
        pretrained_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        if num_cameras < 1:
            raise ValueError(f"VisionEncoder needs at least one camera, got {num_cameras}")
        if backbone not in ARCHITECTURES:
            raise ValueError(f"unknown vision backbone {backbone!r}; choose one of {sorted(ARCHITECTURES)}")
        if norm not in NORMS:
            raise ValueError(f"unknown vision norm {norm!r}; choose one of {list(NORMS)}")
        if pool not in POOLS:
            raise ValueError(f"unknown vision pool {pool!r}; choose one of {list(POOLS)}")
        self.num_cameras = num_cameras
        self.feature_dim = feature_dim
        self.shared = shared
        count = 1 if shared else num_cameras
        self.cameras = nn.ModuleList(
            CameraEncoder(backbone, norm, pool, cond_dim, feature_dim, num_keypoints) for _ in range(count)
        )
        if pretrained_path:
            for camera in self.cameras:
                camera.trunk.load_pretrained(pretrained_path)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 in [0, 255] or float in [0, 1], (..., 3, H, W) -> ImageNet-standardised float."""
        if images.dtype == torch.uint8:
            images = images.to(self.mean.dtype) / 255.0
        else:
            images = images.to(self.mean.dtype)
        shape = images.shape
        flat = images.reshape(-1, *shape[-3:])
        return ((flat - self.mean) / self.std).reshape(shape)

    def forward(self, images: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, cameras, 3, H, W) normalised; cond (B, cond_dim) -> (B, cameras, feature_dim)."""
        batch, cams = images.shape[:2]
        if cams != self.num_cameras:
            raise ValueError(f"VisionEncoder expects {self.num_cameras} cameras, got {cams}")
        if self.shared:
            flat_cond = None if cond is None else cond.repeat_interleave(cams, dim=0)
            out = self.cameras[0](images.flatten(0, 1), flat_cond)
            return out.reshape(batch, cams, self.feature_dim)
        return torch.stack([enc(images[:, i], cond) for i, enc in enumerate(self.cameras)], dim=1)


def random_shift(
    images: torch.Tensor, pad: int = 4, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """DrQ's augmentation on a whole batch: replicate-pad by ``pad``, crop back at a random integer offset.

    images: (N, C, H, W) of any dtype (uint8 stays uint8); every image gets its own offset in [0, 2*pad]
    per axis. Done as one gather with clamped row / column indices (clamping is replicate padding), so each
    output pixel is an exact copy of a pixel of the padded input and nothing is interpolated.
    """
    if pad <= 0:
        return images
    n, c, h, w = images.shape
    shift = torch.randint(0, 2 * pad + 1, (n, 2), device=images.device, generator=generator) - pad
    rows = (torch.arange(h, device=images.device)[None, :] + shift[:, :1]).clamp_(0, h - 1)  # (N, H)
    cols = (torch.arange(w, device=images.device)[None, :] + shift[:, 1:]).clamp_(0, w - 1)  # (N, W)
    flat = (rows[:, :, None] * w + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return images.reshape(n, c, h * w).gather(2, flat).reshape(n, c, h, w)
