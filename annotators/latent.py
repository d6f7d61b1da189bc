"""Optional VAE latent of the aligned crop (``latent.npy``; DESIGN §4), so training need not
run the VAE on every step.

* ``none`` (the default): nothing is written.
* ``vae``: ``AutoencoderKL`` from ``weights``: an SD hub id (``owner/name[@revision]``, its
  ``vae/``), or a local diffusers folder (an SD folder with ``vae/``, or a VAE folder). The
  member is the posterior *mean* of the 512 crop, before ``scaling_factor`` (float16,
  4 x 64 x 64 for SD's VAE), the trainer's convention (`denseface.train.data`). Runs batched
  on the GPU when the stage has ``num_gpus``, in fp32 (fp16 VAE encoders can overflow).

``latent_vae`` (json and manifest) names the VAE that made the latent: a fingerprint of its
config and weights (`model.tiny_sd.vae_fingerprint`). The trainer uses a cached latent only when it equals
its own VAE's, so a dataset encoded with another VAE silently costing quality cannot happen.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from denseface.annotators.base import Item, Stage
from denseface.config import BuildConfig, StageConfig
from denseface.errors import MissingFileError
from denseface.model_refs import Resolved, require, resolve_pretrained

HOW_TO_GET_VAE = ("Set stages.latent.weights to the Stable Diffusion model the trainer uses: a hub id "
                  "(e.g. stabilityai/stable-diffusion-2-1-base) or its diffusers folder (with vae/).")


def vae_source(resolved: Resolved) -> tuple[str, str | None]:
    """(name or folder, subfolder) for ``AutoencoderKL.from_pretrained``: an SD repo's or folder's
    ``vae/``, or a VAE folder."""
    if resolved.kind == "hub":
        return resolved.pretrained_args()[0], "vae"
    path = Path(resolved.location)
    if (path / "vae" / "config.json").is_file():
        return str(path), "vae"
    if (path / "config.json").is_file():
        return str(path), None
    raise MissingFileError(f"latent backend vae: no diffusers VAE at {path} (neither vae/config.json nor "
                           f"config.json). {HOW_TO_GET_VAE}")


class Latent(Stage):
    name = "latent"
    version = "1"
    manifest_fields = {"latent_vae": "string"}
    BACKENDS = ("none", "vae")

    def __init__(self, build: BuildConfig, conf: StageConfig | None = None) -> None:
        super().__init__(build, conf)
        self._vae = None
        self.fingerprint = ""

    def weights(self) -> list[Resolved]:
        if self.backend != "vae":
            return []
        if not self.conf.weights:
            return [Resolved("latent: VAE", "", "path", "(stages.latent.weights is unset: set it to the SD model "
                             "the trainer uses)", "missing", how=HOW_TO_GET_VAE)]
        return [resolve_pretrained(self.conf.weights, "latent: VAE", HOW_TO_GET_VAE)]

    def check(self) -> None:
        for resolved in self.weights():
            require([resolved])
            vae_source(resolved)

    def setup(self) -> None:
        if self.backend == "vae":
            from diffusers import AutoencoderKL

            from denseface.model.tiny_sd import vae_fingerprint

            (resolved,) = self.weights()
            source, sub = vae_source(resolved)
            _, kw = resolved.pretrained_args()
            self._vae = AutoencoderKL.from_pretrained(source, subfolder=sub, **kw).to(self.device()).eval()
            self.fingerprint = vae_fingerprint(self._vae)

    def process_batch(self, items: list[Item]) -> None:
        if self._vae is None:
            return
        import torch

        x = torch.from_numpy(np.stack([it.image for it in items])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        with torch.inference_mode():
            mean = self._vae.encode(x.to(self._vae.device)).latent_dist.mean.float().cpu().numpy()
        for item, z in zip(items, mean):
            item.arrays["latent"] = z
            item.fields["latent_vae"] = self.fingerprint
