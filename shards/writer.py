"""Atomic, byte-reproducible writing of one unit: tar, Parquet manifest, stats json.

Each file goes to a temporary name and is renamed into place; the stats json goes last
and is the unit's commit mark. Tar headers carry no time, owner or user name, and
members are sorted by key, so the same inputs give the same bytes.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from denseface.shards.schema import is_safe_key, shard_name

TMP_MARK = ".tmp-"


def unit_paths(root: Path, unit: int) -> dict[str, Path]:
    name = shard_name(unit)
    return {"tar": root / f"{name}.tar", "manifest": root / "manifest" / f"{name}.parquet",
            "stats": root / "stats" / f"{name}.json"}


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
               rows: list[dict[str, Any]], schema: pa.Schema, stats: dict[str, Any]) -> None:
    paths = unit_paths(root, unit)
    rows = sorted(rows, key=lambda r: r["key"])
    table = pa.Table.from_pylist(rows, schema=schema)
    atomic_write(paths["tar"], lambda fh: write_tar(fh, samples))
    atomic_write(paths["manifest"], lambda fh: pq.write_table(table, fh, compression="zstd"))
    stats = dict(stats, tar_bytes=paths["tar"].stat().st_size)
    write_json(paths["stats"], stats)
