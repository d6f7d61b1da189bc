"""Dense-Face inference (paper §3.6, Fig. 7; DESIGN.md §6, last bullet).

Text mode (``denseface generate --prompt P --reference ID_PHOTO``):

1. **G1** (text-editing mode = plain Stable Diffusion) draws the base image from the prompt:
   DDIM, 25 steps by default, classifier-free guidance, a seeded generator. The loop is the
   one of diffusers' ``StableDiffusionPipeline`` step for step (a test holds them equal).
2. **Face region** of the base image, with the dataset's own code (`denseface.annotators`):
   BlazeFace detection and FFHQ alignment give the crop (the model's resolution, 512 for SD
   2.1-base, 64 for the tiny model); the face mesh runs on the same quad cut at the dataset's
   512 px, and gives the head pose (PnP, `head_pose.pose_from_landmarks`, as the dataset's
   default backend) -> the pose image (`pose_image.draw_pose_axes`, as the trainer), and the
   face mask (mesh silhouette, dilated). Downsampled to the latent grid, a latent cell is
   "face" when any of its pixels is.
3. **G2** (face-generation mode) repaints the face with latent blending (Fig. 7):
   ``z_bg = E(crop)`` (the VAE posterior mean), ``c_id`` = identity embedding of the
   reference photo, ``z = noise(z_bg, t_first)``; each DDIM step ``z_fg = denoise(z, c, c_id,
   c_pose, t)`` (one DDIM step, CFG), ``z_bg_t = noise(z_bg, t_prev)`` (fresh noise, the next
   timestep), ``z = z_fg * m + z_bg_t * (1 - m)`` with the binary latent mask ``m``. The last
   step's "next timestep" is the clean end of the chain, where ``noise(z_bg, .) = z_bg``, so
   outside the mask the final latent IS ``E(crop)``, bit for bit.
4. **Paste back**: the decoded crop is warped back with the inverse of the alignment
   (``cv2.invertAffineTransform`` + ``warpAffine``) and blended into the base image with a
   feathered copy of the face mask (eroded, Gaussian-blurred, and never reaching beyond the
   repainted latent cells). Pixels the mask does not reach keep the base image's values exactly.

Face swap (``--target PHOTO``): steps 2-4 on the user's photo instead of the G1 base image,
with the reference's identity.

Identity: the reference photo goes through the dataset's stages (decode, detect + align at
512, restore, face mesh, identity), so ``c_id`` is computed exactly as the training ``id.npy``.
The backend is the one the model was trained with, as the trainer recorded it (``config.extra
["id_backend"]`` with ``config.id_dim`` in ``dense_face.json``); another one is refused, and a
model that records none needs ``--id-backend`` (`identity_backend_for`), never a guess from the
dimension.

Where no face is found: a base image drawn by the tiny offline model (64 px, random weights) is
noise, and neither BlazeFace nor the face mesh finds a face in it. The base image's face region
then falls back to a documented default: the centred square of `FALLBACK_SQUARE` of the shorter
side as the crop, a neutral pose (0, 0, 0) and the ellipse `FALLBACK_ELLIPSE` as the mask; the
result's ``notes`` (printed by the CLI, and logged) say so. With real SD 2.1 the detector is
used. ``face_box`` (``--face-box x0,y0,x1,y1``) gives the region explicitly instead (a square of
`BOX_TO_CROP` times the box's longer side, centred on it; the mesh still gives pose and mask
when it finds the face). A face-swap target without a detectable face is an error (unless
``face_box`` is given): repainting a guessed square of a user's photo would be silent damage.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from denseface.annotators.base import Item, Reject
from denseface.annotators.decode import decode_image
from denseface.annotators.detect_align import FaceDetector, choose_face
from denseface.geometry.align import crop_transform, ffhq_quad, warp_face
from denseface.config import BuildConfig, StageConfig
from denseface.model.dense_face import DenseFace, DenseFaceConfig
from denseface.model.tiny_sd import SDComponents

log = logging.getLogger(__name__)

DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5


def sampler_defaults(config: DenseFaceConfig) -> tuple[int, float]:
    """(steps, guidance) a model asks for (an imported release records DDIM 50, CFG 4), else the defaults."""
    sampler = config.extra.get("sampler", {})
    return int(sampler.get("steps", DEFAULT_STEPS)), float(sampler.get("guidance", DEFAULT_GUIDANCE))
ANALYSIS_SIZE = 512  # the dataset's crop size: the face mesh and the pose run at this size
FALLBACK_SQUARE = 0.75  # fallback crop: centred square, this fraction of the shorter side
FALLBACK_ELLIPSE = (0.5, 0.55, 0.30, 0.38)  # fallback mask: centre x, y, semi-axes x, y (crop fractions)
BOX_TO_CROP = 1.5  # --face-box: crop side / box side (BlazeFace box vs FFHQ quad on the sample)
MASK_DILATE = 0.02  # face mask dilation radius, fraction of the crop side
FEATHER = 0.04  # paste-back feather radius, fraction of the crop side
SWAP_PROMPT = "a photo of a face"
PANEL_GAP = 4  # white pixels between the panels of the side-by-side picture
PANEL_MIN_HEIGHT = 256  # small (tiny-model) panels are enlarged, nearest-neighbour, to this
PANEL_MAX_HEIGHT = 768  # and large photos shrunk to this

# The untrained Dense-Face put on the tiny model: small new modules, dlib identity (128-d).
TINY_CONFIG = DenseFaceConfig(id_dim=128, id_hidden=64, head_hidden=16, pose_embed_channels=(8, 16, 16, 32),
                              extra={"id_backend": "dlib"})
# The untrained Dense-Face put on a real SD without --weights (a smoke run only: G2 is untrained).
UNTRAINED_CONFIG = DenseFaceConfig(id_dim=128, extra={"id_backend": "dlib"})


# ---- face region -----------------------------------------------------------------------------

@dataclass
class FaceRegion:
    """Where the face of an image is, cut at the model's resolution, and its conditions."""

    source: str  # "detected" | "box" | "fallback"
    quad: np.ndarray  # (4, 2) crop corners in the image: top-left, bottom-left, bottom-right, top-right
    matrix: np.ndarray  # 2x3 affine, image pixels -> crop pixels
    crop: np.ndarray  # (S, S, 3) uint8
    mask: np.ndarray  # (S, S) bool face mask (dilated mesh silhouette, or the fallback ellipse)
    yaw: float
    pitch: float
    roll: float
    landmarks: np.ndarray | None = None  # (478, 3) in [0, 1] of the crop, None without a mesh
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.crop.shape[0])

    def pose_image(self, geometry: dict | None = None) -> np.ndarray:
        """The pose branch's condition, as the trainer draws it: (S, S, 3) RGB uint8. ``geometry``: a
        model's own drawing (an imported release: axis length 100 and 4 px lines on a 256 canvas),
        scaled to S; None: the trainer's."""
        from denseface.geometry.pose_image import draw_pose_axes

        if not geometry:
            return draw_pose_axes(self.yaw, self.pitch, self.roll, size=self.size)
        scale = self.size / geometry["canvas"]
        return draw_pose_axes(self.yaw, self.pitch, self.roll, size=self.size, length=geometry["axis_length"] * scale,
                              thickness=max(1, round(geometry["line_width"] * scale)))


