"""Decode and validate: bytes on disk -> RGB uint8, or a rejection with the reason.

Size limits are checked on the header before any pixel is decoded, so a decompression
bomb costs nothing; odd modes (16-bit, CMYK, grayscale, palette, alpha) are normalised.
Memory is bounded per image: a picture larger than ``max_side`` is decoded at a reduced
scale where the format allows (JPEG draft mode) and downscaled at once otherwise, so a
batch holds only small images (``decode_scale`` records the factor; docs/benchmarks.md
has the peak per worker). Sizes and transforms are in the upright (EXIF-rotated) frame.
"""
from __future__ import annotations

import os
import stat
import warnings

import cv2
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


def _orientation(img: Image.Image) -> int:
    """EXIF orientation (1-8; 1 = stored upright); a broken EXIF block counts as upright."""
    try:
        value = int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - EXIF parsing raises many kinds of errors on junk
        return 1
    return value if 1 <= value <= 8 else 1


def _reduced(img: Image.Image, max_side: int | None) -> Image.Image:
    """Box-downscale by the integer factor that brings the longer side within ``max_side``,
    on the decoded PIL image before any copy of it is made (no-op for small images)."""
    factor = -(-max(img.size) // max_side) if max_side else 1
    if factor <= 1:
        return img
    try:
        return img.reduce(factor)
    except ValueError:  # a mode reduce() does not take: downscaled after conversion instead
        return img


def decode_image(path: str, max_bytes: int, max_pixels: int, min_side: int,
                 max_side: int | None = None) -> tuple[np.ndarray, dict]:
    """Pure function behind the stage: returns (rgb, fields) or raises Reject."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise Reject("missing file") from None
    except (OSError, ValueError) as exc:
        raise Reject(f"unreadable file: {getattr(exc, 'strerror', None) or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise Reject("not a regular file")  # a FIFO or device would block or never end
    size = st.st_size
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
                if getattr(img, "n_frames", 1) > 1:
                    raise Reject(f"animated or multi-frame image ({img.n_frames} frames): which frame is unclear")
                fmt, mode = img.format or "", img.mode
                orientation = _orientation(img)
                if max_side and max(w, h) > max_side:
                    img.draft(None, (max(1, w * max_side // max(w, h)), max(1, h * max_side // max(w, h))))
                img.load()
                img = _reduced(img, max_side)
                ImageOps.exif_transpose(img, in_place=True)
                rgb = to_rgb(img)
    except Reject:
        raise
    except UnidentifiedImageError:
        raise Reject("not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Reject(f"decompression-bomb guard: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise Reject(f"decode error: {exc}") from None
    upright_w, upright_h = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    if max_side and max(rgb.shape[:2]) > max_side:
        f = max_side / max(rgb.shape[:2])
        rgb = cv2.resize(rgb, (max(1, round(rgb.shape[1] * f)), max(1, round(rgb.shape[0] * f))),
                         interpolation=cv2.INTER_AREA)
    fields = {"src_width": upright_w, "src_height": upright_h, "src_orientation": orientation,
              "decode_scale": round(rgb.shape[1] / upright_w, 6), "src_format": fmt, "src_mode": mode,
              "src_bytes": size}
    return np.ascontiguousarray(rgb), fields


class Decode(Stage):
    name = "decode"
    version = "2"
    manifest_fields = {"src_width": "int32", "src_height": "int32", "src_orientation": "int32",
                       "decode_scale": "float32", "src_format": "string", "src_mode": "string", "src_bytes": "int64"}

    def process_one(self, item: Item) -> None:
        b = self.build
        item.image, fields = decode_image(item.source_path, b.max_file_bytes, b.max_pixels, b.min_side,
                                          b.max_decode_side)
        item.fields.update(fields)
