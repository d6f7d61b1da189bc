"""`DenseFacePipeline`: Stable Diffusion and the trained Dense-Face modules as one diffusers pipeline.

Why: diffusers users expect ``Pipeline.from_pretrained(id_or_folder)``, ``save_pretrained``,
``pipe.to("cuda")`` and ``pipe(prompt=...).images``. The pipeline registers the five SD parts
as diffusers components (so diffusers saves, loads, downloads and caches them) and keeps the
Dense-Face modules beside them in ``dense_face/`` (`DenseFace.save_trained`: the trained modules
only, with the config that records the identity backend they were trained with). The inference
itself is `denseface.generate.DenseFaceGenerator` (G1, face region, G2 latent blending, paste
back); this class only holds the parts and speaks the diffusers calling convention.

Folder layout (``save_pretrained``)::

    model_index.json            _class_name DenseFacePipeline + the SD components
    unet/ vae/ text_encoder/ tokenizer/ scheduler/
    dense_face/dense_face.safetensors, dense_face/dense_face.json
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from PIL import Image

from denseface.generate import (
    DEFAULT_GUIDANCE, DEFAULT_STEPS, TINY_CONFIG, UNTRAINED_CONFIG, DenseFaceGenerator, GenerationResult,
)
from denseface.model.dense_face import DenseFace
from denseface.model.tiny_sd import SDComponents, build_tiny_sd, resolve_sd
from denseface.model_refs import offline, require

log = logging.getLogger(__name__)

DENSE_FACE_FOLDER = "dense_face"
Photo = str | os.PathLike | np.ndarray | Image.Image


@dataclass
class DenseFacePipelineOutput(BaseOutput):
    """``images``: the final images (PIL list, or (B, H, W, 3) float32 in [0, 1] for ``output_type="np"``);
    ``results``: everything else of each run (base image, face region, mask, latents, notes, timings)."""

    images: list[Image.Image] | np.ndarray
    results: list[GenerationResult]


def as_photo(photo: Photo) -> str | Path | np.ndarray:
    """A path (decoded as the dataset decodes) or an RGB array; PIL images become arrays."""
    if isinstance(photo, Image.Image):
        return np.asarray(photo.convert("RGB"))
    return photo


class DenseFacePipeline(DiffusionPipeline):
    """SD components (diffusers-registered) + ``dense_face`` (`DenseFace`) + identity settings."""

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler) -> None:
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.dense_face: DenseFace | None = None
        self.id_backend: str | None = None  # None: the one the model records
        self.id_weights: str | None = None
        self._generator: DenseFaceGenerator | None = None

    # ---- building ---------------------------------------------------------------------------
    def sd_components(self) -> SDComponents:
        return SDComponents(unet=self.unet, vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                            scheduler=self.scheduler)

    def set_dense_face(self, model: DenseFace, id_backend: str | None = None, id_weights: str | None = None) -> None:
        """Attach the Dense-Face modules (built on this pipeline's UNet) and the identity settings."""
        self.dense_face = model.eval()
        self.id_backend, self.id_weights = id_backend, id_weights
        self._generator = None
        self.generator()  # an identity backend the model was not trained with fails here, not mid-run

    @classmethod
    def from_sd(cls, sd: SDComponents, dense_face: DenseFace | None = None, **identity: Any) -> "DenseFacePipeline":
        """From loaded SD parts; ``dense_face`` None: an untrained Dense-Face (a pipeline smoke run)."""
        pipe = cls(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
                   scheduler=sd.scheduler)
        pipe.set_dense_face(dense_face or _untrained(sd, UNTRAINED_CONFIG), **identity)
        return pipe

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, dense_face: str | Path | None = None,
                        id_backend: str | None = None, id_weights: str | None = None,
                        **kwargs: Any) -> "DenseFacePipeline":
        """A `save_pretrained` folder or hub id[@revision] (SD + ``dense_face/``), or any SD 2.x in
        diffusers layout with ``dense_face`` = a trained folder (`DenseFace.save_trained`, e.g. a
        training checkpoint). Neither: untrained modules, with a warning. Missing models fail first,
        in one line each (offline: not in the Hugging Face cache)."""
        resolved = resolve_sd(pretrained_model_name_or_path)
        require([resolved])
        source, kw = resolved.pretrained_args()
        pipe = super().from_pretrained(source, **{**kw, **kwargs})
        folder = Path(dense_face) if dense_face is not None else bundled_dense_face(source, kw)
        sd = pipe.sd_components()
        model = DenseFace.from_trained(sd, folder) if folder is not None else _untrained(sd, UNTRAINED_CONFIG)
        model.trainable_modules().to(pipe.unet.device)
        pipe.set_dense_face(model, id_backend, id_weights or bundled_id_weights(folder, model.config))
        return pipe

    @classmethod
    def load(cls, pretrained: str | os.PathLike | None = None, weights: str | Path | None = None, *, seed: int = 0,
             device: str | torch.device | None = None, dtype: torch.dtype | None = None,
             **identity: Any) -> "DenseFacePipeline":
        """What ``denseface generate`` runs: ``pretrained`` None = the tiny offline SD built from
        ``seed`` (its untrained Dense-Face is `TINY_CONFIG`); else `from_pretrained`."""
        if pretrained is None:
            sd = build_tiny_sd(seed)
            model = DenseFace.from_trained(sd, weights) if weights is not None else _untrained(sd, TINY_CONFIG)
            pipe = cls.from_sd(sd, model, **identity)
        else:
            pipe = cls.from_pretrained(pretrained, dense_face=weights, **identity,
                                       **({"torch_dtype": dtype} if dtype is not None else {}))
        pipe.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
        if dtype is not None:
            pipe.dense_face.trainable_modules().to(dtype)
        return pipe

    def to(self, *args: Any, **kwargs: Any) -> "DenseFacePipeline":
        """diffusers' ``to`` for the SD parts, and the Dense-Face modules follow the UNet's device."""
        super().to(*args, **kwargs)
        if self.dense_face is not None:
            self.dense_face.trainable_modules().to(self.unet.device)
        return self

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """The SD components as diffusers writes them, plus ``dense_face/`` (written first, so a
        ``push_to_hub`` upload holds it)."""
        if self.dense_face is None:
            raise ValueError("no Dense-Face modules to save: call set_dense_face first")
        self.dense_face.save_trained(Path(save_directory) / DENSE_FACE_FOLDER)
        super().save_pretrained(save_directory, **kwargs)

    # ---- inference --------------------------------------------------------------------------
    def generator(self) -> DenseFaceGenerator:
        if self._generator is None:
            if self.dense_face is None:
                raise ValueError("no Dense-Face modules: call set_dense_face first")
            self._generator = DenseFaceGenerator(self.sd_components(), self.dense_face, self.id_backend,
                                                 self.id_weights)
        return self._generator

    @torch.no_grad()
    def __call__(self, prompt: str | None = None, reference_image: Photo | None = None,
                 target_image: Photo | None = None, negative_prompt: str = "",
                 num_inference_steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE,
                 generator: torch.Generator | None = None, height: int | None = None, strength: float = 1.0,
                 face_box: Sequence[float] | None = None, output_type: str = "pil",
                 return_dict: bool = True) -> DenseFacePipelineOutput | tuple:
        """Text mode (``target_image`` None: G1 base image from ``prompt``, ``height`` px square)
        or face swap (the face of ``target_image``), repainted with ``reference_image``'s identity.
        ``generator`` seeds both G1 and G2 (None: seed 0)."""
        if reference_image is None:
            raise ValueError("reference_image is required: a photo of the identity to generate")
        res = self.generator().generate(
            as_photo(reference_image), prompt, target=None if target_image is None else as_photo(target_image),
            negative_prompt=negative_prompt, steps=num_inference_steps, guidance=guidance_scale,
            generator=generator, size=height, face_box=face_box, strength=strength)
        if output_type == "pil":
            images: list[Image.Image] | np.ndarray = [Image.fromarray(res.final)]
        elif output_type == "np":
            images = res.final[None].astype(np.float32) / 255.0
        else:
            raise ValueError(f"output_type must be 'pil' or 'np', got {output_type!r}")
        return DenseFacePipelineOutput(images=images, results=[res]) if return_dict else (images, [res])


