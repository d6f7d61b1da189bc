"""Pose branch (paper §3.2): a trainable copy of the UNet's first half driven by the head-pose image.

Built on diffusers' ControlNetModel.from_unet (the paper builds on ControlNet): conv_in, time
embedding, down blocks and mid block are copied from the UNet; a small conv encoder maps the
3-channel pose image (image resolution, 8x the latent) to conv_in's width and adds it there.
Its down/mid features are added to the frozen UNet's skips. The paper drops ControlNet's
zero-convolutions (similar results, Sec. 3.2), so by default the residuals are the raw features.
"""

from __future__ import annotations

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from torch import nn


class PoseBranch(nn.Module):
    """ControlNet-like encoder copy; forward returns (down_residuals, mid_residual) for the UNet."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        zero_conv: bool = False,
        pose_embed_channels: tuple[int, ...] = (16, 32, 96, 256),
        pose_channels: int = 3,
    ) -> None:
        """`pose_embed_channels`: widths of the pose encoder; len-1 stride-2 stages (4 entries -> 8x down)."""
        super().__init__()
        self.zero_conv = zero_conv
        self.net = ControlNetModel.from_unet(
            unet,
            conditioning_embedding_out_channels=tuple(pose_embed_channels),
            load_weights_from_unet=True,
            conditioning_channels=pose_channels,
        )
        if not zero_conv:  # paper: no zero-convolutions, residuals are the raw features
            self.net.controlnet_down_blocks = nn.ModuleList(nn.Identity() for _ in self.net.controlnet_down_blocks)
            self.net.controlnet_mid_block = nn.Identity()
        self.downscale = 2 ** (len(pose_embed_channels) - 1)

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        pose_image: torch.Tensor,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """latents (B,4,h,w), pose_image (B,3,h*downscale,w*downscale) in [0,1] -> residuals."""
        want = (latents.shape[-2] * self.downscale, latents.shape[-1] * self.downscale)
        if tuple(pose_image.shape[-2:]) != want:
            raise ValueError(f"pose_image must be {want} for latents {tuple(latents.shape[-2:])}, got {tuple(pose_image.shape[-2:])}")
        dtype = self.net.dtype
        down, mid = self.net(
            latents.to(dtype),
            timestep,
            encoder_hidden_states=encoder_hidden_states.to(dtype),
            controlnet_cond=pose_image.to(dtype),
            return_dict=False,
        )
        return list(down), mid
