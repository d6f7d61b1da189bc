"""Readers: turn a source dataset's layout into records (identity + path + extras).

A reader never opens images (decoding is a pipeline stage) and never raises for one bad
index line: such a line becomes a record with ``error`` set, which the build turns into
a manifest row, so ``inputs == accepted + rejected`` holds for index files too.
"""
from __future__ import annotations

import ast
import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Record:
    source: str  # reader kind, e.g. "casia"
    identity: str
    source_path: str  # where the image is (absolute), or index-file:line for a bad line
    rel: str  # path relative to the source root: sorting and keys
    attrs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    error: str = ""


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTS)


def _require_dir(root: Path, what: str) -> Path:
    if not root.is_dir():
        raise FileNotFoundError(f"{what} source folder not found: {root}")
    return root


def read_casia(root: Path) -> Iterator[Record]:
    """CASIA-WebFace: ``root/<identity>/<image>``, one folder per identity."""
    root = _require_dir(root, "CASIA-WebFace")
    for ident in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for img in _images_under(ident):
            yield Record("casia", ident.name, str(img.resolve()), f"{ident.name}/{img.name}")


def read_folder(root: Path) -> Iterator[Record]:
    """Any image folder: the image's parent folder (relative to root) is its identity."""
    root = _require_dir(root, "image")
    for img in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                      and not any(part.startswith(".") for part in p.relative_to(root).parts)):
        rel = img.relative_to(root)
        identity = "_".join(rel.parts[:-1]) or "unknown"
        yield Record("folder", identity, str(img.resolve()), rel.as_posix())


def _find(root: Path, name: str) -> Path | None:
    for cand in (root / name, root / "Anno" / name, root / "anno" / name):
        if cand.is_file():
            return cand
    return None


def _table(path: Path | None, skip: int) -> tuple[dict[str, list[str]], list[str]]:
    """CelebA's whitespace tables: ``image v1 v2 ...`` after ``skip`` header lines. These
    only add extras to an image, so a short or odd line just adds nothing."""
    rows: dict[str, list[str]] = {}
    header: list[str] = []
    if path is None:
        return rows, header
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if lineno == skip:
                header = parts
            elif lineno > skip and parts:
                rows[parts[0]] = parts[1:]
    return rows, header


def read_celeba(root: Path) -> Iterator[Record]:
    """CelebA: ``img_align_celeba/`` (or in-the-wild ``img_celeba/``) + ``identity_CelebA.txt``,
    optional ``list_attr_celeba.txt`` and ``list_bbox_celeba.txt`` (also under ``Anno/``)."""
    root = _require_dir(root, "CelebA")
    img_dir = next((root / d for d in ("img_align_celeba", "img_celeba") if (root / d).is_dir()), None)
    if img_dir is None:
        raise FileNotFoundError(f"CelebA: neither img_align_celeba/ nor img_celeba/ under {root}")
    id_file = _find(root, "identity_CelebA.txt")
    if id_file is None:
        raise FileNotFoundError(f"CelebA: identity_CelebA.txt not found under {root} or {root / 'Anno'}")
    attrs, attr_names = _table(_find(root, "list_attr_celeba.txt"), skip=2)
    bboxes, _ = _table(_find(root, "list_bbox_celeba.txt"), skip=2)
    with open(id_file, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            where = f"{id_file}:{lineno}"
            if len(parts) != 2 or not parts[1].isdigit() or "/" in parts[0] or ".." in parts[0]:
                yield Record("celeba", "", where, f"~index/{lineno:09d}",
                             error=f"malformed identity line {lineno}: {line.strip()[:120]!r}")
                continue
            name, ident = parts
            extra: dict[str, Any] = {}
            if name in attrs and len(attrs[name]) == len(attr_names):
                extra["attributes"] = {a: int(v) > 0 for a, v in zip(attr_names, attrs[name])}
            if name in bboxes and len(bboxes[name]) == 4 and all(v.lstrip("-").isdigit() for v in bboxes[name]):
                extra["source_bbox_xywh"] = [int(v) for v in bboxes[name]]
            yield Record("celeba", ident, str((img_dir / name).resolve()), f"{img_dir.name}/{name}", extra)


# Column positions of the published release's CSV index, as its own data loader reads it.
_REL_PATH, _REL_LANDMARK, _REL_MASK, _REL_BBOX, _REL_SUBJECT = 0, 3, 4, 9, 10
_REL_CAPTION, _REL_POSE = -2, -1


def _parse_pose(cell: str) -> tuple[float, float, float]:
    """``"['pitch', 'yaw', 'roll']"`` (numbers may be quoted) -> floats."""
    vals = ast.literal_eval(cell)
    pitch, yaw, roll = (float(v) for v in vals)
    return pitch, yaw, roll


def read_release(root: Path) -> Iterator[Record]:
    """The published T2I-Dense-Face release: ``casiaFacesDataset256_*_headpose.csv`` index
    next to ``images/``, ``landmarks/``, ``masks/``, ``xyzmaps/``, ``captions/``."""
    root = _require_dir(root, "T2I-Dense-Face release")
    indexes = sorted(root.glob("casiaFacesDataset256_*_headpose.csv"))
    if not indexes:
        raise FileNotFoundError(f"no casiaFacesDataset256_*_headpose.csv index under {root}")
    for index in indexes:
        with open(index, newline="", encoding="utf-8", errors="replace") as fh:
            for lineno, row in enumerate(csv.reader(fh), 1):
                if lineno == 1:
                    continue  # header
                where = f"{index}:{lineno}"
                try:
                    rel = row[_REL_PATH]
                    if not rel or rel.startswith("/") or ".." in Path(rel).parts:
                        raise ValueError(f"unsafe image path {rel!r}")
                    pitch, yaw, roll = _parse_pose(row[_REL_POSE])
                    extra = {"release_yaw": yaw, "release_pitch": pitch, "release_roll": roll,
                             "release_caption": row[_REL_CAPTION], "release_mask": row[_REL_MASK],
                             "release_landmarks": row[_REL_LANDMARK]}
                    ident = row[_REL_SUBJECT].strip().zfill(7)
                except (IndexError, ValueError, SyntaxError, TypeError) as exc:
                    yield Record("release", "", where, f"~index/{index.name}/{lineno:09d}",
                                 error=f"malformed index line {lineno}: {type(exc).__name__}: {exc}")
                    continue
                yield Record("release", ident, str((root / rel).resolve()), rel, extra)


READERS = {"casia": read_casia, "celeba": read_celeba, "folder": read_folder, "release": read_release}


def read_source(spec: str) -> Iterator[Record]:
    """``KIND:PATH`` -> records, e.g. ``casia:/data/CASIA-WebFace``."""
    kind, _, path = spec.partition(":")
    if kind not in READERS:
        raise ValueError(f"unknown source kind {kind!r} in {spec!r}; use one of {sorted(READERS)}")
    return READERS[kind](Path(path).expanduser())
