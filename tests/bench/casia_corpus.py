"""Synthetic CASIA-WebFace-sized inputs for the ETL benches, cut from the embedded sample.

CASIA-WebFace ships 250x250 JPEGs with the face in the middle; the sample's photos are
larger and framed anyhow, so each is cut around its face and resized (``casia_sized``).
Large corpora reuse those few crops under many identity folders (``replicate``), hard-linked
where the file system allows: the build reads each path as its own input either way.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from denseface.annotators.landmarks import FaceMesh


def casia_sized(photos: list[Path], root: Path) -> Path:
    """Each photo cut to a square of 2.2x the face mesh's extent around its centre (a photo
    the mesh misses at full size: its centre square), saved as a 250x250 JPEG (quality 90) at
    ``root/<parent folder>/<stem>.jpg``."""
    mesh = FaceMesh()
    for p in photos:
        im = Image.open(p).convert("RGB")
        lmk = mesh(np.ascontiguousarray(np.asarray(im)))
        if lmk is None:  # a photo that is already a tight face crop: its centre square
            centre, side = np.array(im.size) / 2, float(min(im.size))
        else:
            xy = lmk[:, :2] * np.array(im.size)
            centre, side = (xy.min(0) + xy.max(0)) / 2, 2.2 * float((xy.max(0) - xy.min(0)).max())
        box = (*(centre - side / 2), *(centre + side / 2))
        dst = root / p.parent.name / (p.stem + ".jpg")
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.crop(tuple(int(round(v)) for v in box)).resize((250, 250), Image.BICUBIC).save(dst, quality=90)
    return root


def replicate(crops: list[Path], root: Path, images: int, per_identity: int) -> Path:
    """``images`` inputs in folders of ``per_identity`` (``id_00000/0000.jpg`` ...), cycling
    through ``crops``; an existing complete tree is reused."""
    paths = [root / f"id_{i // per_identity:05d}" / f"{i % per_identity:04d}.jpg" for i in range(images)]
    if root.is_dir() and sum(1 for p in root.rglob("*.jpg")) == images and all(p.exists() for p in paths):
        return root
    shutil.rmtree(root, ignore_errors=True)
    for i, dst in enumerate(paths):
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(crops[i % len(crops)], dst)
        except OSError:
            shutil.copyfile(crops[i % len(crops)], dst)
    return root
