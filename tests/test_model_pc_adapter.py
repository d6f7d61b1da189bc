"""PC-adapter: G1 is plain SD bit for bit, G2 starts at SD and is actually wired to the UNet."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from denseface.model.pc_adapter import PCAdapterAttnProcessor, install_pc_adapter, remove_pc_adapter
from denseface.model.tiny_sd import build_tiny_sd


def _setup():
    sd = build_tiny_sd()
    sd.unet.requires_grad_(False)  # SD is frozen in Dense-Face; compare like with like
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    c = torch.randn(2, 7, 32, generator=g)
    t = torch.tensor([3, 700])
    return sd.unet, x, t, c


@torch.no_grad()
def _run(unet, x, t, c):
    return unet(x, t, encoder_hidden_states=c).sample


def test_only_cross_attention_is_wrapped():
    unet, *_ = _setup()
    names = [n for n, _ in unet.named_parameters()]
    adapter = install_pc_adapter(unet)
    assert [n for n, _ in unet.named_parameters()] == names  # adapter weights live outside the UNet
    procs = unet.attn_processors
    cross = [k for k, p in procs.items() if isinstance(p, PCAdapterAttnProcessor)]
    assert cross and all(".attn2." in k for k in cross)
    assert all(isinstance(p, AttnProcessor2_0) for k, p in procs.items() if ".attn1." in k)
    assert len(adapter) == len(cross)
    assert all(p.requires_grad and not p.any() for p in adapter.parameters())


def test_g1_exact_g2_init_equal_then_trained_differs():
    unet, x, t, c = _setup()
    plain = _run(unet, x, t, c)
    adapter = install_pc_adapter(unet)
    assert torch.equal(_run(unet, x, t, c), plain)
    adapter.set_enabled(True)
    torch.testing.assert_close(_run(unet, x, t, c), plain, rtol=0, atol=1e-6)  # W' = 0 at init

    opt = torch.optim.Adam(adapter.parameters(), lr=1e-2)
    target = torch.randn_like(plain)
    for _ in range(3):
        loss = (unet(x, t, encoder_hidden_states=c).sample - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in unet.parameters())
    assert (_run(unet, x, t, c) - plain).abs().max() > 1e-4
    adapter.set_enabled(False)
    assert torch.equal(_run(unet, x, t, c), plain)
    remove_pc_adapter(unet)
    assert not any(isinstance(p, PCAdapterAttnProcessor) for p in unet.attn_processors.values())
    assert torch.equal(_run(unet, x, t, c), plain)
