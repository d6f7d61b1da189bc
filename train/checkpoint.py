"""Training checkpoints: the trained modules only, plus everything an exact resume needs.

Why not ``accelerator.save_state``: it saves every prepared model's full state dict, i.e. the
frozen SD UNet, VAE and text encoder again (~5 GB for SD 2.1) in every checkpoint. Here the
weights are `DenseFace.save_trained` (safetensors of the new modules + json config), and the
rest is small:

    step-000500/
      dense_face.safetensors, dense_face.json   trained modules (loadable by DenseFace.from_trained)
      trainer.pt        step, optimizer, LR scheduler, grad scaler (main process)
      rng-rank{r}.pt    the trainer's noise generator, torch/CUDA/python/numpy global RNGs
      data-rank{r}.json data position of rank r's loader (`DataState`)
    latest              name of the newest complete checkpoint

Every ``.pt`` holds only tensors and plain Python values and is read with
``torch.load(weights_only=True)``. A checkpoint is written into ``step-XXXXXX.tmp`` and
renamed when all ranks are done, so a crash never leaves a half checkpoint as ``latest``.
With several nodes, ``output_dir`` must be on a shared file system.
"""
from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest"


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))


def save_checkpoint(root: Path, step: int, *, is_main: bool, rank: int, barrier: Callable[[], None],
                    save_weights: Callable[[Path], Any], trainer_state: dict[str, Any],
                    rng: dict[str, Any], data_state: dict[str, Any], keep: int | None = None) -> Path:
    """Collective: every rank calls it (``barrier`` = accelerator.wait_for_everyone)."""
    root = Path(root)
    final = root / checkpoint_name(step)
    tmp = root / f"{final.name}.tmp"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(rng, tmp / f"rng-rank{rank}.pt")
    (tmp / f"data-rank{rank}.json").write_text(json.dumps(data_state))
    if is_main:
        save_weights(tmp)
        torch.save(dict(trainer_state, step=step), tmp / "trainer.pt")
    barrier()
    if is_main:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        (root / LATEST).write_text(final.name)
        if keep is not None:
            done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
            for old in done[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def resolve_checkpoint(resume: str | Path, checkpoints: Path) -> Path:
    """"latest" -> the newest complete checkpoint under ``checkpoints``; otherwise the folder given."""
    if str(resume) == LATEST:
        marker = Path(checkpoints) / LATEST
        if not marker.exists():
            raise FileNotFoundError(f"no checkpoint to resume from: {marker} does not exist")
        path = Path(checkpoints) / marker.read_text().strip()
    else:
        path = Path(resume)
    if not (path / "trainer.pt").is_file():
        raise FileNotFoundError(f"not a training checkpoint (no trainer.pt): {path}")
    return path


def load_pt(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_rank_files(path: Path, rank: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(rng state, data state) of ``rank``, None where this rank has none (world size changed)."""
    rng_file, data_file = path / f"rng-rank{rank}.pt", path / f"data-rank{rank}.json"
    rng = load_pt(rng_file) if rng_file.exists() else None
    data = json.loads(data_file.read_text()) if data_file.exists() else None
    return rng, data
