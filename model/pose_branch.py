"""Pose branch (paper §3.2): a trainable copy of the UNet's first half driven by the head-pose image.

Built on diffusers' ControlNetModel (the paper builds on ControlNet): conv_in, time embedding,
down blocks and mid block are copied from the UNet; a small conv encoder maps the 3-channel pose
image (image resolution, 8x the latent) to conv_in's width and adds it there. Its down/mid
features are added to the frozen UNet's skips.

Why zero-convolutions by default (`zero_conv=True`, as the released code): they start every
residual at zero, so an untrained G2 is SD with the identity token. The paper's variant without
them (`zero_conv=False`) adds the raw copied features, about doubling every skip at step 0.
`attention=False` is the released code's branch: ResNet down blocks and a mid block of two ResNets
without attention (DownBlock2D / UNetMidBlock2D), so it takes no text; its ResNets still start as the UNet's.
"""

from __future__ import annotations

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D
from torch import nn


def attention_free_copy(unet: UNet2DConditionModel, **kw) -> ControlNetModel:
    """ControlNet of `unet`'s shape with DownBlock2D and the release's mid block [ResBlock, ResBlock]; every
    weight it shares with the UNet (conv_in, time embedding, ResNets, downsamplers, both mid ResNets) copied.

    ControlNetModel's own "UNetMidBlock2D" holds one ResNet (num_layers=0), so the mid block is replaced by
    one with a second ResNet and no attention, as the released ControlNet's middle_block."""
    config = ControlNetModel.from_unet(unet, load_weights_from_unet=False, **kw).config
    net = ControlNetModel.from_config({**config, "down_block_types": ("DownBlock2D",) * len(config.down_block_types),
                                       "mid_block_type": "UNetMidBlock2D"})
    net.mid_block = UNetMidBlock2D(  # ControlNetModel's arguments, with num_layers=1
        in_channels=config.block_out_channels[-1], temb_channels=net.time_embedding.linear_2.out_features,
        num_layers=1, add_attention=False, resnet_eps=config.norm_eps, resnet_act_fn=config.act_fn,
        output_scale_factor=config.mid_block_scale_factor, resnet_groups=config.norm_num_groups,
        resnet_time_scale_shift=config.resnet_time_scale_shift)
    source = unet.state_dict()
    copied = {k: source[k] for k in net.state_dict() if k in source and source[k].shape == net.state_dict()[k].shape}
    net.load_state_dict(copied, strict=False)
    return net


class PoseBranch(nn.Module):
    """ControlNet-like encoder copy; forward returns (down_residuals, mid_residual) for the UNet."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        zero_conv: bool = True,
        attention: bool = True,
        pose_embed_channels: tuple[int, ...] = (16, 32, 96, 256),
        pose_channels: int = 3,
    ) -> None:
        """`pose_embed_channels`: widths of the pose encoder; len-1 stride-2 stages (4 entries -> 8x down)."""
        super().__init__()
        self.zero_conv, self.attention = zero_conv, attention
        kw = dict(conditioning_embedding_out_channels=tuple(pose_embed_channels), conditioning_channels=pose_channels)
        if attention:
            self.net = ControlNetModel.from_unet(unet, load_weights_from_unet=True, **kw)
        else:
            self.net = attention_free_copy(unet, **kw)
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
            raise ValueError(f"pose_image must be {want} for latents {tuple(latents.shape[-2:])}, "
                             f"got {tuple(pose_image.shape[-2:])}")
        dtype = self.net.dtype
        down, mid = self.net(
            latents.to(dtype),
            timestep,
            encoder_hidden_states=encoder_hidden_states.to(dtype),
            controlnet_cond=pose_image.to(dtype),
            return_dict=False,
        )
        return list(down), mid
