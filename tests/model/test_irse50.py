"""IR-SE50 (the released Dense-Face code's identity network): its parameter names, strict loading from
a bare `model_ir_se50.pth` or a released-layout checkpoint, and the `irse50` identity backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from denseface.annotators import identity as idm
from denseface.annotators.base import Item
from denseface.config import BuildConfig, StageConfig
from denseface.model.irse50 import FACENET_PREFIX, IRSE50, load_irse50


@pytest.fixture(scope="module")
def full() -> IRSE50:
    torch.manual_seed(0)
    net = IRSE50()
    for m in net.modules():  # non-trivial BatchNorm statistics, so a wrong mapping shows
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net


def test_full_network_has_the_official_names_and_shapes(full):
    state = full.state_dict()
    # input 7 + 24 units x 15 + 3 projection shortcuts x 6 + output 12 (BN: 5 entries each)
    assert len(state) == 7 + 24 * 15 + 3 * 6 + 12
    expected = {
        "input_layer.0.weight": (64, 3, 3, 3), "input_layer.2.weight": (64,),
        "body.0.res_layer.1.weight": (64, 64, 3, 3), "body.0.res_layer.5.fc1.weight": (4, 64, 1, 1),
        "body.3.shortcut_layer.0.weight": (128, 64, 1, 1), "body.3.shortcut_layer.1.running_var": (128,),
        "body.23.res_layer.5.fc2.weight": (512, 32, 1, 1), "output_layer.0.weight": (512,),
        "output_layer.3.weight": (512, 512 * 7 * 7), "output_layer.4.running_mean": (512,),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert not any(k.startswith("body.0.shortcut_layer") for k in state)  # 64 -> 64: a max-pool, no weights


@torch.no_grad()
def test_loads_strictly_from_pth_and_released_checkpoint(full, tmp_path):
    state = full.state_dict()
    torch.save(state, tmp_path / "model_ir_se50.pth")
    released = {FACENET_PREFIX + k: v for k, v in state.items()}
    released["model.diffusion_model.conv_in.weight"] = torch.zeros(1)  # other parts of the checkpoint
    torch.save({"state_dict": released}, tmp_path / "dense-face.ckpt")
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    want = full(x)
    assert want.shape == (2, 512)
    torch.testing.assert_close(want.norm(dim=1), torch.ones(2))
    for name in ("model_ir_se50.pth", "dense-face.ckpt"):
        torch.testing.assert_close(load_irse50(tmp_path / name)(x), want)
    del state["output_layer.4.running_mean"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(RuntimeError, match="running_mean"):
        load_irse50(tmp_path / "broken.pth")


def test_irse50_identity_backend(full, tmp_path, aligned_face):
    torch.save(full.state_dict(), tmp_path / "model_ir_se50.pth")
    conf = StageConfig(backend="irse50", weights=str(tmp_path / "model_ir_se50.pth"))
    stage = idm.Identity(BuildConfig(stages={"identity": conf}))
    stage.check()
    image, lmk = aligned_face
    item = Item(key="k", identity="obama", source="casia", source_path="x", unit=0)
    item.image, item.arrays["lmk"] = image, lmk
    stage.process([item])
    assert item.ok, item.reason
    emb = item.arrays["id"]
    assert emb.shape == (512,) and item.fields["id_backend"] == "irse50" and item.fields["id_dim"] == 512
    crop, _ = idm.align_arcface(image, lmk)
    with torch.no_grad():
        want = full(torch.from_numpy(idm.arcface_blob([crop])))[0].numpy()
    np.testing.assert_allclose(emb, want, atol=1e-5)

    missing = StageConfig(backend="irse50", weights=str(tmp_path / "none.pth"))
    with pytest.raises(FileNotFoundError, match="none.pth.*model_ir_se50.pth"):
        idm.Identity(BuildConfig(stages={"identity": missing})).check()
