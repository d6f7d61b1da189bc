"""ArcFace IR-SE50 (512-d), the identity network of the released Dense-Face code (its IDLoss `facenet`).

Why here: the released checkpoint's identity encoder (`id_loss_func.facenet.*`) and the widely shared
`model_ir_se50.pth` use this architecture (TreB1eN's InsightFace_Pytorch `Backbone(112, 50, 'ir_se')`).
The module tree reproduces their parameter names (`input_layer.*`, `body.N.shortcut_layer.*`,
`body.N.res_layer.*` with the squeeze-excitation as `res_layer.5.fc1/fc2`, `output_layer.*`), so both
load with `strict=True`. Input: (N, 3, 112, 112) RGB in [-1, 1], aligned as ArcFace's 112 px template;
output: L2-normalised (N, 512). Widths and depths are arguments only so tests can build small copies.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

IRSE50_UNITS = (3, 4, 14, 3)
IRSE50_WIDTHS = (64, 128, 256, 512)
FACENET_PREFIX = "id_loss_func.facenet."  # where the released Dense-Face checkpoint keeps it


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(w))))


class BottleneckIRSE(nn.Module):
    """Pre-activation residual unit with squeeze-excitation; the stride sits on the second conv."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        if cin == cout:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), SqueezeExcite(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE50(nn.Module):
    """(N, 3, 112, 112) in [-1, 1] -> (N, 512) L2-normalised; always evaluated in eval mode."""

    def __init__(self, units: tuple[int, ...] = IRSE50_UNITS, widths: tuple[int, ...] = IRSE50_WIDTHS,
                 dim: int = 512, input_size: int = 112) -> None:
        super().__init__()
        self.input_size = input_size
        self.input_layer = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                         nn.PReLU(widths[0]))
        body, cin = [], widths[0]
        for n, width in zip(units, widths):
            body += [BottleneckIRSE(cin, width, 2)] + [BottleneckIRSE(width, width, 1) for _ in range(n - 1)]
            cin = width
        self.body = nn.Sequential(*body)
        side = input_size // 2 ** len(units)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(cin), nn.Dropout(), nn.Flatten(),
                                          nn.Linear(cin * side * side, dim), nn.BatchNorm1d(dim))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.output_layer(self.body(self.input_layer(x))), dim=1)


def facenet_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The IR-SE50 part of a state dict: a bare `model_ir_se50.pth`, or a released Dense-Face checkpoint's
    `id_loss_func.facenet.*` keys (prefix removed)."""
    inner = {k[len(FACENET_PREFIX):]: v for k, v in state.items() if k.startswith(FACENET_PREFIX)}
    return inner or state


def load_irse50(path: str | Path, device: str | torch.device = "cpu") -> IRSE50:
    """IR-SE50 from `model_ir_se50.pth` or a released Dense-Face `.ckpt` (weights_only, strict)."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # Lightning checkpoint
        state = state["state_dict"]
    net = IRSE50()
    net.load_state_dict(facenet_state_dict(state), strict=True)
    return net.to(device).eval()
