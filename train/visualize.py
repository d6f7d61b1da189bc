"""Validation pictures for TensorBoard: what the dense heads predict next to the targets.

One row per sample: input image | pose image | heatmaps GT | heatmaps predicted (max over the
478 landmarks) | mask GT | mask predicted (argmax, in the release's Paired colours) | depth GT
| depth predicted. Small maps are enlarged with nearest neighbours so their pixels stay visible.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

COLUMNS = ("image", "pose", "heatmap_gt", "heatmap_pred", "mask_gt", "mask_pred", "depth_gt", "depth_pred")


def _gray(x: np.ndarray) -> np.ndarray:
    return np.repeat((np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)[..., None], 3, axis=2)


def _fit(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[:2] == (size, size):
        return img
    interp = cv2.INTER_NEAREST if img.shape[0] < size else cv2.INTER_AREA
    return cv2.resize(img, (size, size), interpolation=interp)


@torch.no_grad()
def dense_panel(batch: dict, dense: dict[str, torch.Tensor], heatmaps: torch.Tensor, size: int = 128) -> np.ndarray:
    """(rows * size, 8 * size, 3) uint8 montage (module docstring)."""
    from denseface.geometry.mask import colorize

    rows = []
    n = heatmaps.shape[0]
    for i in range(n):
        if "image" in batch and not bool(batch["has_latent"][i]):
            pixels = batch["image"][i].float().permute(1, 2, 0).cpu().numpy()
            image = ((pixels + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
        else:
            image = np.full((size, size, 3), 128, np.uint8)  # latent-only sample: no pixels at hand
        pose = (batch["pose_image"][i].float().permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
        cells = [
            image, pose,
            _gray(heatmaps[i].float().amax(0).cpu().numpy()),
            _gray(dense["landmarks"][i].float().amax(0).cpu().numpy()),
            colorize(batch["mask"][i].cpu().numpy().astype(np.uint8)),
            colorize(dense["mask"][i].argmax(0).cpu().numpy().astype(np.uint8)),
            _gray(batch["depth"][i, 0].float().cpu().numpy()),
            _gray(dense["depth"][i, 0].float().cpu().numpy()),
        ]
        rows.append(np.concatenate([_fit(c, size) for c in cells], axis=1))
    return np.concatenate(rows, axis=0)
