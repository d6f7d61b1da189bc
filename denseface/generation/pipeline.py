"""Dense-Face inference (paper §3.6, Fig. 7; DESIGN.md §6, last bullet): `DenseFaceGenerator` runs
it, `DenseFacePipeline` holds its parts as one diffusers pipeline.

Text mode (``prompt``, ``reference``):

1. **G1** (text-editing mode = plain Stable Diffusion) draws the base image from the prompt:
   DDIM (`sampler_settings`: the model's steps and guidance, else 25 / 7.5), classifier-free
   guidance, a seeded generator. The loop is the one of diffusers' ``StableDiffusionPipeline``
   step for step (a test holds them equal).
2. **Face region** of the base image (`denseface.generation.face_region`): crop, pose image and
   face mask at the model's resolution; the latent mask from the mask.
3. **G2** (face-generation mode) repaints the face with latent blending (Fig. 7):
   ``z_bg = E(crop)`` (the VAE posterior mean), ``c_id`` = identity embedding of the
   reference photo, ``z = noise(z_bg, t_first)``; each DDIM step ``z_fg = denoise(z, c, c_id,
   c_pose, t)`` (one DDIM step, CFG), ``z_bg_t = noise(z_bg, t_prev)`` (fresh noise, the next
   timestep), ``z = z_fg * m + z_bg_t * (1 - m)`` with the binary latent mask ``m``. The last
   step's "next timestep" is the clean end of the chain, where ``noise(z_bg, .) = z_bg``, so
   outside the mask the final latent IS ``E(crop)``, bit for bit.
4. **Paste back** (`denseface.generation.face_region.paste_back`) into the base image.

Face swap (``target``): steps 2-4 on the user's photo instead of the G1 base image, with the
reference's identity.

Identity: the reference photo goes through the dataset's stages (decode, detect + align at
512, restore, face mesh, identity), so ``c_id`` is computed exactly as the training ``id.npy``.
The backend is the one the model was trained with, as the trainer recorded it (``config.extra
["id_backend"]`` with ``config.id_dim`` in ``dense_face.json``); another one is refused, and a
model that records none needs ``--id-backend`` (`identity_backend_for`), never a guess from the
dimension.

Why a diffusers pipeline: diffusers users expect ``Pipeline.from_pretrained(id_or_folder)``,
``save_pretrained``, ``pipe.to("cuda")`` and ``pipe(prompt=...).images``. `DenseFacePipeline`
registers the five SD parts as diffusers components (so diffusers saves, loads, downloads and
caches them) and keeps the Dense-Face modules beside them in ``dense_face/``
(`DenseFace.save_trained`: the trained modules only, with the config that records the identity
backend they were trained with); it only holds the parts and speaks the diffusers calling
convention, `DenseFaceGenerator` does the work. ``model_index.json`` names the class, not its
Python module, so folders saved before the class moved here load the same.

Folder layout (``save_pretrained``)::

    model_index.json            _class_name DenseFacePipeline + the SD components
    unet/ vae/ text_encoder/ tokenizer/ scheduler/
    dense_face/dense_face.safetensors, dense_face/dense_face.json
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from denseface.annotators.base import Item
from denseface.config import BuildConfig, StageConfig
from denseface.generation.config import sampler_settings
from denseface.generation.face_region import (
    FEATHER,
    MASK_DILATE,
    FaceAnalyzer,
    FaceRegion,
    feather_alpha,
    latent_mask_from,
    load_photo,
    paste_back,
)
from denseface.model.dense_face import DenseFace, DenseFaceConfig
from denseface.model.tiny_sd import SDComponents, build_tiny_sd, resolve_sd
from denseface.model_refs import offline, require

log = logging.getLogger(__name__)

SWAP_PROMPT = "a photo of a face"
PANEL_GAP = 4  # white pixels between the panels of the side-by-side picture
PANEL_MIN_HEIGHT = 256  # small (tiny-model) panels are enlarged, nearest-neighbour, to this
PANEL_MAX_HEIGHT = 768  # and large photos shrunk to this
DENSE_FACE_FOLDER = "dense_face"
Photo = str | os.PathLike | np.ndarray | Image.Image

# The untrained Dense-Face put on the tiny model: small new modules, dlib identity (128-d).
TINY_CONFIG = DenseFaceConfig(id_dim=128, id_hidden=64, head_hidden=16, pose_embed_channels=(8, 16, 16, 32),
                              extra={"id_backend": "dlib"})
# The untrained Dense-Face put on a real SD without --weights (a smoke run only: G2 is untrained).
UNTRAINED_CONFIG = DenseFaceConfig(id_dim=128, extra={"id_backend": "dlib"})


# ---- identity ----------------------------------------------------------------------------------

SYNTHETIC_ID = "synthetic"  # train/synthetic.py's random embeddings: no backend reproduces them


def identity_backend_for(config: DenseFaceConfig, requested: str | None = None) -> str:
    """The identity backend to embed the reference with: the one the model was trained with.

    ``requested`` (``--id-backend``) must agree with the recorded one; it is needed where the
    model records none, or was trained on synthetic embeddings (a demo)."""
    recorded = config.extra.get("id_backend")
    if recorded and recorded != SYNTHETIC_ID:
        if requested and requested != recorded:
            raise ValueError(f"the Dense-Face model was trained with identity backend {recorded} "
                             f"({config.id_dim}-d embeddings); --id-backend {requested} differs, and another "
                             f"backend's embeddings mean nothing to it: use {recorded}")
        return str(recorded)
    if not requested:
        why = ("was trained on synthetic identity embeddings" if recorded == SYNTHETIC_ID
               else "does not record the identity backend it was trained with")
        raise ValueError(f"the Dense-Face model {why} ({config.id_dim}-d); "
                         "give it with --id-backend dlib|arcface|irse50")
    return requested


class IdentityEncoder:
    """c_id of a photo through the dataset's stages: detect + align, restore, mesh, identity."""

    def __init__(self, backend: str = "dlib", weights: str | None = None, build: BuildConfig | None = None) -> None:
        from denseface.annotators.detect_align import DetectAlign
        from denseface.annotators.identity import Identity
        from denseface.annotators.landmarks import Landmarks
        from denseface.annotators.restore import Restore

        base = build or BuildConfig(runner="local", workers=1)
        stages = dict(base.stages)
        stages["identity"] = stages.get("identity", StageConfig()).model_copy(
            update={"backend": backend, "weights": weights if weights is not None else stages.get(
                "identity", StageConfig()).weights})
        self.build = base.model_copy(update={"stages": stages})
        self.stages = [DetectAlign(self.build), Restore(self.build), Landmarks(self.build), Identity(self.build)]
        for s in self.stages:
            s.check()  # missing weights fail here, with the stage's own message

    def __call__(self, photo: str | Path | np.ndarray) -> np.ndarray:
        image = load_photo(photo, self.build)
        item = Item(key="reference", identity="reference", source="generate", source_path=str(photo)
                    if not isinstance(photo, np.ndarray) else "<array>", unit=0, image=image)
        for stage in self.stages:
            stage.process([item])
            if not item.ok:
                raise ValueError(f"no identity embedding for the reference photo: {item.reason}")
        return item.arrays["id"].astype(np.float32)


