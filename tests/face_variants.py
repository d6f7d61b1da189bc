"""Framings of the sample's single-face photos that a face dataset meets: the photo, its
mirror, the photo rolled by ±30° and ±60° on a larger canvas, and its own aligned crop at
CASIA-WebFace's 250 px and CelebA-like 112 px. Each comes with the 2x3 affine taking the
photo's pixels to the variant's, so a test can tell where the face must be found."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from denseface.annotators.base import Item
from denseface.annotators.decode import Decode
from denseface.annotators.detect_align import DetectAlign
from denseface.config import BuildConfig
from denseface.etl.sample_data import PHOTOS, sample_photo

GROUP_PHOTO = "t1"
SINGLE_FACE = tuple(Path(p.name).stem for p in PHOTOS if Path(p.name).stem != GROUP_PHOTO)
ROTATIONS = (30, -30, 60, -60)  # degrees, counter-clockwise on screen (cv2's sign)
CROP_SIDES = (250, 112)


def decoded(stem: str) -> np.ndarray:
    """RGB of a sample photo as the pipeline decodes it."""
    item = Item(key=stem, identity=stem, source="casia", source_path=str(sample_photo(stem)), unit=0)
    Decode(BuildConfig()).process([item])
    assert item.ok, item.reason
    return item.image


def rolled(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The photo rotated about its centre on a square black canvas of its diagonal."""
    h, w = image.shape[:2]
    side = int(np.ceil(np.hypot(h, w)))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    m[:, 2] += [(side - w) / 2, (side - h) / 2]
    return cv2.warpAffine(image, m, (side, side), flags=cv2.INTER_LINEAR), m


def mirrored(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = image.shape[1]
    return np.ascontiguousarray(image[:, ::-1]), np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0]])


_ALIGN = DetectAlign(BuildConfig())  # models load on first use, once


def aligned_crop(image: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's own aligned crop of the photo, resized to ``side``."""
    item = Item(key="x", identity="x", source="casia", source_path="", unit=0, image=image)
    cfg = BuildConfig()
    _ALIGN.process([item])
    assert item.ok, item.reason
    m = np.asarray(item.fields["crop_transform"], np.float64).reshape(2, 3) * (side / cfg.crop_size)
    return cv2.resize(item.image, (side, side), interpolation=cv2.INTER_AREA), m


def variants(image: np.ndarray) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, affine photo -> variant) for every framing of the module docstring."""
    yield "original", image, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    yield "mirror", *mirrored(image)
    for deg in ROTATIONS:
        yield f"rotate{deg:+d}", *rolled(image, deg)
    for side in CROP_SIDES:
        yield f"crop{side}", *aligned_crop(image, side)
