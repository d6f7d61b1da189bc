"""The contact sheet: one row per accepted sample, to see what the annotations look like.

Each row: the image, its 478 landmarks, depth (viridis, background black), the 10-class mask
in the release's ``Paired`` colours, the head-pose axes over the image, and text (key,
identity, yaw/pitch/roll, the top caption with its CLIP score or "template"). The samples are
picked with ``where``, a DuckDB SQL boolean expression over the manifest's columns (the same
dialect as ``denseface manifest query``), e.g. ``"yaw > 30"`` or ``"identity = 'obama' AND
face_score > 0.9"``; only ``status = 'ok'`` rows are considered. Default: the first ``n`` by
key; with a ``seed``, ``n`` drawn at random (reproducibly), shown in key order.

Members that a dataset does not have yet (depth, mask, pose, captions) show as "n/a".
"""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from denseface.geometry.mask import colorize
from denseface.inspection.fields import POSE_COLUMNS, number
from denseface.shards.manifest import ManifestError, accepted_keys, manifest_rows
from denseface.shards.reader import iter_members
from denseface.shards.schema import DEPTH, JPG, JSON, LMK, MASK, decode_members

PANEL = 192  # px, each square panel of a contact-sheet row
HEADER = 28  # px, the title strip above the rows
INFO_WIDTH = 2 * PANEL  # px, the text panel at the end of a row
COLUMNS = ("image", "landmarks", "depth", "mask", "pose (crop frame)", "info")
SHEET_WIDTH = 5 * PANEL + INFO_WIDTH


# ---------------------------------------------------------------------------------------
# Picking and loading samples
# ---------------------------------------------------------------------------------------


def select_samples(dataset: str | Path, n: int = 8, where: str | None = None,
                   seed: int | None = None) -> pd.DataFrame:
    """Manifest rows of up to ``n`` accepted samples matching ``where`` (a DuckDB boolean
    expression), sorted by key; the first ``n`` by key, or a random ``n`` with ``seed``.
    No match is a `ManifestError`."""
    if n < 1:
        raise ManifestError(f"n must be >= 1, got {n}")
    keys = accepted_keys(dataset, where, limit=None if seed is not None else n)
    if seed is not None and len(keys) > n:
        keys = [keys[i] for i in np.sort(np.random.default_rng(seed).choice(len(keys), size=n, replace=False))]
    return manifest_rows(dataset, keys)