# ---- diffusion -------------------------------------------------------------------------------

def _noise_to(scheduler, z0: torch.Tensor, t: int, generator: torch.Generator | None) -> torch.Tensor:
    """noise(z0, t) of Fig. 7: q(z_t | z_0) with fresh noise; t < 0 is the clean end: z0 itself."""
    if t < 0:
        return z0
    eps = randn_tensor(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
    return scheduler.add_noise(z0, eps, torch.tensor([int(t)], device=z0.device))


def latent_blending(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler,
    z_bg_init: torch.Tensor,
    latent_mask: torch.Tensor,
    timesteps: Sequence[torch.Tensor] | torch.Tensor,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """Fig. 7. ``denoise(z, t) -> eps`` (CFG included), ``scheduler`` a DDIM scheduler whose
    ``set_timesteps`` gave ``timesteps`` (descending), ``latent_mask`` (1, 1, h, w) bool; ``eta`` DDIM's
    (0 deterministic; the release samples with 1).
    Returns z^0; outside the mask it equals ``z_bg_init`` exactly."""
    m = latent_mask.to(device=z_bg_init.device, dtype=torch.bool)
    ts = [int(t) for t in timesteps]
    z = _noise_to(scheduler, z_bg_init, ts[0], generator)  # t == k: z <- noise(z_bg_init, k)
    for i, t in enumerate(ts):
        eps = denoise(scheduler.scale_model_input(z, t), torch.tensor(t, device=z.device))
        z_fg = scheduler.step(eps, t, z, eta=eta, generator=generator, return_dict=False)[0]
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1  # the timestep z_fg now sits at
        z_bg = _noise_to(scheduler, z_bg_init, t_prev, generator)
        z = torch.where(m, z_fg, z_bg)  # = z_fg * m + z_bg * (1 - m) for the binary m
    return z


@dataclass
class GenerationResult:
    base: np.ndarray  # (H, W, 3) uint8: the G1 image, or the face-swap target
    region: FaceRegion
    face: np.ndarray  # (S, S, 3) uint8: the repainted crop, decoded
    final: np.ndarray  # (H, W, 3) uint8
    latent_mask: np.ndarray  # (h, w) bool
    z0: torch.Tensor  # final latent of the blending
    z_bg_init: torch.Tensor  # E(crop)
    id_embedding: np.ndarray
    mode: str  # "text" | "swap"
    timings: dict[str, float] = field(default_factory=dict)  # seconds

    @property
    def notes(self) -> list[str]:
        return list(self.region.notes)

    def panels(self) -> list[np.ndarray]:
        """base, crop, mask, final: the four panels of the side-by-side picture."""
        mask = np.repeat((self.region.mask.astype(np.uint8) * 255)[..., None], 3, axis=2)
        return [self.base, self.region.crop, mask, self.final]


def side_by_side(panels: Sequence[np.ndarray], height: int | None = None, gap: int = PANEL_GAP) -> np.ndarray:
    """Panels resized to one height (default: the tallest panel's, within `PANEL_MIN_HEIGHT` ..
    `PANEL_MAX_HEIGHT`; aspect kept; nearest when enlarging, area when shrinking), left to right,
    ``gap`` white pixels apart."""
    height = height or min(PANEL_MAX_HEIGHT, max(PANEL_MIN_HEIGHT, max(p.shape[0] for p in panels)))
    out = []
    for i, p in enumerate(panels):
        p = np.ascontiguousarray(p if p.ndim == 3 else np.repeat(p[..., None], 3, axis=2)).astype(np.uint8)
        w = max(1, int(round(p.shape[1] * height / p.shape[0])))
        interp = cv2.INTER_NEAREST if height >= p.shape[0] else cv2.INTER_AREA
        out.append(cv2.resize(p, (w, height), interpolation=interp))
        if i + 1 < len(panels) and gap > 0:
            out.append(np.full((height, gap, 3), 255, np.uint8))
    return np.concatenate(out, axis=1)


class DenseFaceGenerator:
    """G1 base image, face region, G2 latent blending, paste back (module docstring)."""

    def __init__(self, sd: SDComponents, model: DenseFace, id_backend: str | None = None,
                 id_weights: str | None = None, build: BuildConfig | None = None) -> None:
        self.sd, self.model = sd, model
        self.build = build or BuildConfig(runner="local", workers=1)
        self.id_backend = identity_backend_for(model.config, id_backend)
        self.id_weights = id_weights
        self.eta = float(model.config.extra.get("sampler", {}).get("eta", 0.0))  # DDIM's; an imported release: 1
        self.analyzer = FaceAnalyzer(self.build)
        self._id_encoder: IdentityEncoder | None = None
        self.vae_scale = 2 ** (len(sd.vae.config.block_out_channels) - 1)

    @classmethod
    def load(cls, pretrained: str | Path | None = None, weights: str | Path | None = None, *, seed: int = 0,
             device: str | torch.device | None = None, dtype: torch.dtype | None = None,
             id_backend: str | None = None, id_weights: str | None = None,
             build: BuildConfig | None = None) -> "DenseFaceGenerator":
        """As `DenseFacePipeline.load`: ``pretrained`` None = the tiny offline SD
        (built from ``seed``), else a diffusers SD folder or hub id (or a saved DenseFacePipeline);
        ``weights``: a `DenseFace.save_trained` folder; None: the pipeline folder's own, else an
        untrained Dense-Face (`TINY_CONFIG` / `UNTRAINED_CONFIG`), which only exercises the pipeline."""
        pipe = DenseFacePipeline.load(pretrained, weights, seed=seed, device=device, dtype=dtype,
                                      id_backend=id_backend, id_weights=id_weights)
        return cls(pipe.sd_components(), pipe.dense_face, id_backend, id_weights, build)

    # ---- parts ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.sd.unet.device

    @property
    def native_size(self) -> int:
        """The model's image size: UNet sample size x VAE scale (512 for SD 2.1-base, 64 tiny)."""
        return int(self.sd.unet.config.sample_size) * self.vae_scale

    def scheduler(self) -> DDIMScheduler:
        """A fresh DDIM scheduler from the SD config (the shared one is never mutated)."""
        return DDIMScheduler.from_config(self.sd.scheduler.config)

    def identity(self, photo: str | Path | np.ndarray) -> np.ndarray:
        if self._id_encoder is None:
            self._id_encoder = IdentityEncoder(self.id_backend, self.id_weights, self.build)
        emb = self._id_encoder(photo)
        if emb.shape[0] != self.model.config.id_dim:
            raise ValueError(f"identity backend {self.id_backend} gives {emb.shape[0]}-d embeddings, the model takes "
                             f"{self.model.config.id_dim}-d (its config id_dim): train and generate with one backend")
        return emb

    def _text(self, prompt: str, negative_prompt: str, cfg: bool,
              c_id: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(cond, uncond). With ``c_id`` (G2) the prompt carries the identity token; the CFG
        unconditional branch is always the plain negative prompt, without identity, as a dropped
        training caption (`denseface.model.identity`), so guidance strengthens text and identity."""
        m, dtype = self.model, self.sd.unet.dtype
        cond = m.encode_text([m.prompt_for(prompt, identity=c_id is not None)], c_id).to(dtype)
        uncond = m.encode_text([m.prompt_for(negative_prompt, identity=False)]).to(dtype) if cfg else None
        return cond, uncond

    def sampler(self, steps: int | None = None, guidance: float | None = None) -> tuple[int, float]:
        """(steps, guidance) a run uses: the given ones, else the model's (`sampler_settings`)."""
        return sampler_settings(self.model.config, steps, guidance)

    def _cfg(self, guidance: float) -> bool:
        return guidance > 1.0 and self.sd.unet.config.time_cond_proj_dim is None

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> (B, H, W, 3) float32 in [0, 1], as the diffusers pipeline postprocesses."""
        vae = self.sd.vae
        image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()

    @staticmethod
    def to_uint8(image: np.ndarray) -> np.ndarray:
        return (image * 255).round().astype(np.uint8)  # diffusers' numpy_to_pil rounding

    @torch.no_grad()
    def encode(self, rgb: np.ndarray) -> torch.Tensor:
        """E(image): VAE posterior mean x scaling factor, (1, 4, h, w)."""
        vae = self.sd.vae
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)
        mean = vae.encode(x.to(self.device, vae.dtype)).latent_dist.mean
        return mean * vae.config.scaling_factor

    # ---- G1 ---------------------------------------------------------------------------------
    @torch.no_grad()
    def text_to_image(self, prompt: str, negative_prompt: str = "", steps: int | None = None,
                      guidance: float | None = None, seed: int | None = 0,
                      generator: torch.Generator | None = None, height: int | None = None,
                      width: int | None = None, output: str = "uint8") -> np.ndarray:
        """G1: the base image (H, W, 3), uint8 or (``output="float"``) float32 in [0, 1];
        StableDiffusionPipeline's loop (DDIM with the model's eta, 0 unless it records one; CFG with
        ``negative_prompt``); ``steps`` / ``guidance`` None: the model's (`sampler`)."""
        steps, guidance = self.sampler(steps, guidance)
        height, width = height or self.native_size, width or self.native_size
        if height % self.vae_scale or width % self.vae_scale:
            raise ValueError(f"image size must be a multiple of {self.vae_scale}, got {width}x{height}")
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        cfg = self._cfg(guidance)
        cond, uncond = self._text(prompt, negative_prompt, cfg)
        text = torch.cat([uncond, cond]) if cfg else cond
        sched = self.scheduler()
        sched.set_timesteps(steps, device=self.device)
        shape = (1, self.sd.unet.config.in_channels, height // self.vae_scale, width // self.vae_scale)
        latents = randn_tensor(shape, generator=generator, device=self.device, dtype=text.dtype)
        latents = latents * sched.init_noise_sigma
        for t in sched.timesteps:
            x = torch.cat([latents] * 2) if cfg else latents
            x = sched.scale_model_input(x, t)
            eps, _ = self.model(x, t, text, mode="G1", return_dense=False)
            if cfg:
                e_u, e_c = eps.chunk(2)
                eps = e_u + guidance * (e_c - e_u)
            latents = sched.step(eps, t, latents, eta=self.eta, generator=generator, return_dict=False)[0]
        image = self.decode(latents)[0]
        return image if output == "float" else self.to_uint8(image)

    # ---- G2 ---------------------------------------------------------------------------------
    @torch.no_grad()
    def repaint(self, region: FaceRegion, id_embedding: np.ndarray, prompt: str, negative_prompt: str = "",
                steps: int | None = None, guidance: float | None = None, seed: int | None = 0,
                generator: torch.Generator | None = None, strength: float = 1.0,
                ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, np.ndarray]:
        """G2 with latent blending on the region's crop: (face crop uint8, z0, z_bg_init, latent mask).

        ``strength`` < 1 starts at an earlier (less noisy) timestep, img2img-style; 1 = Fig. 7's k.
        The unconditional CFG branch is the plain negative prompt (no identity token) with the same pose."""
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        steps, guidance = self.sampler(steps, guidance)
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        cfg = self._cfg(guidance)
        c_id = torch.from_numpy(np.asarray(id_embedding, np.float32))[None].to(self.device)
        cond, uncond = self._text(prompt, negative_prompt, cfg, c_id)
        z_bg_init = self.encode(region.crop)
        h, w = z_bg_init.shape[-2:]
        lmask = latent_mask_from(region.mask, (h, w))
        m = torch.from_numpy(lmask)[None, None].to(self.device)
        drawn = region.pose_image(self.model.config.extra.get("pose_image"))
        pose = torch.from_numpy(drawn).permute(2, 0, 1)[None].float().div(255.0)
        pose = pose.to(self.device, self.sd.unet.dtype)
        text = torch.cat([uncond, cond]) if cfg else cond
        n = 2 if cfg else 1
        pose, c_id = pose.expand(n, -1, -1, -1), c_id.expand(n, -1)

        def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x = torch.cat([z] * n)
            eps, _ = self.model(x, t, text, pose_image=pose, mode="G2", return_dense=False, id_emb=c_id)
            if cfg:
                e_u, e_c = eps.chunk(2)
                eps = e_u + guidance * (e_c - e_u)
            return eps

        sched = self.scheduler()
        sched.set_timesteps(steps, device=self.device)
        start = min(steps - 1, int(round(steps * (1.0 - strength))))
        z0 = latent_blending(denoise, sched, z_bg_init, m, sched.timesteps[start:], generator, self.eta)
        face = self.to_uint8(self.decode(z0)[0])
        return face, z0, z_bg_init, lmask

    # ---- the whole pipeline ------------------------------------------------------------------
    def generate(self, reference: str | Path | np.ndarray, prompt: str | None = None,
                 target: str | Path | np.ndarray | None = None, negative_prompt: str = "",
                 steps: int | None = None, guidance: float | None = None, seed: int = 0,
                 size: int | None = None, face_box: Sequence[float] | None = None, strength: float = 1.0,
                 crop_size: int | None = None, mask_dilate: float = MASK_DILATE,
                 feather: float = FEATHER, generator: torch.Generator | None = None) -> GenerationResult:
        """Text mode (``target`` None: G1 base image from ``prompt``) or face swap (``target``
        photo); then face region, G2 latent blending with ``reference``'s identity, paste back.
        ``generator`` (default: seeded with ``seed``) drives G1 and then G2; ``steps`` / ``guidance``
        None: the model's (`sampler`)."""
        timings: dict[str, float] = {}
        tic = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal tic
            now = time.perf_counter()
            timings[name] = round(now - tic, 3)
            tic = now

        generator = generator or torch.Generator().manual_seed(int(seed))
        id_emb = self.identity(reference)
        lap("identity")
        if target is None:
            if not prompt:
                raise ValueError("text mode needs a prompt")
            base = self.text_to_image(prompt, negative_prompt, steps, guidance, generator=generator,
                                      height=size, width=size)
            mode = "text"
            lap("g1")
        else:
            base = load_photo(target, self.build)
            prompt = prompt or SWAP_PROMPT
            mode = "swap"
            lap("load_target")
        region = self.analyzer.region(base, crop_size or self.native_size, face_box=face_box,
                                      fallback=target is None, mask_dilate=mask_dilate)
        lap("face_region")
        face, z0, z_bg_init, lmask = self.repaint(region, id_emb, prompt, negative_prompt, steps, guidance,
                                                  generator=generator, strength=strength)
        lap("g2")
        alpha = feather_alpha(region.mask, lmask, feather)
        final = paste_back(base, face, region.matrix, alpha)
        lap("paste_back")
        return GenerationResult(base, region, face, final, lmask, z0, z_bg_init, id_emb, mode, timings)


# ---- the diffusers pipeline -------------------------------------------------------------------

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
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 generator: torch.Generator | None = None, height: int | None = None, strength: float = 1.0,
                 face_box: Sequence[float] | None = None, output_type: str = "pil",
                 return_dict: bool = True) -> DenseFacePipelineOutput | tuple:
        """Text mode (``target_image`` None: G1 base image from ``prompt``, ``height`` px square)
        or face swap (the face of ``target_image``), repainted with ``reference_image``'s identity.
        ``generator`` seeds both G1 and G2 (None: seed 0); ``num_inference_steps`` / ``guidance_scale``
        None: the model's (`sampler_settings`)."""
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
