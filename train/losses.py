"""Dense-Face training loss (paper §3.5, Eq. 8): L = L_eps + l1 L_LD + l2 L_PM + l3 L_DE.

Each term is a mean (L_LD over landmarks and pixels, L_PM over pixels, L_DE over pixels), so
the paper's (1/M) sum ||L_i - L^_i||^2 differs by the constant pixel count, which the lambdas
absorb. All terms are computed in float32 whatever the autocast dtype, and every term is
returned so the trainer can log them. Timesteps are uniform on [0, T), as in SD training.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

TERMS = ("total", "eps", "landmarks", "mask", "depth")


@dataclass(frozen=True)
class LossWeights:
    landmarks: float = 1.0  # lambda_1
    mask: float = 1.0  # lambda_2
    depth: float = 1.0  # lambda_3


def sample_timesteps(batch_size: int, num_train_timesteps: int, generator: torch.Generator,
                     device: torch.device | str) -> torch.Tensor:
    """t ~ U{0, ..., T-1} (int64), drawn from the trainer's own generator (reproducible)."""
    return torch.randint(0, num_train_timesteps, (batch_size,), generator=generator, device=device)


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet predicts: the noise (SD 2.1 base, the tiny model) or v (SD 2.1 768-v)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    raise ValueError(f"unsupported prediction_type {kind!r}")


def dense_face_loss(pred: torch.Tensor, target: torch.Tensor, dense: dict[str, torch.Tensor],
                    heatmaps: torch.Tensor, mask: torch.Tensor, depth: torch.Tensor,
                    weights: LossWeights = LossWeights()) -> dict[str, torch.Tensor]:
    """Eq. 8. ``dense``: the model's {"landmarks" (B,M,H,W), "mask" (B,C,H,W) logits, "depth"
    (B,1,H,W)}; targets ``heatmaps`` (B,M,H,W), ``mask`` (B,H,W) class ids, ``depth`` (B,1,H,W)
    in [0, 1]. Returns {"total", "eps", "landmarks", "mask", "depth"} (scalars, unweighted terms)."""
    eps = F.mse_loss(pred.float(), target.float())
    ld = F.mse_loss(dense["landmarks"].float(), heatmaps.float())
    pm = F.cross_entropy(dense["mask"].float(), mask.long())
    de = F.mse_loss(dense["depth"].float(), depth.float())
    total = eps + weights.landmarks * ld + weights.mask * pm + weights.depth * de
    return {"total": total, "eps": eps, "landmarks": ld, "mask": pm, "depth": de}
