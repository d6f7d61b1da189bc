"""Decode and validate: bytes on disk -> RGB uint8, or a rejection with the reason.

Size limits are checked on the header before any pixel is decoded, so a decompression
bomb costs nothing; odd modes (16-bit, CMYK, grayscale, palette, alpha) are normalised.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from denseface.annotators.base import Item, Reject, Stage

# Our own pixel limit is checked first; PIL's guard stays on as a second line.
Image.MAX_IMAGE_PIXELS = 200_000_000

_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> HxWx3 uint8 RGB (16-bit scaled down, alpha composited on white)."""
    if img.mode == "RGB":
        return np.asarray(img)  # the common case: one copy, no conversion
    if img.mode in _SIXTEEN_BIT:
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 or img.mode != "I" else 255.0
        gray = np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "F":
        gray = np.clip(np.asarray(img, dtype=np.float64), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def decode_image(path: str, max_bytes: int, max_pixels: int, min_side: int) -> tuple[np.ndarray, dict]:
    """Pure function behind the stage: returns (rgb, fields) or raises Reject."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise Reject("missing file") from None
    except OSError as exc:
        raise Reject(f"unreadable file: {exc.strerror or exc}") from None
    if size == 0:
        raise Reject("empty file (0 bytes)")
    if size > max_bytes:
        raise Reject(f"file too large: {size} bytes > {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise Reject(f"too many pixels (decompression-bomb guard): {w}x{h} > {max_pixels}")
                if min(w, h) < min_side:
                    raise Reject(f"image too small: {w}x{h}, shorter side < {min_side} px")
                fmt, mode = img.format or "", img.mode
                img.load()
                ImageOps.exif_transpose(img, in_place=True)
                rgb = to_rgb(img)
    except Reject:
        raise
    except UnidentifiedImageError:
        raise Reject("not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Reject(f"decompression-bomb guard: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise Reject(f"decode error: {exc}") from None
    fields = {"src_width": w, "src_height": h, "src_format": fmt, "src_mode": mode, "src_bytes": size}
    return np.ascontiguousarray(rgb), fields


class Decode(Stage):
    name = "decode"
    version = "1"
    manifest_fields = {"src_width": "int32", "src_height": "int32", "src_format": "string",
                       "src_mode": "string", "src_bytes": "int64"}

    def process_one(self, item: Item) -> None:
        b = self.build
        item.image, fields = decode_image(item.source_path, b.max_file_bytes, b.max_pixels, b.min_side)
        item.fields.update(fields)
