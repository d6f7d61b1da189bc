"""Dense training targets derived from a decoded sample (paper §3.5, DESIGN.md §4).

Why here and not in the shards: landmark heatmaps (478 x 64 x 64 floats, ~8 MB a sample at
512 px) and the head-pose image are cheap to render and costly to store, so the trainer makes
them. `render_heatmaps` is plain torch, so the same code runs in a DataLoader worker (small
head sizes) or on the accelerator for a whole batch (512 px training, where shipping
heatmaps from the workers would cost ~100 MB a batch).

Coordinates: landmark x, y are in [0, 1] of the crop's edges; pixel centres sit at integers,
so a landmark falls on pixel ``x * W - 0.5`` (as `denseface.annotators.identity` reads them).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch


def render_heatmaps(xy: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Gaussian heatmaps, peak 1 at each landmark: (..., N, 2) in [0, 1] -> (..., N, size, size).

    Separable (outer product of two 1-D Gaussians), so it costs N * size^2 multiplies.
    Landmarks outside the crop give partial or empty maps, as they should.
    """
    if xy.shape[-1] != 2:
        raise ValueError(f"landmarks must be (..., N, 2), got {tuple(xy.shape)}")
    if sigma <= 0:
        raise ValueError(f"heatmap sigma must be > 0, got {sigma}")
    grid = torch.arange(size, device=xy.device, dtype=torch.float32)
    centre = xy.float() * size - 0.5  # (..., N, 2) pixel coordinates
    g = torch.exp(-((grid - centre.unsqueeze(-1)) ** 2) / (2.0 * sigma * sigma))  # (..., N, 2, size)
    return g[..., 1, :, None] * g[..., 0, None, :]  # rows from y, columns from x


def image_tensor(rgb: np.ndarray, resolution: int) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float (3, R, R) in [-1, 1], the VAE's input range (area-resized)."""
    if rgb.shape[:2] != (resolution, resolution):
        rgb = cv2.resize(rgb, (resolution, resolution), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def mask_tensor(mask: np.ndarray, size: int) -> torch.Tensor:
    """Class ids (H, W) uint8 -> (size, size) int64, nearest (ids must not be blended)."""
    if mask.shape != (size, size):
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return torch.from_numpy(np.ascontiguousarray(mask)).long()


def depth_tensor(depth: np.ndarray, size: int) -> torch.Tensor:
    """Depth (H, W) float32 in [0, 1] -> (1, size, size), area-averaged."""
    if depth.shape != (size, size):
        depth = cv2.resize(depth, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)).unsqueeze(0)


def pose_tensor(yaw: float, pitch: float, roll: float, resolution: int) -> torch.Tensor:
    """The pose branch's condition: axes drawn from the angles, (3, R, R) float in [0, 1]."""
    from denseface.geometry.pose_image import draw_pose_axes  # lazy: keeps cv2 drawing out of imports

    img = draw_pose_axes(float(yaw), float(pitch), float(roll), size=resolution)
    return torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0)
