"""The models behind each metric, loaded once before any image is generated.

Per metric, its model (``ModelRefs`` field) and its input:

* ``clip_t``, ``clip_i``: transformers ``CLIPModel`` (``clip``: hub id or local folder); the
  whole image, the CLIP processor's resize + centre crop + normalisation; projected pooled embeddings.
* ``dino``: transformers ``AutoModel`` ViT/DINO (``dino``); the whole image, its image processor;
  the CLS token of the last layer.
* ``id_arcface``: insightface ArcFace ONNX (``arcface``: local ``.onnx``); the face aligned as
  for training (`FaceAnalyzer`), cut at 112 px on the ArcFace template.
* ``id_adaface``: AdaFace IR backbone (``adaface``: local ``.ckpt``), `denseface.model.adaface`;
  the same 112 px crop, BGR.
* ``id_dlib``: dlib ResNet (face-recognition-models, offline); the aligned 512 px face, landmark box.
* ``face_div``: LPIPS-alex v0.1 (``lpips``: local folder), `denseface.model.lpips`; the aligned
  face crop at `FACE_DIV_SIZE` px, in [-1, 1].
* ``fid``: FID Inception-v3 (``fid_inception``: local ``.pth``) + torchmetrics'
  ``FrechetInceptionDistance`` against ``fid_reference`` (a folder of images, e.g. 10 000 FFHQ);
  the whole image, uint8.
* ``pose``: the project's PnP on the face mesh, and Hopenet (``hopenet``) when given; the
  aligned 512 px face.

A configured model that cannot be loaded is an `EvalInputError` naming it and how to get it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from denseface.config import flag
from denseface.etl.readers import IMAGE_EXTS
from denseface.evaluate.image_set import EvalInputError

METRICS = ("clip_t", "clip_i", "dino", "id_arcface", "id_adaface", "id_dlib", "face_div", "fid", "pose")
PAPER_METRICS = ("clip_t", "clip_i", "dino", "id_arcface", "id_adaface", "face_div", "fid", "pose")
FACE_SIZE = 512  # the dataset's aligned crop: where the mesh, the pose and the identity crops come from
FACE_DIV_SIZE = 256  # LPIPS input side for face diversity
BATCH = 16


class ModelRefs(BaseModel):
    """Where each metric's model comes from (hub id or local path; None: not configured); the
    fields are ``denseface evaluate``'s flags, ``device`` is set from its ``--device``."""

    model_config = ConfigDict(extra="forbid")

    clip: str = flag("openai/clip-vit-large-patch14", help="CLIP for clip_t/clip_i: hub id or folder")
    dino: str = flag("facebook/dino-vits16", help="DINO ViT for dino: hub id or folder")
    arcface: str | None = flag(None, help="id_arcface: insightface ArcFace .onnx (e.g. buffalo_l w600k_r50.onnx)")
    adaface: str | None = flag(None, help="id_adaface: AdaFace .ckpt (e.g. adaface_ir101_webface12m.ckpt)")
    lpips: str | None = flag(None, help="face_div: folder with LPIPS alex.pth (v0.1) and alexnet-owt-7be5be79.pth")
    fid_inception: str | None = flag(None, help="fid: pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    fid_reference: str | None = flag(None, help="fid: folder of real images (the paper: 10 000 FFHQ)")
    hopenet: str | None = flag(None, help="pose: also Hopenet (hopenet_robust_alpha1.pkl) besides the PnP pose")
    device: str = "cpu"


# flag of each metric's required model (the CLI's option name)
REQUIRED = {"id_arcface": ("arcface", "--arcface"), "id_adaface": ("adaface", "--adaface"),
            "face_div": ("lpips", "--lpips"), "fid": ("fid_inception", "--fid-inception")}


def parse_metrics(text: str | None) -> tuple[str, ...]:
    """``--metrics`` (comma-separated names, ``paper`` or ``all``) -> metric names in `METRICS` order."""
    if not text or text == "paper":
        return PAPER_METRICS
    names = {m.strip() for m in text.split(",") if m.strip()}
    if "all" in names:
        return METRICS
    unknown = sorted(names - set(METRICS))
    if unknown:
        raise EvalInputError(f"--metrics: unknown {', '.join(unknown)}; known: {', '.join(METRICS)}, paper, all")
    return tuple(m for m in METRICS if m in names)


def hf_load(cls, ref: str, what: str, flag: str):
    """``cls.from_pretrained(ref)`` with a one-line error naming the model when it cannot load;
    ``ref`` as every model reference (`denseface.model_refs`: folder, or hub id[@revision])."""
    from denseface.model_refs import resolve_pretrained

    source, kwargs = resolve_pretrained(ref, what).pretrained_args()
    try:
        return cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvalInputError(f"{what} model {ref!r} ({flag}) cannot be loaded: {first[:200]}. Give a local folder, "
                             f"or a Hugging Face hub id that is cached (`huggingface-cli download {ref}` online)"
                             ) from None


def _chunks(seq: Sequence, n: int = BATCH):
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


class ImageEncoder:
    """A transformers image model and its processor: RGB images -> (N, D) embeddings (`embed`)."""

    def __init__(self, model, processor, device: str) -> None:
        self.device = torch.device(device)
        self.model, self.processor = model.to(self.device).eval(), processor

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for chunk in _chunks(list(images)):
            px = self.processor(images=chunk, return_tensors="pt")["pixel_values"].to(self.device)
            out.append(self.embed(px).float().cpu().numpy())
        return np.concatenate(out)


class ClipEncoder(ImageEncoder):
    """CLIP image and text embeddings (the projections CLIPModel's logits use)."""

    def __init__(self, ref: str, device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        super().__init__(hf_load(CLIPModel, ref, "CLIP", "--clip"), hf_load(CLIPProcessor, ref, "CLIP", "--clip"),
                         device)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.visual_projection(self.model.vision_model(pixel_values=pixel_values).pooler_output)

    @torch.inference_mode()
    def texts(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for chunk in _chunks(list(texts)):
            tok = self.processor(text=chunk, return_tensors="pt", padding=True, truncation=True)
            pooled = self.model.text_model(input_ids=tok["input_ids"].to(self.device),
                                           attention_mask=tok["attention_mask"].to(self.device)).pooler_output
            out.append(self.model.text_projection(pooled).float().cpu().numpy())
        return np.concatenate(out)


class DinoEncoder(ImageEncoder):
    """The CLS token of a ViT (DINO, DINOv2) image model's last layer."""

    def __init__(self, ref: str, device: str = "cpu") -> None:
        from transformers import AutoImageProcessor, AutoModel

        super().__init__(hf_load(AutoModel, ref, "DINO", "--dino"), hf_load(AutoImageProcessor, ref, "DINO", "--dino"),
                         device)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state[:, 0]


@dataclass
class Face:
    """A face found in an image, framed as the dataset frames it."""

    crop: np.ndarray  # (FACE_SIZE, FACE_SIZE, 3) uint8, FFHQ-aligned
    landmarks: np.ndarray  # (478, 3) in [0, 1] of the crop
    pose: tuple[float, float, float]  # PnP yaw, pitch, roll (degrees)


class FaceFinder:
    """Detection + alignment + mesh + PnP pose: generation's `FaceAnalyzer`, without fallback."""

    def __init__(self) -> None:
        from denseface.generation.face_region import FaceAnalyzer

        self.analyzer = FaceAnalyzer()

    def __call__(self, image: np.ndarray) -> Face | None:
        try:
            region = self.analyzer.region(image, FACE_SIZE, fallback=False)
        except ValueError:
            return None
        if region.landmarks is None:
            return None
        return Face(region.crop, region.landmarks, (region.yaw, region.pitch, region.roll))


class IdentityScorer:
    """L2-normalised identity embeddings of faces with one backend (``dlib``, ``arcface``, ``adaface``)."""

    def __init__(self, backend: str, weights: str | None = None, device: str = "cpu") -> None:
        from denseface.annotators import identity as idm

        self.backend, self._idm = backend, idm
        if backend == "dlib":
            folder = idm.dlib_weights_dir(weights)
            if folder is None or not all((folder / f).is_file() for f in idm.DLIB_FILES):
                raise EvalInputError(f"id_dlib needs {', '.join(idm.DLIB_FILES)}: pip install face-recognition-models")
            self.model = idm.DlibDescriptor(folder)
        elif backend == "arcface":
            path = Path(weights).expanduser()
            if not path.is_file():
                raise EvalInputError(f"ArcFace model {path} (--arcface) not found: give a local insightface ArcFace "
                                     f".onnx (buffalo_l's w600k_r50.onnx)")
            self.model = idm.ArcFaceOnnx(path)
        elif backend == "adaface":
            from denseface.model.adaface import load_adaface

            try:
                self.model = load_adaface(weights).to(device)
            except (FileNotFoundError, ValueError) as exc:
                raise EvalInputError(str(exc)) from None
        else:
            raise ValueError(f"unknown identity backend {backend!r}")

    @torch.inference_mode()
    def __call__(self, faces: Sequence[Face]) -> np.ndarray:
        if not faces:
            return np.empty((0, 0))
        idm = self._idm
        if self.backend == "dlib":
            boxes = [idm.landmark_box(f.landmarks, FACE_SIZE, FACE_SIZE) for f in faces]
            raw = self.model([f.crop for f in faces], boxes)
        else:
            size = self.model.size if self.backend == "arcface" else idm.ARCFACE_SIZE
            crops = [idm.align_arcface(f.crop, f.landmarks, size)[0] for f in faces]
            if self.backend == "arcface":
                raw = self.model(crops)
            else:
                from denseface.model.adaface import adaface_input

                dev = next(self.model.parameters()).device
                raw = np.concatenate([self.model(adaface_input(c).to(dev)).float().cpu().numpy()
                                      for c in _chunks(crops)])
        return np.stack([idm.l2_normalise(v) for v in raw])


class LpipsScorer:
    """LPIPS distances between aligned face crops (face diversity)."""

    def __init__(self, folder: str, device: str = "cpu") -> None:
        from denseface.model.lpips import load_lpips

        try:
            self.net = load_lpips(folder).to(device)
        except (FileNotFoundError, ValueError) as exc:
            raise EvalInputError(str(exc)) from None
        self.device = torch.device(device)

    def _tensor(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        arr = np.stack([cv2.resize(c, (FACE_DIV_SIZE, FACE_DIV_SIZE), interpolation=cv2.INTER_AREA) for c in crops])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(self.device)

    @torch.inference_mode()
    def __call__(self, a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
        out = [self.net(self._tensor(x), self._tensor(y)).cpu().numpy()
               for x, y in zip(_chunks(list(a)), _chunks(list(b)))]
        return np.concatenate(out) if out else np.empty(0)


class FidScorer:
    """FID of image sets against one reference set, with the FID Inception and torchmetrics."""

    def __init__(self, inception: str, reference: str, device: str = "cpu") -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance

        from denseface.model.inception import load_fid_inception

        try:
            net = load_fid_inception(inception)
        except (FileNotFoundError, ValueError) as exc:
            raise EvalInputError(str(exc)) from None
        ref = Path(reference).expanduser() if reference else None
        if ref is None or not ref.is_dir():
            raise EvalInputError(f"fid needs --fid-reference, a folder of real images (the paper: 10 000 FFHQ); "
                                 f"got {reference}")
        self.reference = sorted(p for p in ref.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        if len(self.reference) < 2:
            raise EvalInputError(f"--fid-reference {ref}: fewer than 2 images")
        self.device = torch.device(device)
        self.metric = FrechetInceptionDistance(feature=net, reset_real_features=False).to(self.device)
        self._real_done = False

    @torch.no_grad()
    def _update(self, images: Sequence[np.ndarray], real: bool) -> None:
        for chunk in _chunks(list(images)):
            by_size: dict[tuple, list[np.ndarray]] = {}
            for im in chunk:
                by_size.setdefault(im.shape, []).append(im)
            for same in by_size.values():
                x = torch.from_numpy(np.stack(same)).permute(0, 3, 1, 2).contiguous().to(self.device)
                self.metric.update(x, real=real)

    def __call__(self, images: Sequence[np.ndarray]) -> float:
        """FID of ``images`` (RGB uint8) against the reference folder; NaN under two images."""
        if len(images) < 2:
            return float("nan")
        if not self._real_done:
            from denseface.generation.face_region import load_photo

            for chunk in _chunks(self.reference, 64):
                self._update([load_photo(p) for p in chunk], real=True)
            self._real_done = True
        self.metric.reset()  # keeps the real features (reset_real_features=False)
        self._update(images, real=False)
        return float(self.metric.compute())
