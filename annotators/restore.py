"""Face restoration of the aligned crop (paper: CodeFormer on CASIA / CelebA faces).

Backends:

* ``none`` (the default): the crop goes on unchanged and the
  manifest says so (``restore_backend = "none"``, ``restore_fidelity`` null);
* ``codeformer``: `denseface.model.codeformer` with the published ``codeformer.pth`` from a
  local path (the stage's ``weights``, required). Options: ``fidelity`` (CodeFormer's ``w``
  in [0, 1], default 0.5: 0 = codebook only, best quality; 1 = closest to the input),
  ``adain`` (default true, as the official inference), ``fp16`` (default false; CUDA only,
  autocast). Runs batched (``batch_size``) on the GPU when ``num_gpus > 0`` and CUDA is
  available, else on the CPU. The restored 512 crop replaces ``item.image``.

The crop is expected at CodeFormer's 512 px (FFHQ alignment, as `detect_align` makes it);
another crop size is resized to 512 for the network and back.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from denseface.annotators.base import Item, Stage
from denseface.config import BuildConfig, StageConfig
from denseface.model_refs import Resolved, expand, require, resolve_file

CODEFORMER_SIZE = 512
OPTION_DEFAULTS: dict[str, Any] = {"fidelity": 0.5, "adain": True, "fp16": False}


def parse_options(options: dict[str, Any]) -> dict[str, Any]:
    """CodeFormer options with defaults filled in; unknown keys and bad values are errors."""
    unknown = set(options) - set(OPTION_DEFAULTS)
    if unknown:
        raise ValueError(f"restore: unknown options {sorted(unknown)}; known: {sorted(OPTION_DEFAULTS)}")
    opts = {**OPTION_DEFAULTS, **options}
    w = opts["fidelity"]
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= float(w) <= 1.0:
        raise ValueError(f"restore: option fidelity must be a number in [0, 1], got {w!r}")
    opts["fidelity"] = float(w)
    for k in ("adain", "fp16"):
        if not isinstance(opts[k], bool):
            raise ValueError(f"restore: option {k} must be true or false, got {opts[k]!r}")
    return opts


def to_network(images: Sequence[np.ndarray], size: int = CODEFORMER_SIZE):
    """RGB uint8 crops -> (B, 3, size, size) float tensor in [-1, 1] (resized when needed)."""
    from denseface.model.codeformer import image_to_tensor

    batch = []
    for img in images:
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image, got {img.shape} {img.dtype}")
        if img.shape[:2] != (size, size):
            interp = cv2.INTER_AREA if min(img.shape[:2]) > size else cv2.INTER_CUBIC
            img = cv2.resize(img, (size, size), interpolation=interp)
        batch.append(img)
    return image_to_tensor(np.stack(batch))


def from_network(out, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """(B, 3, S, S) in [-1, 1] -> RGB uint8 crops, each resized back to its input shape."""
    from denseface.model.codeformer import tensor_to_image

    images = tensor_to_image(out)
    result = []
    for img, shape in zip(images, shapes, strict=True):
        if img.shape[:2] != tuple(shape[:2]):
            interp = cv2.INTER_AREA if img.shape[0] > shape[0] else cv2.INTER_CUBIC
            img = cv2.resize(img, (shape[1], shape[0]), interpolation=interp)
        result.append(np.ascontiguousarray(img))
    return result


class CodeFormerRestorer:
    """Batched CodeFormer on one device: RGB uint8 crops in, restored RGB uint8 crops out."""

    def __init__(self, weights: str | Path, device: str = "cpu", fidelity: float = 0.5, adain: bool = True,
                 fp16: bool = False, **arch: Any) -> None:
        import torch

        from denseface.model.codeformer import load_codeformer

        self.device = torch.device(device)
        self.net = load_codeformer(weights, **arch).to(self.device)
        self.size = self.net.resolution
        self.fidelity, self.adain = fidelity, adain
        self.fp16 = bool(fp16) and self.device.type == "cuda"

    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        if not len(images):
            return []
        x = to_network(images, self.size).to(self.device)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16):
            out = self.net(x, w=self.fidelity, adain=self.adain)
        return from_network(out.float(), [img.shape for img in images])


class Restore(Stage):
    name = "restore"
    version = "1"
    manifest_fields = {"restore_backend": "string", "restore_fidelity": "float32"}
    BACKENDS = ("none", "codeformer")

    def __init__(self, build: BuildConfig, conf: StageConfig | None = None, **arch: Any) -> None:
        super().__init__(build, conf)
        self.options = parse_options(self.conf.options) if self.backend == "codeformer" else {}
        if self.backend == "none" and self.conf.options:
            raise ValueError(f"restore: backend 'none' takes no options, got {sorted(self.conf.options)}")
        self.arch = arch  # CodeFormer constructor arguments; empty = the published model
        self._restorer: CodeFormerRestorer | None = None

    def check(self) -> None:
        require(self.weights())

    def weights(self) -> list[Resolved]:
        if self.backend != "codeformer":
            return []
        from denseface.model.codeformer import WEIGHTS_HELP

        return [resolve_file(self.conf.weights, "restore: CodeFormer weights (codeformer.pth)", WEIGHTS_HELP,
                             "stages.restore.weights", self.conf.sha256)]

    def setup(self) -> None:
        if self.backend == "codeformer":
            self.check()
            o = self.options
            self._restorer = CodeFormerRestorer(expand(self.conf.weights), self.device(), o["fidelity"], o["adain"],
                                                o["fp16"], **self.arch)

    def process_batch(self, items: list[Item]) -> None:
        if self.backend == "none":
            for item in items:
                item.fields.update(restore_backend="none", restore_fidelity=None)
            return
        assert self._restorer is not None, "setup() not run"
        step = self.conf.batch_size
        for start in range(0, len(items), step):
            chunk = items[start:start + step]
            for item, img in zip(chunk, self._restorer([it.image for it in chunk]), strict=True):
                item.image = img
                item.fields.update(restore_backend="codeformer", restore_fidelity=self.options["fidelity"])
