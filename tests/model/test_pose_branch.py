"""Pose branch: a copy of the UNet's first half whose residuals plug into the UNet's skips."""

from __future__ import annotations

import pytest
import torch

from denseface.model.pose_branch import PoseBranch
from denseface.model.tiny_sd import build_tiny_sd


def _inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([5, 900]), torch.randn(2, 8, 32, generator=g),
            torch.rand(2, 3, 64, 64, generator=g))


def test_initialised_from_unet():
    unet = build_tiny_sd().unet
    branch = PoseBranch(unet)
    for part in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
        a, b = getattr(unet, part).state_dict(), getattr(branch.net, part).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    assert (branch.net.down_blocks[0].resnets[0].conv1.weight.data_ptr()
            != unet.down_blocks[0].resnets[0].conv1.weight.data_ptr())


@torch.no_grad()
def test_raw_residuals_fit_unet_skips():
    unet = build_tiny_sd().unet
    x, t, c, pose = _inputs()
    down, mid = PoseBranch(unet, zero_conv=False)(x, t, c, pose)
    assert len(down) == 1 + len(unet.config.block_out_channels) * unet.config.layers_per_block + 2
    # the paper's variant, no zero-convs: first residual is conv_in(x) (+ pose embedding, zero at init as in ControlNet)
    assert torch.equal(down[0], unet.conv_in(x))
    out = unet(x, t, encoder_hidden_states=c, down_block_additional_residuals=down,
               mid_block_additional_residual=mid).sample
    assert out.shape == x.shape


@pytest.mark.parametrize("attention", [True, False])
@torch.no_grad()
def test_default_zero_conv_starts_at_zero(attention):
    unet = build_tiny_sd().unet
    x, t, c, pose = _inputs()
    down, mid = PoseBranch(unet, attention=attention)(x, t, c, pose)
    assert all(float(r.abs().max()) == 0.0 for r in [*down, mid])


@torch.no_grad()
def test_attention_free_branch_is_the_unets_resnets_without_text():
    from diffusers.models.attention_processor import Attention

    unet = build_tiny_sd().unet
    branch = PoseBranch(unet, zero_conv=False, attention=False)
    assert not any(isinstance(m, Attention) for m in branch.net.modules())
    assert set(branch.net.config.down_block_types) == {"DownBlock2D"}
    assert branch.net.config.mid_block_type == "UNetMidBlock2D"
    theirs = unet.state_dict()
    mine = {k: v for k, v in branch.net.state_dict().items() if not k.startswith("controlnet_")}
    assert {k.split(".")[2] for k in mine if k.startswith("mid_block.")} == {"0", "1"}  # the release's [Res, Res]
    assert all(torch.equal(v, theirs[k]) for k, v in mine.items())  # every non-ControlNet weight is the UNet's
    x, t, c, pose = _inputs()
    down, mid = branch(x, t, c, pose)
    down2, mid2 = branch(x, t, torch.randn_like(c), pose)  # no text input
    assert all(torch.equal(a, b) for a, b in zip([*down, mid], [*down2, mid2]))
    out = unet(x, t, encoder_hidden_states=c, down_block_additional_residuals=down,
               mid_block_additional_residual=mid).sample
    assert out.shape == x.shape


def test_pose_size_checked():
    branch = PoseBranch(build_tiny_sd().unet)
    x, t, c, _ = _inputs()
    with pytest.raises(ValueError, match="pose_image"):
        branch(x, t, c, torch.rand(2, 3, 32, 32))
