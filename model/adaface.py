"""AdaFace's IR backbone (Kim et al. 2022, mk-minchul/AdaFace ``net.py``), pure torch, same names.

The paper measures identity with AdaFace as well as ArcFace. Its published checkpoints
(``adaface_ir101_webface12m.ckpt``, ``adaface_ir50_ms1mv2.ckpt``, ``adaface_ir18_*.ckpt``) are
PyTorch Lightning files whose ``state_dict`` holds ``model.``-prefixed keys of ``net.Backbone``
(plus the training ``head.``, ignored here):

* ``input_layer``: conv 3x3 (no bias) -> BN -> PReLU(64);
* ``body.N``: ``BasicBlockIR`` units, ``res_layer`` = BN, conv 3x3, BN, PReLU, conv 3x3
  (stride on the second), BN; ``shortcut_layer`` = MaxPool(1, stride) when the depth is
  kept, else conv 1x1 + BN; stages of depth 64/128/256/512, units per stage by depth
  (18: 2-2-2-2, 50: 3-4-14-3, 100: 3-13-30-3);
* ``output_layer``: BN -> Dropout -> Flatten -> Linear(512 * 7 * 7, 512) -> BN1d (no affine).

Input as AdaFace's ``inference.to_input``: the 112 px face aligned on the ArcFace template,
**BGR**, ``(x / 255 - 0.5) / 0.5``. The embedding is L2-normalised (AdaFace returns it with
its norm; the norm is dropped).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from denseface.model.state_files import load_strict, read_state_dict

UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
DEPTHS = (64, 128, 256, 512)
INPUT_SIZE = 112
WEIGHTS_HELP = ("Download an AdaFace checkpoint (e.g. adaface_ir101_webface12m.ckpt) from the links in "
                "https://github.com/mk-minchul/AdaFace (README, 'Pretrained Models') and pass its path (--adaface).")


class BasicBlockIR(nn.Module):
    def __init__(self, cin: int, depth: int, stride: int) -> None:
        super().__init__()
        if cin == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Conv2d(cin, depth, 3, 1, 1, bias=False), nn.BatchNorm2d(depth),
            nn.PReLU(depth), nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class AdaFaceBackbone(nn.Module):
    def __init__(self, num_layers: int = 100) -> None:
        super().__init__()
        if num_layers not in UNITS:
            raise ValueError(f"AdaFace IR depth must be one of {sorted(UNITS)}, got {num_layers}")
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        blocks, cin = [], 64
        for depth, n in zip(DEPTHS, UNITS[num_layers]):
            for i in range(n):
                blocks.append(BasicBlockIR(cin, depth, 2 if i == 0 else 1))
                cin = depth
        self.body = nn.Sequential(*blocks)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.4), nn.Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512, affine=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.output_layer(self.body(self.input_layer(x)))
        return out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)


def depth_of(state: dict[str, torch.Tensor]) -> int:
    """The IR depth whose unit count matches the checkpoint's ``body`` blocks."""
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("body.")}
    count = max(blocks) + 1 if blocks else 0
    for layers, units in UNITS.items():
        if sum(units) == count:
            return layers
    raise ValueError(f"AdaFace checkpoint has {count} IR units, which matches no depth in {sorted(UNITS)}")


def load_adaface(path: str | Path) -> AdaFaceBackbone:
    """The backbone of a published AdaFace checkpoint (any depth of `UNITS`), eval mode."""
    state = read_state_dict(path, "AdaFace", WEIGHTS_HELP)
    state = {k.removeprefix("model."): v for k, v in state.items() if not k.startswith("head.")}
    return load_strict(AdaFaceBackbone(depth_of(state)), state, path, "AdaFace IR backbone")


def adaface_input(crops: list[np.ndarray]) -> torch.Tensor:
    """RGB uint8 112 px aligned crops -> AdaFace's (N, 3, 112, 112) BGR input in [-1, 1]."""
    arr = np.stack([np.asarray(c)[..., ::-1] for c in crops]).astype(np.float32)
    return torch.from_numpy(((arr / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2).copy())
