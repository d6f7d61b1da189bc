"""dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in torch.

Why: dlib-bin is built without BLAS, so its descriptor costs ~77 ms a face on one core, most
of the CPU ETL's time; the same weights under torch take a fraction of that and run batched
on a GPU. The network is dlib's ``anet_type`` (dnn_face_recognition_ex.cpp): a 7x7/2 conv
stem and 3x3 max pool, then 14 residual blocks (32, 64, 128, 256, 256 channels), global
average pool and a 128-d linear layer without bias. dlib's conventions kept here:

* a conv or pool with stride 2 has no padding (stride 1: "same" padding);
* a downsampling block's shortcut is a 2x2/2 average pool of its input; ``add_prev`` sums
  tensors of different sizes as if each were zero outside its own extent (channels and the
  bottom/right edge), so the shortcut's missing channels are zeros;
* the input is RGB ``(pixel - mean) / 256`` with the means stored in the file;
* ``affine`` is batch norm folded into a per-channel scale and shift.

The ``.dat`` file is dlib's serialisation: integers as a length/sign byte then little-endian
bytes, strings as length + bytes, tensors as version 2 + 4 dims + raw float32. Layers come
input first; the parser reads the input means, every ``con_4`` (weights, then filter count,
kernel, strides, paddings), ``affine_`` (scales, shifts) and ``fc_2`` (sizes, then weights).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CHIP_SIZE = 150
_LAYER = re.compile(rb"\x01(\x05con_4|\x07affine_|\x04fc_2|\x15input_rgb_image_sized)")


class _Reader:
    """dlib ``serialize`` primitives over a bytes buffer."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def int(self) -> int:
        head = self.data[self.pos]
        n = head & 0x0F
        if n > 8:
            raise ValueError(f"bad integer header {head:#x} at byte {self.pos}")
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -value if head & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return mantissa * 2.0 ** exponent

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise ValueError(f"unsupported dlib tensor version {version} at byte {self.pos}")
        dims = [self.int() for _ in range(4)]
        count = int(np.prod(dims))
        out = np.frombuffer(self.data, "<f4", count, self.pos).astype(np.float32)
        self.pos += 4 * count
        return out


@dataclass
class Conv:
    weight: np.ndarray  # (out, in, kh, kw)
    bias: np.ndarray
    stride: int
    padding: int


@dataclass
class DlibResNetWeights:
    """Everything the network needs, in the file's (= forward) order."""

    mean_rgb: tuple[float, float, float]
    convs: list[Conv] = field(default_factory=list)
    affines: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (scale, shift)
    fc: np.ndarray | None = None  # (in, out): y = x @ fc


def read_dlib_resnet(path: Path) -> DlibResNetWeights:
    """Parse the ``.dat`` file (module docstring); raises ValueError on anything unexpected."""
    data = Path(path).read_bytes()
    found: DlibResNetWeights | None = None
    pos = 0
    while (m := _LAYER.search(data, pos)) is not None:  # searched after each layer's end: never inside weights
        name, r = m.group(1)[1:].decode(), _Reader(data, m.end())
        if name == "input_rgb_image_sized":
            found = DlibResNetWeights(mean_rgb=(r.float(), r.float(), r.float()))
            if (r.int(), r.int()) != (CHIP_SIZE, CHIP_SIZE):
                raise ValueError(f"{path}: expected a {CHIP_SIZE} px input layer")
            pos = r.pos
            continue
        if found is None:
            raise ValueError(f"{path}: no input layer before the first {name} (not dlib's face ResNet?)")
        if name == "fc_2":  # fc_2: output count, input count, then the weights
            outputs, inputs = r.int(), r.int()
            params = r.tensor()
            if params.size != outputs * inputs:
                raise ValueError(f"{path}: fc layer has {params.size} values, not {inputs} x {outputs}")
            found.fc = params.reshape(inputs, outputs)
            pos = r.pos
            continue
        params = r.tensor()
        if name == "con_4":
            filters, kh, kw, sy, sx, py, px = (r.int() for _ in range(7))
            if sy != sx or py != px or kh != kw:
                raise ValueError(f"{path}: unsupported conv strides/paddings {sy, sx, py, px}")
            n_in = (params.size - filters) // (filters * kh * kw)
            w = params[:filters * n_in * kh * kw].reshape(filters, n_in, kh, kw)
            found.convs.append(Conv(w, params[filters * n_in * kh * kw:], sy, py))
        else:  # affine_: scales, then shifts
            half = params.size // 2
            found.affines.append((params[:half], params[half:]))
        pos = r.pos
    if found is None or found.fc is None or not found.convs or len(found.convs) != len(found.affines):
        raise ValueError(f"{path}: not dlib's face recognition ResNet (layers missing)")
    return found


