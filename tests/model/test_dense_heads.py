"""Dense heads: hooked up-block features -> landmarks / mask / depth; each head overfits a batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from denseface.model.dense_heads import DenseHeads
from denseface.model.tiny_sd import build_tiny_sd


@torch.no_grad()
def _features(heads: DenseHeads, unet, batch: int = 2):
    g = torch.Generator().manual_seed(0)
    heads.capturing = True
    unet(torch.randn(batch, 4, 8, 8, generator=g), torch.tensor([10] * batch),
         encoder_hidden_states=torch.randn(batch, 5, 32, generator=g))
    heads.capturing = False
    return heads.pop_features()


def test_shapes_and_hooks_idle_when_not_capturing():
    unet = build_tiny_sd().unet
    heads = DenseHeads.for_unet(unet, hidden=16)
    unet(torch.randn(1, 4, 8, 8), 1, encoder_hidden_states=torch.randn(1, 5, 32))
    assert heads._captured == {}
    out = heads(_features(heads, unet))
    assert out["landmarks"].shape == (2, 478, 8, 8)
    assert out["mask"].shape == (2, 10, 8, 8)
    assert out["depth"].shape == (2, 1, 8, 8)
    small = DenseHeads.for_unet(unet, blocks=(0, 1), n_landmarks=5, n_mask_classes=3, hidden=8, out_size=16)
    out = small(_features(small, unet))
    assert out["landmarks"].shape == (2, 5, 16, 16) and out["mask"].shape == (2, 3, 16, 16)


def test_each_head_overfits_one_batch():
    torch.manual_seed(0)
    unet = build_tiny_sd().unet
    heads = DenseHeads.for_unet(unet, hidden=32)
    feats = [f.detach() for f in _features(heads, unet)]
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    centres = torch.rand(2, 478, 2, generator=g) * 7
    lmk = torch.exp(-((xx - centres[..., 0, None, None]) ** 2 + (yy - centres[..., 1, None, None]) ** 2) / 2)
    mask = torch.randint(0, 10, (2, 8, 8), generator=g)
    depth = torch.rand(2, 1, 8, 8, generator=g)

    def losses():
        out = heads(feats)
        return {
            "landmarks": F.mse_loss(out["landmarks"], lmk),
            "mask": F.cross_entropy(out["mask"], mask),
            "depth": F.mse_loss(out["depth"], depth),
        }

    first = {k: float(v.detach()) for k, v in losses().items()}
    opt = torch.optim.Adam(heads.parameters(), lr=3e-3)
    for _ in range(150):
        loss = losses()
        opt.zero_grad()
        sum(loss.values()).backward()
        opt.step()
    last = {k: float(v.detach()) for k, v in losses().items()}
    for k in first:
        assert last[k] * 10 <= first[k], (k, first[k], last[k])
