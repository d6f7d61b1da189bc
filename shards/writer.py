"""Atomic, byte-reproducible writing of one unit: tar, identity sidecar, Parquet manifest, stats json.

Each file goes to a temporary name and is renamed into place; the stats json goes last
and is the unit's commit mark. Tar headers carry no time, owner or user name, and
members are sorted by key, so the same inputs give the same bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from denseface.shards.id_sidecar import SUFFIX as SIDECAR_SUFFIX
from denseface.shards.id_sidecar import encode_sidecar
from denseface.shards.schema import is_safe_key, shard_name

TMP_MARK = ".tmp-"
# Exactly the temporary names `atomic_write` gives the files a build writes, and where: a
# build or verify touches no other file, whatever the user keeps in the folder.
_OWN_TMP = {".": re.compile(r"(shard-\d{6}(\.tar|\.ids\.npz)|plan\.json|run_summary\.json)"
                            r"\.tmp-\d+-[0-9a-f]{8}"),
            "manifest": re.compile(r"shard-\d{6}\.parquet\.tmp-\d+-[0-9a-f]{8}"),
            "stats": re.compile(r"shard-\d{6}\.json\.tmp-\d+-[0-9a-f]{8}")}


def unit_paths(root: Path, unit: int) -> dict[str, Path]:
    name = shard_name(unit)
    return {"tar": root / f"{name}.tar", "ids": root / f"{name}{SIDECAR_SUFFIX}",
            "manifest": root / "manifest" / f"{name}.parquet", "stats": root / "stats" / f"{name}.json"}


_UNIT_FILE = re.compile(r"shard-(\d{6})\.(?:tar|parquet|json)")


def units_on_disk(root: Path) -> set[int]:
    """Units that have any file (tar, manifest or stats) under their exact names."""
    found = set()
    for folder in (root, root / "manifest", root / "stats"):
        if folder.is_dir():
            found |= {int(m.group(1)) for p in folder.iterdir() if (m := _UNIT_FILE.fullmatch(p.name))}
    return found


def remove_unit(root: Path, unit: int) -> None:
    """A unit's files, commit mark (stats) first, so a half-removed unit reads as unwritten."""
    paths = unit_paths(root, unit)
    for what in ("stats", "tar", "manifest"):
        paths[what].unlink(missing_ok=True)


def own_temporaries(root: Path) -> list[Path]:
    """Half-written files a killed build left behind (only names this module makes)."""
    found = []
    for folder, pattern in _OWN_TMP.items():
        d = root / folder
        if d.is_dir() and not d.is_symlink():
            found += [p for p in d.iterdir()
                      if pattern.fullmatch(p.name) and p.is_file() and not p.is_symlink()]
    return sorted(found)


def file_sha256(path: Path) -> str:
    """Content checksum recorded per shard file, so a change in place is found."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_tar(fh: BinaryIO, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in sorted(samples):
            if not is_safe_key(key):
                raise ValueError(f"unsafe sample key {key!r}")
            for ext in sorted(members):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(members[ext]), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(members[ext]))


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda fh: fh.write(json.dumps(obj, indent=1, sort_keys=True).encode()))


def write_unit(root: Path, unit: int, samples: list[tuple[str, dict[str, bytes]]],
               rows: list[dict[str, Any]], schema: pa.Schema, stats: dict[str, Any]) -> dict[str, Any]:
    """Writes the unit's files and returns the stats json it wrote last (the commit mark)."""
    paths = unit_paths(root, unit)
    rows = sorted(rows, key=lambda r: r["key"])
    table = pa.Table.from_pylist(rows, schema=schema)
    atomic_write(paths["tar"], lambda fh: write_tar(fh, samples))
    ids = encode_sidecar(samples)  # the identity index's input: see shards.id_sidecar
    if ids is not None:
        atomic_write(paths["ids"], lambda fh: fh.write(ids))
    atomic_write(paths["manifest"], lambda fh: pq.write_table(table, fh, compression="zstd"))
    stats = dict(stats, tar_bytes=paths["tar"].stat().st_size, tar_sha256=file_sha256(paths["tar"]),
                 manifest_sha256=file_sha256(paths["manifest"]))
    write_json(paths["stats"], stats)
    return stats
