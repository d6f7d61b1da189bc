"""Readers: turn a source dataset's layout into records (identity + path + extras).

A reader never opens images (decoding is a pipeline stage) and never raises for one bad
entry. Everything it sees ends up in one of two places, so ``seen == rows + skipped``:

* a record that becomes a manifest row: an image file (good or not), or a bad index line /
  an unusable image entry (dangling symlink, symlink loop, not a regular file, duplicate
  index line) with ``error`` set, which the build turns into a ``rejected`` row;
* a record with ``skip`` set: seen but not an input (a file that is not named as an image,
  a hidden entry, an unreadable folder, a folder symlink loop, a junk line of an optional
  CelebA table); the build counts these per reason in ``run_summary.json``.

Only a source that cannot be read at all (missing folder, missing index) raises
`SourceError`: that is a configuration mistake and stops the build before any work.
"""
from __future__ import annotations

import csv
import errno
import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from denseface.errors import UserError
from denseface.shards.schema import printable

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
_ASCII_INT = re.compile(r"-?[0-9]+")
_ASCII_DIGITS = re.compile(r"[0-9]+")
_NUMBER = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_MAX_POSE_CELL = 200  # a pose cell is three numbers; anything longer is junk, not parsed


class SourceError(UserError):
    """A source that cannot be read at all (missing folder or index): a configuration error."""


@dataclass(frozen=True)
class Record:
    source: str  # reader kind, e.g. "casia"
    identity: str
    source_path: str  # where the image is (absolute, as the OS names it), or index-file:line
    rel: str  # path relative to the source root: sorting and keys
    attrs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    error: str = ""  # a rejected row with this reason (the input is unusable as listed)
    skip: str = ""  # not an input at all: counted under this reason, no row


def _source_root(root: Path, what: str) -> Path:
    if not root.is_dir():
        raise SourceError(f"{what} source folder not found: {root}")
    if not os.access(root, os.R_OK | os.X_OK):
        raise SourceError(f"{what} source folder cannot be read: {root}")
    return root


def _listing(folder: Path) -> tuple[list[os.DirEntry], str]:
    """Sorted entries of a folder, or the reason it cannot be listed."""
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name), ""
    except OSError as exc:
        return [], f"unreadable folder: {exc.strerror or type(exc).__name__}"


def _file_problem(entry: os.DirEntry) -> str:
    """Why an image-named entry cannot be decoded as a file ('' = it can be tried)."""
    try:
        st = os.stat(entry.path)  # follows symlinks
    except OSError as exc:
        if entry.is_symlink():
            return "file: symlink loop" if exc.errno == errno.ELOOP else "file: dangling symlink"
        return f"file: cannot stat: {exc.strerror or type(exc).__name__}"
    if not stat.S_ISREG(st.st_mode):
        return "file: not a regular file"
    return ""


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:
        return False


def _walk(root: Path, kind: str, depth: int | None) -> Iterator[tuple[tuple[str, ...], os.DirEntry | None, str]]:
    """``(relative parts, entry, skip reason)`` for every entry under ``root``, sorted.

    ``depth`` folder levels are descended (None: all), without recursion (a tree may be
    deeper than Python's stack). Folder symlinks are followed once: a folder reached again
    (a loop) is skipped with a reason, as is an unreadable folder."""
    seen_dirs: set[tuple[int, int]] = set()
    stack: list[Iterator[tuple[tuple[str, ...], os.DirEntry]]] = []

    def enter(folder: Path, parts: tuple[str, ...]) -> str:
        try:
            st = folder.stat()
        except OSError as exc:
            return f"{kind}: unreadable folder: {exc.strerror or type(exc).__name__}"
        if (st.st_dev, st.st_ino) in seen_dirs:
            return f"{kind}: folder reached twice (symlink loop), not read again"
        seen_dirs.add((st.st_dev, st.st_ino))
        entries, problem = _listing(folder)
        if problem:
            return f"{kind}: {problem}"
        stack.append(iter([(parts + (e.name,), e) for e in entries]))
        return ""

    if problem := enter(root, ()):
        yield (), None, problem
    while stack:
        nxt = next(stack[-1], None)
        if nxt is None:
            stack.pop()
            continue
        sub, entry = nxt
        if entry.name.startswith("."):
            yield sub, entry, f"{kind}: hidden entry"
        elif _is_dir(entry):
            if depth is not None and len(sub) > depth:
                yield sub, entry, f"{kind}: folder deeper than the layout"
            elif problem := enter(Path(entry.path), sub):
                yield sub, None, problem
        else:
            yield sub, entry, ""


