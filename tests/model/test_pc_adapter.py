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


@torch.no_grad()
def test_released_variant_self_and_cross_scaled_identity_query():
    """layers="all", scale 0.01, query from c_id: the released code's attention, checked against
    the formula on one self-attention layer; the mid block's layers get no identity query."""
    import torch.nn.functional as F
    from diffusers.models.attention_processor import Attention

    unet, x, t, c = _setup()
    plain = _run(unet, x, t, c)
    adapter = install_pc_adapter(unet, layers="all", scale=0.01, id_dim=16)
    names = set(adapter.keys())
    assert any(n.endswith("attn1") for n in names) and any(n.endswith("attn2") for n in names)
    assert all((adapter[n].feat_to_q is None) == n.startswith("mid_block") for n in names)
    adapter.set_enabled(True)
    adapter.set_identity(torch.randn(2, 16))
    torch.testing.assert_close(_run(unet, x, t, c), plain)  # zero residuals: still SD

    attn = Attention(query_dim=32, heads=4, dim_head=8)
    layer = install_pc_adapter(torch.nn.ModuleDict({"attn1": attn}), layers="all", scale=0.01, id_dim=16)
    proj = layer["attn1"]
    for lin in (proj.to_q, proj.to_k, proj.to_v):
        lin.weight.normal_()
    layer.set_enabled(True)
    h, c_id = torch.randn(2, 5, 32), torch.randn(2, 16)
    layer.set_identity(c_id)
    got = attn(h)
    heads = lambda z: z.view(2, -1, 4, 8).transpose(1, 2)  # noqa: E731
    q = attn.to_q(h) + 0.01 * proj.to_q(proj.feat_to_q(c_id))[:, None, :]
    k = attn.to_k(h) + 0.01 * proj.to_k(h)
    v = attn.to_v(h) + 0.01 * proj.to_v(h)
    want = attn.to_out[0](
        F.scaled_dot_product_attention(heads(q), heads(k), heads(v)).transpose(1, 2).reshape(2, 5, 32))
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="layers"):
        install_pc_adapter(unet, layers="self")


def test_dense_face_with_identity_query_needs_and_uses_id_emb():
    from dataclasses import replace

    from denseface.model.dense_face import DenseFace, DenseFaceConfig

    cfg = DenseFaceConfig(id_dim=128, id_hidden=64, head_hidden=16, pose_embed_channels=(8, 16, 16, 32),
                          adapter_layers="all", adapter_scale=0.01, adapter_query_from_identity=True)
    model = DenseFace.from_sd(build_tiny_sd(0), replace(cfg, pose_attention=False))
    with torch.no_grad():
        for p in model.pc_adapter.parameters():
            p.normal_()
    g = torch.Generator().manual_seed(0)
    x, pose = torch.randn(1, 4, 8, 8, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    text = model.encode_text(["* a photo"], torch.zeros(1, 128)).detach()
    with pytest.raises(ValueError, match="needs id_emb"):
        model(x, 10, text, pose, mode="G2")
    with torch.no_grad():
        a, _ = model(x, 10, text, pose, mode="G2", id_emb=torch.randn(1, 128, generator=g))
        b, _ = model(x, 10, text, pose, mode="G2", id_emb=torch.randn(1, 128, generator=g))
    assert (a - b).abs().max() > 0