def square_quad(cx: float, cy: float, side: float) -> np.ndarray:
    """Axis-aligned square as an FFHQ-style quad (TL, BL, BR, TR)."""
    h = side / 2.0
    return np.array([[cx - h, cy - h], [cx - h, cy + h], [cx + h, cy + h], [cx + h, cy - h]], np.float64)


def ellipse_mask(size: int, ellipse: tuple[float, float, float, float] = FALLBACK_ELLIPSE) -> np.ndarray:
    """(size, size) bool filled ellipse given as crop fractions (cx, cy, ax, ay)."""
    cx, cy, ax, ay = ellipse
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    return ((xx / size - cx) / ax) ** 2 + ((yy / size - cy) / ay) ** 2 <= 1.0


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def face_mask_from_landmarks(landmarks: np.ndarray, size: int, dilate: float = MASK_DILATE) -> np.ndarray:
    """Mesh silhouette at ``size``, dilated by ``dilate`` x size pixels: (size, size) bool."""
    from denseface.geometry.raster import silhouette

    mask = silhouette(landmarks, size).astype(np.uint8)
    r = int(round(dilate * size))
    if r > 0:
        mask = cv2.dilate(mask, _disk(r))
    return mask.astype(bool)


class FaceAnalyzer:
    """Detection + alignment + face mesh + pose, the dataset's code; models load on first use."""

    def __init__(self, build: BuildConfig | None = None) -> None:
        self.build = build or BuildConfig(runner="local", workers=1)
        self._detector: FaceDetector | None = None
        self._mesh = None

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            self._detector = FaceDetector(self.build.min_face_score)
        return self._detector

    @property
    def mesh(self):
        if self._mesh is None:
            from denseface.annotators.landmarks import FaceMesh

            self._mesh = FaceMesh(self.build.min_face_score)
        return self._mesh

    def region(self, image: np.ndarray, size: int, face_box: Sequence[float] | None = None,
               fallback: bool = True, mask_dilate: float = MASK_DILATE) -> FaceRegion:
        """The face region of ``image`` cut at ``size`` (see the module docstring for the rules)."""
        image = np.ascontiguousarray(image)
        h, w = image.shape[:2]
        notes: list[str] = []
        if face_box is not None:
            x0, y0, x1, y1 = (float(v) for v in face_box)
            if not (x1 > x0 and y1 > y0):
                raise ValueError(f"face box must be x0,y0,x1,y1 with x1 > x0 and y1 > y0, got {face_box}")
            quad = square_quad((x0 + x1) / 2, (y0 + y1) / 2, BOX_TO_CROP * max(x1 - x0, y1 - y0))
            source = "box"
        else:
            try:
                face = choose_face(self.detector(image), self.build.min_face_px, self.build.multi_face_area_ratio)
                quad = ffhq_quad(face.eye_left, face.eye_right, face.mouth)
                source = "detected"
            except Reject as exc:
                if not fallback:
                    raise ValueError(f"no usable face in the image ({exc}); give its box with face_box / --face-box")
                side = FALLBACK_SQUARE * min(h, w)
                quad = square_quad(w / 2, h / 2, side)
                source = "fallback"
                notes.append(f"no usable face in the base image ({exc}): using the default face region, the centred "
                             f"{side:.0f} px square ({FALLBACK_SQUARE:.0%} of the shorter side), neutral pose (0, 0, 0) "
                             f"and the default elliptical mask")
        matrix = crop_transform(quad, size)
        crop = warp_face(image, matrix, size)
        landmarks = None
        if source != "fallback":
            analysis = warp_face(image, crop_transform(quad, ANALYSIS_SIZE), ANALYSIS_SIZE)
            landmarks = self.mesh(analysis)
            if landmarks is None:
                notes.append(f"face mesh found no face in the {source} face region: neutral pose (0, 0, 0) "
                             f"and the default elliptical mask")
        if landmarks is not None:
            from denseface.geometry.pose import pose_from_landmarks

            yaw, pitch, roll = pose_from_landmarks(landmarks, ANALYSIS_SIZE)
            mask = face_mask_from_landmarks(landmarks, size, mask_dilate)
        else:
            yaw = pitch = roll = 0.0
            mask = ellipse_mask(size)
        for note in notes:
            log.info(note)  # also in the result's notes, which the CLI prints
        return FaceRegion(source, quad, matrix, crop, mask, float(yaw), float(pitch), float(roll), landmarks, notes)


