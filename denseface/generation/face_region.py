"""The face of an image: where it is, its pose and mask at the model's resolution, and pasting a
repainted crop back (paper §3.6, Fig. 7, steps 2 and 4; DESIGN.md §6, last bullet).

Why its own module: generation repaints only the face, and the evaluation measures generated faces
the same way (`FaceAnalyzer` without the fallback); neither needs the diffusion model for it.

**Face region** of an image, with the dataset's own code (`denseface.annotators`, `denseface.geometry`):
BlazeFace detection and FFHQ alignment give the crop (the model's resolution, 512 for SD 2.1-base,
64 for the tiny model); the face mesh runs on the same quad cut at the dataset's 512 px, and gives
the head pose (PnP, `pose_from_landmarks`, as the dataset's default backend) -> the pose image
(`draw_pose_axes`, as the trainer), and the face mask (mesh silhouette, dilated). Downsampled to the
latent grid, a latent cell is "face" when any of its pixels is.

**Paste back**: the decoded crop is warped back with the inverse of the alignment
(``cv2.invertAffineTransform`` + ``warpAffine``) and blended into the base image with a feathered
copy of the face mask (eroded, Gaussian-blurred, and never reaching beyond the repainted latent
cells). Pixels the mask does not reach keep the base image's values exactly.

Where no face is found: a base image drawn by the tiny offline model (64 px, random weights) is
noise, and neither BlazeFace nor the face mesh finds a face in it. The base image's face region
then falls back to a documented default: the centred square of `FALLBACK_SQUARE` of the shorter
side as the crop, a neutral pose (0, 0, 0) and the ellipse `FALLBACK_ELLIPSE` as the mask; the
region's ``notes`` (printed by the CLI, and logged) say so. With real SD 2.1 the detector is
used. ``face_box`` (``--face-box x0,y0,x1,y1``) gives the region explicitly instead (a square of
`BOX_TO_CROP` times the box's longer side, centred on it; the mesh still gives pose and mask
when it finds the face). A face-swap target without a detectable face is an error (unless
``face_box`` is given): repainting a guessed square of a user's photo would be silent damage.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from denseface.annotators.base import Reject
from denseface.annotators.decode import decode_image
from denseface.annotators.detect_align import FaceDetector, choose_face
from denseface.config import BuildConfig
from denseface.geometry.align import crop_transform, ffhq_quad, warp_face

log = logging.getLogger(__name__)

ANALYSIS_SIZE = 512  # the dataset's crop size: the face mesh and the pose run at this size
FALLBACK_SQUARE = 0.75  # fallback crop: centred square, this fraction of the shorter side
FALLBACK_ELLIPSE = (0.5, 0.55, 0.30, 0.38)  # fallback mask: centre x, y, semi-axes x, y (crop fractions)
BOX_TO_CROP = 1.5  # --face-box: crop side / box side (BlazeFace box vs FFHQ quad on the sample)
MASK_DILATE = 0.02  # face mask dilation radius, fraction of the crop side
FEATHER = 0.04  # paste-back feather radius, fraction of the crop side


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
                             f"{side:.0f} px square ({FALLBACK_SQUARE:.0%} of the shorter side), "
                             f"neutral pose (0, 0, 0) and the default elliptical mask")
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


def load_photo(photo: str | Path | np.ndarray, build: BuildConfig | None = None) -> np.ndarray:
    """RGB uint8 of a path (decoded as the dataset decodes) or of an array (returned as is)."""
    if isinstance(photo, np.ndarray):
        return np.ascontiguousarray(photo[..., :3])
    b = build or BuildConfig(runner="local", workers=1)
    try:
        return decode_image(str(photo), b.max_file_bytes, b.max_pixels, b.min_side)[0]
    except Reject as exc:
        raise ValueError(f"{photo}: {exc}") from None