def _read_tree(root: Path, kind: str, depth: int | None) -> Iterator[Record]:
    """Image files of a tree whose parent folder (relative path) is the identity."""
    for parts, entry, skip in _walk(root, kind, depth):
        where = printable(os.path.join(str(root), *parts))
        rel = "/".join(parts)
        if skip:
            yield Record(kind, "", where, rel, skip=skip)
        elif Path(entry.name).suffix.lower() not in IMAGE_EXTS:
            yield Record(kind, "", where, rel, skip=f"{kind}: not an image file name")
        elif len(parts) < (2 if depth is not None else 1):
            yield Record(kind, "", where, rel, skip=f"{kind}: image outside an identity folder")
        else:
            identity = printable("/".join(parts[:-1])) or "."
            yield Record(kind, identity, os.path.abspath(entry.path), printable(rel), error=_file_problem(entry))


def read_casia(root: Path) -> Iterator[Record]:
    """CASIA-WebFace: ``root/<identity>/<image>``, one folder per identity."""
    return _read_tree(_source_root(root, "CASIA-WebFace"), "casia", depth=1)


def read_folder(root: Path) -> Iterator[Record]:
    """Any image folder: the image's parent folder (its path relative to root, ``.`` for
    the root itself) is its identity, so distinct folders are distinct identities."""
    return _read_tree(_source_root(root, "image"), "folder", depth=None)


def _find(root: Path, name: str) -> Path | None:
    for cand in (root / name, root / "Anno" / name, root / "anno" / name):
        if cand.is_file():
            return cand
    return None


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Whitespace-split lines of an index file (BOM, CRLF and bad bytes tolerated)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            yield from enumerate((line.split() for line in fh), 1)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None


def _table(path: Path | None, skip: int, valid) -> tuple[dict[str, list[str]], list[str], list[Record]]:
    """CelebA's whitespace tables: ``image v1 v2 ...`` after ``skip`` header lines. These
    only add extras to an image, so a junk line adds nothing and is counted as skipped."""
    rows: dict[str, list[str]] = {}
    header: list[str] = []
    junk: list[Record] = []
    if path is None:
        return rows, header, junk
    for lineno, parts in _lines(path):
        if lineno == skip:
            header = parts
        elif lineno > skip and parts:
            if valid(parts[1:], header):
                rows[parts[0]] = parts[1:]
            else:
                junk.append(Record("celeba", "", f"{path}:{lineno}", "", skip=f"celeba: junk line in {path.name}"))
    return rows, header, junk


def _valid_attrs(values: list[str], names: list[str]) -> bool:
    return len(values) == len(names) and all(_ASCII_INT.fullmatch(v) for v in values)


def _valid_bbox(values: list[str], _names: list[str]) -> bool:
    return len(values) == 4 and all(_ASCII_INT.fullmatch(v) for v in values)


def _safe_name(name: str) -> bool:
    return name not in (".", "..") and not any(c in name for c in "/\\\0")


def read_celeba(root: Path) -> Iterator[Record]:
    """CelebA: ``img_align_celeba/`` (or in-the-wild ``img_celeba/``) + ``identity_CelebA.txt``,
    optional ``list_attr_celeba.txt`` and ``list_bbox_celeba.txt`` (also under ``Anno/``)."""
    root = _source_root(root, "CelebA")
    img_dir = next((root / d for d in ("img_align_celeba", "img_celeba") if (root / d).is_dir()), None)
    if img_dir is None:
        raise SourceError(f"CelebA: neither img_align_celeba/ nor img_celeba/ under {root}")
    id_file = _find(root, "identity_CelebA.txt")
    if id_file is None:
        raise SourceError(f"CelebA: identity_CelebA.txt not found under {root} or {root / 'Anno'}")
    attrs, attr_names, junk = _table(_find(root, "list_attr_celeba.txt"), 2, _valid_attrs)
    bboxes, _, junk_b = _table(_find(root, "list_bbox_celeba.txt"), 2, _valid_bbox)
    yield from junk + junk_b
    first_line: dict[str, int] = {}
    for lineno, parts in _lines(id_file):
        if not parts:
            continue
        where = f"{id_file}:{lineno}"
        bad = ""
        if len(parts) != 2 or not _ASCII_DIGITS.fullmatch(parts[1]) or not _safe_name(parts[0]):
            bad = f"index: malformed identity line {lineno}: {' '.join(parts)[:120]!r}"
        elif parts[0] in first_line:
            bad = f"index: duplicate identity line {lineno} for {parts[0]!r} (first on line {first_line[parts[0]]})"
        if bad:
            yield Record("celeba", "", where, f"~index/{lineno:09d}", error=bad)
            continue
        name, ident = parts
        first_line[name] = lineno
        extra: dict[str, Any] = {}
        if name in attrs:
            extra["attributes"] = {a: int(v) > 0 for a, v in zip(attr_names, attrs[name])}
        if name in bboxes:
            extra["source_bbox_xywh"] = [int(v) for v in bboxes[name]]
        yield Record("celeba", ident, os.path.abspath(img_dir / name), f"{img_dir.name}/{name}", extra)