def latent_mask_from(mask: np.ndarray, latent_hw: tuple[int, int]) -> np.ndarray:
    """Binary latent mask: a latent cell is face when any pixel under it is (area coverage > 0)."""
    cover = cv2.resize(mask.astype(np.float32), (latent_hw[1], latent_hw[0]), interpolation=cv2.INTER_AREA)
    return cover > 0


def feather_alpha(mask: np.ndarray, latent_mask: np.ndarray | None = None, feather: float = FEATHER) -> np.ndarray:
    """Paste-back weights in crop space, float32 in [0, 1]: the mask eroded by r = feather x size and
    blurred (sigma r / 2), so it fades out about where the mask ends; zero outside ``latent_mask``
    (the repainted cells) when given, so nothing but repainted pixels is pasted."""
    size = mask.shape[0]
    r = max(1, int(round(feather * size)))
    inner = cv2.erode(mask.astype(np.uint8), _disk(r)).astype(np.float32)
    alpha = cv2.GaussianBlur(inner, (0, 0), sigmaX=r / 2.0, borderType=cv2.BORDER_CONSTANT)
    if latent_mask is not None:
        alpha *= cv2.resize(latent_mask.astype(np.float32), (mask.shape[1], mask.shape[0]),
                            interpolation=cv2.INTER_NEAREST)
    return np.clip(alpha, 0.0, 1.0)