def _add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: the sum over the larger extent, each input zero outside its own."""
    shape = [max(x, y) for x, y in zip(a.shape, b.shape)]

    def grow(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, shape[3] - t.shape[3], 0, shape[2] - t.shape[2], 0, shape[1] - t.shape[1]))

    return grow(a) + grow(b)


class ConvAffine(nn.Module):
    """dlib ``affine<con<...>>``: a conv with bias followed by a per-channel scale and shift."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding)
        self.scale = nn.Parameter(torch.ones(c_out))
        self.shift = nn.Parameter(torch.zeros(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale[:, None, None] + self.shift[:, None, None]


class ResBlock(nn.Module):
    """relu(block(x) + shortcut(x)); block = affine(conv3x3(relu(affine(conv3x3/stride(x)))))."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.a = ConvAffine(c_in, c_out, 3, stride, 0 if stride > 1 else 1)
        self.b = ConvAffine(c_out, c_out, 3, 1, 1)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.b(F.relu(self.a(x)))
        short = F.avg_pool2d(x, 2, 2) if self.stride > 1 else x
        return F.relu(_add_prev(out, short))


class DlibFaceResNet(nn.Module):
    """(N, 150, 150, 3) uint8 RGB chips -> (N, 128) descriptors, as dlib computes them."""

    def __init__(self, blocks: list[tuple[int, int, int]], stem_channels: int = 32, dim: int = 128) -> None:
        super().__init__()
        self.register_buffer("mean_rgb", torch.zeros(3))
        self.stem = ConvAffine(3, stem_channels, 7, 2, 0)
        self.blocks = nn.Sequential(*(ResBlock(i, o, s) for i, o, s in blocks))
        self.fc = nn.Linear(blocks[-1][1], dim, bias=False)

    @classmethod
    def from_weights(cls, w: DlibResNetWeights) -> "DlibFaceResNet":
        convs, affines = w.convs, w.affines
        pairs = [(convs[i], convs[i + 1]) for i in range(1, len(convs), 2)]
        blocks = [(a.weight.shape[1], a.weight.shape[0], a.stride) for a, _ in pairs]
        net = cls(blocks, stem_channels=convs[0].weight.shape[0], dim=w.fc.shape[1])
        layers = [net.stem] + [m for blk in net.blocks for m in (blk.a, blk.b)]
        with torch.no_grad():
            net.mean_rgb.copy_(torch.tensor(w.mean_rgb))
            for layer, conv, (scale, shift) in zip(layers, convs, affines):
                if layer.conv.stride[0] != conv.stride or layer.conv.padding[0] != conv.padding:
                    raise ValueError(f"conv stride/padding {conv.stride}/{conv.padding} is not dlib's ResNet's")
                layer.conv.weight.copy_(torch.from_numpy(conv.weight))
                layer.conv.bias.copy_(torch.from_numpy(conv.bias))
                layer.scale.copy_(torch.from_numpy(scale))
                layer.shift.copy_(torch.from_numpy(shift))
            net.fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.fc.T)))
        return net.eval()

    @classmethod
    def load(cls, path: Path) -> "DlibFaceResNet":
        return cls.from_weights(read_dlib_resnet(path))

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        x = (chips.permute(0, 3, 1, 2).float() - self.mean_rgb[:, None, None]) / 256.0
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        x = self.blocks(x).mean((2, 3))
        return self.fc(x)