def load_samples(dataset: str | Path, rows: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Decoded tar members of the given manifest rows (``key``, ``shard``), by key. Reads
    only the shards that hold them, each once, and stops at the last wanted key."""
    root = Path(dataset)
    out: dict[str, dict[str, Any]] = {}
    for shard, keys in rows.groupby("shard", sort=True)["key"]:
        path = root / f"{shard}.tar"
        if not path.is_file():
            raise ManifestError(f"{path}: shard named by the manifest is missing")
        wanted = set(keys)
        raw: dict[str, dict[str, bytes]] = {}
        for key, ext, data in iter_members(path, read=lambda key, ext: key in wanted):
            if data is not None:
                raw.setdefault(key, {})[ext] = data
            elif len(raw) == len(wanted):
                break  # members of a key are contiguous: all wanted keys are complete
        for key in keys:
            if key not in raw:
                raise ManifestError(f"{path}: has no members for key {key!r} that the manifest lists as ok")
            out[key] = decode_members(raw[key])
    return out


# ---------------------------------------------------------------------------------------
# Contact sheet
# ---------------------------------------------------------------------------------------


def _font(size: int = 14):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 or no FreeType: the bitmap font
        return ImageFont.load_default()


def _depth_rgb(depth: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    d = np.asarray(depth, np.float32)
    rgb = (colormaps["viridis"](np.clip(d, 0.0, 1.0))[..., :3] * 255).round().astype(np.uint8)
    rgb[d <= 0] = 0
    return rgb


def _resize(img: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR)
    return cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=interp)


def sample_pose(meta: dict[str, Any], row: pd.Series | dict | None = None,
                frame: str = "") -> tuple[float, float, float] | None:
    """(yaw, pitch, roll) in ``frame`` (a `POSE_FRAMES` suffix) from the sample's json, else
    from its manifest row; None if absent."""
    for src in (meta or {}, row if row is not None else {}):
        vals = [number(src.get(k + frame)) if hasattr(src, "get") else None for k in POSE_COLUMNS]
        if all(v is not None for v in vals):
            return tuple(vals)  # type: ignore[return-value]
    return None


def sample_caption(meta: dict[str, Any], row: pd.Series | dict | None = None) -> tuple[str, str] | None:
    """(top caption, its label: "CLIP 0.312 (blip)" or "template") or None if absent."""
    caps = (meta or {}).get("captions")
    if isinstance(caps, list) and caps and isinstance(caps[0], dict) and caps[0].get("text"):
        top = caps[0]
        text, score, who = str(top["text"]), number(top.get("clip_score")), str(top.get("captioner") or "")
    elif row is not None and isinstance(row.get("caption_top"), str) and row.get("caption_top"):
        text, score, who = row["caption_top"], number(row.get("clip_score_top")), ""
    else:
        return None
    if score is None or who == "template":
        return text, "template"
    return text, f"CLIP {score:.3f}" + (f" ({who})" if who else "")


def _row_panels(sample: dict[str, Any], row: pd.Series) -> tuple[np.ndarray, list[tuple[int, int, str, tuple]]]:
    """One contact-sheet row (PANEL x SHEET_WIDTH RGB) and the text to draw on it."""
    from denseface.geometry.pose_image import draw_pose_axes

    P = PANEL
    strip = np.full((P, SHEET_WIDTH, 3), 255, np.uint8)
    texts: list[tuple[int, int, str, tuple]] = []

    def na(col: int, what: str) -> None:
        strip[:, col * P:(col + 1) * P] = 64
        strip[:, col * P] = 255
        texts.append((col * P + 10, P // 2 - 18, f"{what}\nn/a", (230, 230, 230)))

    image = sample.get(JPG)
    img = _resize(image, P) if isinstance(image, np.ndarray) and image.ndim == 3 else None
    lmk = sample.get(LMK)
    lmk = np.asarray(lmk, np.float32) if isinstance(lmk, np.ndarray) and lmk.ndim == 2 and lmk.shape[1] >= 2 else None

    if img is not None:
        strip[:, 0:P] = img
    else:
        na(0, "image")
    if img is not None and lmk is not None:
        pan = (img.astype(np.float32) * 0.7).astype(np.uint8)
        for x, y in lmk[:, :2] * P:
            if 0 <= x < P and 0 <= y < P:
                cv2.circle(pan, (int(x), int(y)), 1, (0, 255, 0), -1, cv2.LINE_AA)
        strip[:, P:2 * P] = pan
    else:
        na(1, "landmarks")
    depth = sample.get(DEPTH)
    if isinstance(depth, np.ndarray) and depth.ndim == 2:
        strip[:, 2 * P:3 * P] = _resize(_depth_rgb(depth), P)
    else:
        na(2, "depth")
    mask = sample.get(MASK)
    if isinstance(mask, np.ndarray) and mask.ndim == 2:
        strip[:, 3 * P:4 * P] = _resize(colorize(mask), P, nearest=True)
    else:
        na(3, "mask")
    meta = sample.get(JSON) if isinstance(sample.get(JSON), dict) else {}
    pose = sample_pose(meta, row)
    if pose is not None:
        base = (img.astype(np.uint16) + 255) // 2 if img is not None else np.full((P, P, 3), 255)
        has_nose = lmk is not None and len(lmk) > 1
        center = tuple(float(v) for v in np.clip(lmk[1, :2] * P, 0, P - 1)) if has_nose else None
        strip[:, 4 * P:5 * P] = draw_pose_axes(*pose, canvas=base.astype(np.uint8), center=center)
    else:
        na(4, "pose")

    # info panel
    x0 = 5 * P + 10
    key = str(meta.get("key") or row.get("key"))
    lines = [key, f"identity: {meta.get('identity') or row.get('identity')}"]
    lines.append("crop:  yaw {:+.1f}  pitch {:+.1f}  roll {:+.1f}".format(*pose) if pose else "yaw/pitch/roll: n/a")
    pose_src = sample_pose(meta, row, "_src")
    if pose_src is not None:
        lines.append("photo: yaw {:+.1f}  pitch {:+.1f}  roll {:+.1f}".format(*pose_src))
    cap = sample_caption(meta, row)
    if cap is None:
        lines.append("caption: n/a")
    else:
        lines.append(f"caption [{cap[1]}]:")
        wrapped = textwrap.wrap(cap[0], width=46)
        lines += wrapped[:6] + (["..."] if len(wrapped) > 6 else [])
    texts.append((x0, 8, "\n".join(lines), (20, 20, 20)))
    return strip, texts


def render_contact_sheet(samples: Sequence[tuple[dict[str, Any], pd.Series]], title: str = ""):
    """PIL image of the sheet: a header strip, then one row per (sample, manifest row)."""
    from PIL import Image, ImageDraw

    sheet = Image.new("RGB", (SHEET_WIDTH, HEADER + PANEL * len(samples)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font, small = _font(14), _font(13)
    draw.rectangle([0, 0, SHEET_WIDTH, HEADER - 1], fill=(40, 40, 40))
    for i, name in enumerate(COLUMNS):
        draw.text((i * PANEL + 8, 6), name if i < 5 else f"{name}  {title}", fill=(255, 255, 255), font=font)
    for r, (sample, row) in enumerate(samples):
        strip, texts = _row_panels(sample, row)
        y = HEADER + r * PANEL
        sheet.paste(Image.fromarray(strip), (0, y))
        for x, ty, text, fill in texts:
            draw.multiline_text((x, y + ty), text, fill=fill, font=small, spacing=3)
        draw.line([0, y, SHEET_WIDTH, y], fill=(255, 255, 255), width=1)
    return sheet


def contact_sheet(dataset: str | Path, out_png: str | Path, n: int = 8, where: str | None = None,
                  seed: int | None = None) -> list[str]:
    """Write a contact sheet of up to ``n`` accepted samples (see the module docstring) to
    ``out_png``: ``SHEET_WIDTH`` x (``HEADER`` + rows * ``PANEL``) px. Returns the keys shown."""
    rows = select_samples(dataset, n=n, where=where, seed=seed)
    samples = load_samples(dataset, rows)
    title = f"where {where}" if where else ""
    sheet = render_contact_sheet([(samples[k], row) for k, (_, row) in zip(rows["key"], rows.iterrows())], title)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG", optimize=False)
    return list(rows["key"])