def paste_back(image: np.ndarray, crop: np.ndarray, matrix: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Warp ``crop`` (and its weights ``alpha``) back into ``image`` with the inverse of ``matrix``
    (image -> crop) and blend. Same size as ``image``; where the warped alpha is 0 the pixels are
    ``image``'s, exactly."""
    h, w = image.shape[:2]
    inv = cv2.invertAffineTransform(np.asarray(matrix, np.float64))
    back = cv2.warpAffine(crop.astype(np.float32), inv, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    a = cv2.warpAffine(alpha.astype(np.float32), inv, (w, h), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    a = np.clip(a, 0.0, 1.0)[..., None]
    out = image.astype(np.float32)
    touched = a[..., 0] > 0
    out[touched] = (a * back + (1.0 - a) * out)[touched]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


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
        raise ValueError(f"the Dense-Face model {why} ({config.id_dim}-d); give it with --id-backend dlib|arcface|irse50")
    return requested


def load_photo(photo: str | Path | np.ndarray, build: BuildConfig | None = None) -> np.ndarray:
    """RGB uint8 of a path (decoded as the dataset decodes) or of an array (returned as is)."""
    if isinstance(photo, np.ndarray):
        return np.ascontiguousarray(photo[..., :3])
    b = build or BuildConfig(runner="local", workers=1)
    try:
        return decode_image(str(photo), b.max_file_bytes, b.max_pixels, b.min_side)[0]
    except Reject as exc:
        raise ValueError(f"{photo}: {exc}") from None


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
        """As `denseface.pipeline.DenseFacePipeline.load`: ``pretrained`` None = the tiny offline SD
        (built from ``seed``), else a diffusers SD folder or hub id (or a saved DenseFacePipeline);
        ``weights``: a `DenseFace.save_trained` folder; None: the pipeline folder's own, else an
        untrained Dense-Face (`TINY_CONFIG` / `UNTRAINED_CONFIG`), which only exercises the pipeline."""
        from denseface.pipeline import DenseFacePipeline

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
    def text_to_image(self, prompt: str, negative_prompt: str = "", steps: int = DEFAULT_STEPS,
                      guidance: float = DEFAULT_GUIDANCE, seed: int | None = 0,
                      generator: torch.Generator | None = None, height: int | None = None,
                      width: int | None = None, output: str = "uint8") -> np.ndarray:
        """G1: the base image (H, W, 3), uint8 or (``output="float"``) float32 in [0, 1];
        StableDiffusionPipeline's loop (DDIM with the model's eta, 0 unless it records one; CFG with
        ``negative_prompt``)."""
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
                steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE, seed: int | None = 0,
                generator: torch.Generator | None = None, strength: float = 1.0,
                ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, np.ndarray]:
        """G2 with latent blending on the region's crop: (face crop uint8, z0, z_bg_init, latent mask).

        ``strength`` < 1 starts at an earlier (less noisy) timestep, img2img-style; 1 = Fig. 7's k.
        The unconditional CFG branch is the plain negative prompt (no identity token) with the same pose."""
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
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
                 steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE, seed: int = 0,
                 size: int | None = None, face_box: Sequence[float] | None = None, strength: float = 1.0,
                 crop_size: int | None = None, mask_dilate: float = MASK_DILATE,
                 feather: float = FEATHER, generator: torch.Generator | None = None) -> GenerationResult:
        """Text mode (``target`` None: G1 base image from ``prompt``) or face swap (``target``
        photo); then face region, G2 latent blending with ``reference``'s identity, paste back.
        ``generator`` (default: seeded with ``seed``) drives G1 and then G2."""
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


# ---- command line ------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    """``denseface generate`` (options in denseface/cli.py): `DenseFacePipeline` on the command line,
    after the weights check; returns the exit status."""
    from denseface.model_refs import require
    from denseface.pipeline import DenseFacePipeline
    from denseface.weights_check import generate_needs

    if args.target is None and not args.prompt:
        print("error: --prompt is required without --target", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        require(generate_needs(args.pretrained, args.weights, args.id_backend, args.id_weights))
        pipe = DenseFacePipeline.load(args.pretrained, args.weights, seed=args.seed, device=args.device,
                                      dtype=torch.float16 if args.fp16 else None, id_backend=args.id_backend,
                                      id_weights=args.id_weights)
        t_load = time.perf_counter() - t0
        steps, guidance = sampler_defaults(pipe.dense_face.config)
        args.steps, args.guidance = args.steps or steps, args.guidance if args.guidance is not None else guidance
        res = pipe(prompt=args.prompt, reference_image=args.reference, target_image=args.target,
                   negative_prompt=args.negative_prompt, num_inference_steps=args.steps, guidance_scale=args.guidance,
                   generator=torch.Generator().manual_seed(args.seed), height=args.size, strength=args.strength,
                   face_box=args.face_box).results[0]
    except (FileNotFoundError, ValueError, ImportError) as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    gen = pipe.generator()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray(res.final).save(out)
    panels = out.with_name(out.stem + "_panels.png")
    Image.fromarray(side_by_side(res.panels())).save(panels)
    info = {
        "mode": res.mode, "prompt": args.prompt or SWAP_PROMPT, "negative_prompt": args.negative_prompt,
        "reference": str(args.reference), "target": str(args.target) if args.target else None,
        "model": str(args.pretrained) if args.pretrained else "tiny (offline, random weights)",
        "weights": str(args.weights) if args.weights else None, "id_backend": gen.id_backend,
        "steps": args.steps, "guidance": args.guidance, "seed": args.seed, "strength": args.strength,
        "image_size": list(res.final.shape[:2]), "crop_size": res.region.size, "face_source": res.region.source,
        "pose": {"yaw": res.region.yaw, "pitch": res.region.pitch, "roll": res.region.roll},
        "notes": res.notes, "timings_s": {"load": round(t_load, 3), **res.timings,
                                           "total": round(time.perf_counter() - t0, 3)},
    }
    out.with_suffix(".json").write_text(json.dumps(info, indent=2))
    for note in res.notes:
        print(f"note: {note}")
    print(f"face region: {res.region.source}, pose yaw {res.region.yaw:.1f} pitch {res.region.pitch:.1f} "
          f"roll {res.region.roll:.1f}, id backend {gen.id_backend}")
    print(f"final:  {out} ({res.final.shape[1]}x{res.final.shape[0]})")
    print(f"panels: {panels} (base | crop | mask | final)")
    print("timings (s): " + ", ".join(f"{k} {v}" for k, v in info["timings_s"].items()))
    return 0
