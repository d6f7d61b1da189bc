"""Dense annotation heads (paper §3.3): UNet up-block features -> landmark heatmaps, mask, depth.

Why forward hooks: UNet2DConditionModel.forward returns only eps, and the UNet stays frozen and
unmodified; hooks read the up-block outputs in the same pass that predicts eps (one forward).
Features are upsampled (bilinear) to one size, concatenated, and fed to three conv heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle


def _groups(ch: int, max_groups: int = 32) -> int:
    return next(g for g in range(min(max_groups, ch), 0, -1) if ch % g == 0)


def _head(in_ch: int, hidden: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, hidden, 3, padding=1),
        nn.GroupNorm(_groups(hidden), hidden),
        nn.SiLU(),
        nn.Conv2d(hidden, hidden, 3, padding=1),
        nn.GroupNorm(_groups(hidden), hidden),
        nn.SiLU(),
        nn.Conv2d(hidden, out_ch, 1),
    )


def up_block_channels(unet: nn.Module) -> list[int]:
    """Output channels of each UNet up block (reverse of block_out_channels)."""
    return list(reversed(unet.config.block_out_channels))


class DenseHeads(nn.Module):
    """Three conv heads over concatenated up-block features.

    Outputs (H = W = out_size, default the largest captured size = latent size, 64 for 512 px):
      "landmarks": (B, n_landmarks, H, W) heatmaps (L2 loss), "mask": (B, n_mask_classes, H, W)
      logits (cross-entropy), "depth": (B, 1, H, W) raw values, target in [0, 1] (L2 loss).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        n_landmarks: int = 478,
        n_mask_classes: int = 10,
        hidden: int = 128,
        out_size: int | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.out_size = out_size
        c = sum(self.in_channels)
        self.landmarks = _head(c, hidden, n_landmarks)
        self.mask = _head(c, hidden, n_mask_classes)
        self.depth = _head(c, hidden, 1)
        self.capturing = False
        self._captured: dict[int, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []
        self._blocks: list[int] = []

    @classmethod
    def for_unet(cls, unet: nn.Module, blocks: Sequence[int] | None = None, **kw) -> "DenseHeads":
        """Heads sized for `unet`'s up blocks `blocks` (default: all), hooked onto them."""
        chans = up_block_channels(unet)
        blocks = list(range(len(chans))) if blocks is None else list(blocks)
        heads = cls([chans[i] for i in blocks], **kw)
        heads.attach(unet, blocks)
        return heads

    def attach(self, unet: nn.Module, blocks: Sequence[int]) -> None:
        """Register forward hooks on unet.up_blocks[i]; they record outputs only while `capturing`."""
        self.detach()
        self._blocks = list(blocks)
        if len(self._blocks) != len(self.in_channels):
            raise ValueError(f"{len(self._blocks)} blocks for {len(self.in_channels)} input widths")
        for i in self._blocks:
            self._handles.append(unet.up_blocks[i].register_forward_hook(self._make_hook(i)))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _make_hook(self, idx: int):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor | tuple) -> None:
            if self.capturing:
                self._captured[idx] = output[0] if isinstance(output, tuple) else output
        return hook

    def pop_features(self) -> list[torch.Tensor]:
        """Features captured in the last UNet pass, in block order; clears the buffer."""
        missing = [i for i in self._blocks if i not in self._captured]
        if missing:
            raise RuntimeError(f"no features captured for up blocks {missing}; run the UNet with capturing=True")
        feats = [self._captured[i] for i in self._blocks]
        self._captured.clear()
        return feats

    def fuse(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Upsample every feature map to the common size and concatenate on channels."""
        size = self.out_size or max(f.shape[-1] for f in features)
        dtype = self.landmarks[0].weight.dtype
        out = [
            f.to(dtype) if f.shape[-1] == size and f.shape[-2] == size
            else F.interpolate(f.to(dtype), size=(size, size), mode="bilinear", align_corners=False)
            for f in features
        ]
        return torch.cat(out, dim=1)

    def forward(self, features: Sequence[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Predict from given features, or from the ones captured by the hooks."""
        x = self.fuse(self.pop_features() if features is None else features)
        return {"landmarks": self.landmarks(x), "mask": self.mask(x), "depth": self.depth(x)}
