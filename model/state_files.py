"""Reading published PyTorch weight files into the networks rewritten here without torchvision.

One loader for the metric networks (`lpips`, `inception`, `adaface`): a missing file is a
`FileNotFoundError` naming it and where to get it; the file is read with
``weights_only=True``; any missing or unexpected key (beyond the prefixes and buffers the
published files are known to differ by) is an error, so a wrong file never half-loads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from torch import nn


def read_state_dict(path: str | Path, what: str, how: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save``d state dict (also under ``state_dict``, as Lightning saves)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found at {path}. {how}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a {what} state dict ({type(state).__name__}). {how}")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_strict(net: nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str,
                ignore: Iterable[str] = ()) -> nn.Module:
    """``net`` with ``state`` loaded, in eval mode; keys starting with an ``ignore`` prefix and
    BatchNorm ``num_batches_tracked`` buffers may be absent or extra, nothing else."""
    ignore = tuple(ignore)
    state = {k: v for k, v in state.items() if not k.startswith(ignore)} if ignore else state
    result = net.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path} is not a {what} state dict: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return net.eval()
