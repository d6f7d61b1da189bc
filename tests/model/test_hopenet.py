"""Hopenet in pure torch (model/hopenet.py): architecture, weights loading, bin decoding."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from denseface.model.hopenet import Hopenet, HopenetPose, decode_bins, load_hopenet, preprocess


@pytest.fixture(scope="module")
def net() -> Hopenet:
    torch.manual_seed(0)
    model = Hopenet().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a load that skipped them shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def weights(net, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hopenet") / "hopenet_random.pkl"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (512, 512, 3), dtype=np.uint8) for _ in range(2)]


@pytest.fixture(scope="module")
def reference(net, crops) -> tuple[torch.Tensor, ...]:
    """The original network's logits for the two crops (the one forward pass others compare to)."""
    with torch.no_grad():
        return net(preprocess(crops))


def test_parameter_names_and_count(net):
    state = net.state_dict()
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias",
                "layer4.2.conv3.weight", "fc_yaw.weight", "fc_pitch.bias", "fc_roll.weight", "fc_finetune.weight"):
        assert key in state, key
    assert state["fc_yaw.weight"].shape == (66, 2048) and state["fc_finetune.weight"].shape == (3, 2051)
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    # ResNet-50 without its fc (23,508,032) + three 66-bin heads + the vestigial fc_finetune
    assert sum(p.numel() for p in net.parameters()) == 23_508_032 + 3 * (2048 * 66 + 66) + (2051 * 3 + 3)


def test_forward_shapes(reference):
    assert len(reference) == 3 and all(o.shape == (2, 66) for o in reference)


def test_decode_bins():
    logits = torch.full((4, 66), -1e4)
    for row, k in enumerate((0, 33, 65, 10)):
        logits[row, k] = 0.0
    assert torch.allclose(decode_bins(logits), torch.tensor([-99.0, 0.0, 96.0, -69.0]), atol=1e-4)
    assert decode_bins(torch.zeros(66)).item() == pytest.approx(32.5 * 3 - 99)  # uniform: the middle
    two = torch.full((66,), -1e4)
    two[[20, 21]] = 0.0  # half-way between two bins
    assert decode_bins(two).item() == pytest.approx(20.5 * 3 - 99, abs=1e-4)


def test_load_round_trip(net, weights, crops):
    loaded = load_hopenet(weights)
    assert not loaded.training
    with torch.no_grad():  # both forwards under the same thread count, so bit-equal is fair
        for a, b in zip(net(preprocess(crops)), loaded(preprocess(crops))):
            assert torch.equal(a, b)


def test_load_tolerates_dataparallel_and_old_batchnorm(net, tmp_path):
    state = {"module." + k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pkl"
    torch.save(state, path)
    loaded = load_hopenet(path)
    assert torch.equal(loaded.fc_roll.weight, net.fc_roll.weight)
    assert torch.equal(loaded.layer3[5].bn3.running_var, net.layer3[5].bn3.running_var)


def test_load_errors(net, tmp_path):
    missing = tmp_path / "nowhere" / "hopenet_robust_alpha1.pkl"
    with pytest.raises(FileNotFoundError, match="hopenet_robust_alpha1.pkl") as err:
        load_hopenet(missing)
    assert str(missing) in str(err.value) and "deep-head-pose" in str(err.value)
    wrong = tmp_path / "wrong.pkl"
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc_yaw")}, wrong)
    with pytest.raises(ValueError, match="fc_yaw"):
        load_hopenet(wrong)


def test_hopenet_pose_on_a_crop(weights, crops, reference):
    pose = HopenetPose(weights)
    batch = pose.predict_batch(crops)
    assert batch.shape == (2, 3) and batch.dtype == np.float32
    assert np.all(np.abs(batch) <= 99)
    expected = torch.stack([decode_bins(t) for t in reference], 1).numpy()  # yaw, pitch, roll: no flip
    assert np.allclose(batch, expected, atol=1e-4)
    assert np.allclose(pose(crops[1]), batch[1], atol=1e-3)


def test_preprocess_normalises_like_imagenet():
    white = np.full((512, 512, 3), 255, np.uint8)
    x = preprocess(white)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[0, :, 100, 100], expected, atol=1e-5)
    with pytest.raises(ValueError):
        preprocess([np.zeros((512, 512), np.uint8)])
