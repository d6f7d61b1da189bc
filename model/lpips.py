"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric"), version 0.1 with the AlexNet trunk, pure torch, with the ``lpips`` package's names.

The ``lpips`` package (richzhang/PerceptualSimilarity, which the paper cites for face
diversity) builds its trunk with torchvision, which this project does not install; the
network is written out here with the same parameter names, so its files load as is:

* the trunk: torchvision's ``alexnet().features`` split into ``net.slice1..5`` (layers
  0-1, 2-4, 5-7, 8-9, 10-11, keeping torchvision's indices), weights from torchvision's
  ``alexnet-owt-7be5be79.pth`` (its ``features.N.*`` keys are mapped to ``net.sliceK.N.*``);
* the calibration: ``lin0..lin4.model.1.weight`` (1x1 convs, no bias) from the package's
  ``lpips/weights/v0.1/alex.pth`` (also shipped in torchmetrics as ``lpips_models/alex.pth``).

Distance: inputs RGB in [-1, 1] -> ``ScalingLayer`` -> per layer, features unit-normalised
over channels, squared difference, 1x1 conv, spatial mean; summed over the five layers.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from denseface.model.state_files import load_strict, read_state_dict

CHANNELS = (64, 192, 384, 256, 256)
SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))  # torchvision alexnet.features index ranges
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
TRUNK_FILE = "alexnet-owt-7be5be79.pth"
LIN_FILE = "alex.pth"
WEIGHTS_HELP = (f"LPIPS needs a folder with {LIN_FILE} (pip download lpips==0.1.4, file lpips/weights/v0.1/alex.pth) "
                f"and {TRUNK_FILE} (https://download.pytorch.org/models/{TRUNK_FILE}); pass it as --lpips.")


def alexnet_features() -> list[nn.Module]:
    """torchvision's ``alexnet().features`` layers, in order (13 modules)."""
    return [nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2)]


class AlexTrunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers = alexnet_features()
        for k, (a, b) in enumerate(SLICES, 1):
            s = nn.Sequential()
            for i in range(a, b):
                s.add_module(str(i), layers[i])
            setattr(self, f"slice{k}", s)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for k in range(1, len(SLICES) + 1):
            x = getattr(self, f"slice{k}")(x)
            feats.append(x)
        return feats


class NetLinLayer(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(cin, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """``forward(a, b)``: (N,) distances of RGB images in [-1, 1], (N, 3, H, W) each."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(SHIFT)[None, :, None, None])
        self.register_buffer("scale", torch.tensor(SCALE)[None, :, None, None])
        self.net = AlexTrunk()
        for i, c in enumerate(CHANNELS):
            setattr(self, f"lin{i}", NetLinLayer(c))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa = self.net((a - self.shift) / self.scale)
        fb = self.net((b - self.shift) / self.scale)
        total = 0.0
        for i, (x, y) in enumerate(zip(fa, fb)):
            x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            y = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{i}")((x - y) ** 2).mean((2, 3))
        return total.flatten()


def trunk_key(key: str) -> str:
    """torchvision ``features.N.weight`` -> ``net.sliceK.N.weight``."""
    index = int(key.split(".")[1])
    k = next(k for k, (a, b) in enumerate(SLICES, 1) if a <= index < b)
    return f"net.slice{k}.{key.removeprefix('features.')}"


def load_lpips(folder: str | Path) -> LPIPS:
    """LPIPS-alex v0.1 from a folder holding `LIN_FILE` and `TRUNK_FILE` (module docstring)."""
    folder = Path(folder).expanduser()
    lin = read_state_dict(folder / LIN_FILE, "LPIPS linear layers", WEIGHTS_HELP)
    trunk = read_state_dict(folder / TRUNK_FILE, "AlexNet (LPIPS trunk)", WEIGHTS_HELP)
    state = {trunk_key(k): v for k, v in trunk.items() if k.startswith("features.")}
    net = LPIPS()
    state.update({k: v for k, v in lin.items() if k.startswith("lin")}, shift=net.shift, scale=net.scale)
    return load_strict(net, state, folder, "LPIPS-alex v0.1")