def _untrained(sd: SDComponents, config) -> DenseFace:
    log.warning("no Dense-Face weights given: G2 runs untrained modules (a pipeline smoke run)")
    return DenseFace.from_sd(sd, config)


def bundled_id_weights(folder: Path | None, config) -> str | None:
    """The identity weights a Dense-Face folder carries (`extra.id_weights`, a file name inside it: the
    imported release's IR-SE50), or None."""
    name = config.extra.get("id_weights") if folder is not None else None
    return str(Path(folder) / name) if name and (Path(folder) / name).is_file() else None


def bundled_dense_face(source: str, kwargs: dict[str, Any]) -> Path | None:
    """The ``dense_face/`` folder of a saved pipeline (local, or the hub's through its cache), or None."""
    local = Path(source) / DENSE_FACE_FOLDER
    if Path(source).is_dir():
        return local if local.is_dir() else None
    from huggingface_hub import snapshot_download

    try:
        root = snapshot_download(source, revision=kwargs.get("revision"), cache_dir=kwargs.get("cache_dir"),
                                 allow_patterns=[f"{DENSE_FACE_FOLDER}/*"], local_files_only=offline())
    except Exception:  # noqa: BLE001 - a plain SD repo has no dense_face/: untrained modules
        return None
    folder = Path(root) / DENSE_FACE_FOLDER
    return folder if folder.is_dir() else None