# Column positions of the published release's CSV index, as its own data loader reads it.
_REL_PATH, _REL_LANDMARK, _REL_MASK, _REL_BBOX, _REL_SUBJECT = 0, 3, 4, 9, 10
_REL_CAPTION, _REL_POSE = -2, -1


def _parse_pose(cell: str) -> tuple[float, float, float]:
    """``"['pitch', 'yaw', 'roll']"`` (numbers may be quoted) -> finite floats. Parsed by a
    bounded regular expression, not ``ast``: a pathological cell cannot recurse or run long."""
    if len(cell) > _MAX_POSE_CELL:
        raise ValueError(f"pose cell of {len(cell)} characters")
    vals = [float(v) for v in _NUMBER.findall(cell)]
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"pose cell {cell[:60]!r} is not three finite numbers")
    pitch, yaw, roll = vals
    return pitch, yaw, roll


def _release_rows(index: Path) -> Iterator[tuple[int, list[str] | None, str]]:
    """``(line, row, csv problem)`` of a CSV index; a row the csv module cannot parse (a cell
    over its field limit, a NUL byte) is reported and reading goes on at the next line."""
    try:
        fh = open(index, newline="", encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise SourceError(f"cannot read {index}: {exc.strerror or exc}") from None
    with fh:
        reader = csv.reader(fh)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num, None, f"csv: {exc}"
                continue
            yield reader.line_num, row, ""


def read_release(root: Path) -> Iterator[Record]:
    """The published T2I-Dense-Face release: ``casiaFacesDataset256_*_headpose.csv`` index
    next to ``images/``, ``landmarks/``, ``masks/``, ``xyzmaps/``, ``captions/``."""
    root = _source_root(root, "T2I-Dense-Face release")
    indexes = sorted(root.glob("casiaFacesDataset256_*_headpose.csv"))
    if not indexes:
        raise SourceError(f"no casiaFacesDataset256_*_headpose.csv index under {root}")
    for index in indexes:
        first_line: dict[str, int] = {}
        for n, (lineno, row, problem) in enumerate(_release_rows(index)):
            if n == 0 and not problem:
                continue  # header
            where = f"{index}:{lineno}"
            try:
                if problem:
                    raise ValueError(problem)
                rel = row[_REL_PATH]
                if not rel or rel.startswith("/") or "\\" in rel or "\0" in rel or ".." in Path(rel).parts:
                    raise ValueError(f"unsafe image path {rel[:120]!r}")
                if rel in first_line:
                    raise ValueError(f"duplicate of line {first_line[rel]}")
                pitch, yaw, roll = _parse_pose(row[_REL_POSE])
                subject = row[_REL_SUBJECT].strip()
                if not _ASCII_DIGITS.fullmatch(subject):
                    raise ValueError(f"subject id {subject[:40]!r} is not a number")
                extra = {"release_yaw": yaw, "release_pitch": pitch, "release_roll": roll,
                         "release_caption": row[_REL_CAPTION], "release_mask": row[_REL_MASK],
                         "release_landmarks": row[_REL_LANDMARK]}
            except (IndexError, ValueError) as exc:
                yield Record("release", "", where, f"~index/{index.name}/{lineno:09d}-{n:09d}",
                             error=f"index: malformed index line {lineno}: {exc}")
                continue
            first_line[rel] = lineno
            yield Record("release", subject.zfill(7), os.path.abspath(root / rel), rel, extra)


READERS = {"casia": read_casia, "celeba": read_celeba, "folder": read_folder, "release": read_release}


def parse_source(spec: str) -> tuple[str, Path]:
    """``KIND:PATH`` -> (kind, absolute path); a wrong kind is a configuration error."""
    kind, _, path = spec.partition(":")
    if kind not in READERS:
        raise SourceError(f"unknown source kind {kind!r} in {spec!r}; use one of {sorted(READERS)}")
    return kind, Path(os.path.abspath(Path(path).expanduser()))


def read_source(spec: str) -> Iterator[Record]:
    """``KIND:PATH`` -> records, e.g. ``casia:/data/CASIA-WebFace``."""
    kind, path = parse_source(spec)
    return READERS[kind](path)
